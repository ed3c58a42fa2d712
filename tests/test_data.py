"""Reading both layouts, every class of bad training file, and the verified, cached download."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from winequality import data
from winequality.data import load
from winequality.errors import DataError, SchemaError
from winequality.schema import FEATURE_NAMES


def test_every_layout_reads_to_the_same_frame(red_csv: Path, tutorial_csv: Path, tmp_path) -> None:
    french = tmp_path / "export.csv"  # a spreadsheet saved in French: ';' and decimal commas
    french.write_text(red_csv.read_text().replace(".", ","))
    uci, tutorial, excel = load(red_csv), load(tutorial_csv), load(french)
    assert (uci.separator, tutorial.separator, excel.separator) == (";", ",", ";")
    assert (uci.decimal, tutorial.decimal, excel.decimal) == (".", ".", ",")
    assert list(uci.frame.columns) == [*FEATURE_NAMES, "quality"]
    for other in (tutorial, excel):
        np.testing.assert_allclose(uci.frame.to_numpy(), other.frame.to_numpy(), rtol=0, atol=1e-8)
    assert uci.frame["quality"].dtype == np.int64
    assert uci.duplicate_rows == 240  # counted and reported, not an error


def test_the_tutorials_split_is_reproduced(red_csv: Path) -> None:
    frame = load(red_csv).frame
    train, test = data.split(frame)
    assert (len(train), len(test)) == (1199, 400)
    again, _ = data.split(frame)
    assert list(train.index) == list(again.index)
    assert list(data.split(frame, seed=41)[0].index) != list(train.index)


def write(tmp_path: Path, text: str, name: str = "wines.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = ",".join([*FEATURE_NAMES, "quality"])
ROW = "7.4,0.7,0,1.9,0.076,11,34,0.9978,3.51,0.56,9.4,5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEADER.replace("citric acid", "citric acd") + "\n" + ROW,
            ["citric acid: required column is missing (found 'citric acd': misspelled?)"],
        ),
        (
            HEADER.replace(",quality", "") + "\n" + ROW.rsplit(",", 1)[0],
            ["quality: required column is missing"],
        ),
        (
            HEADER + "\n" + ROW.replace("0.7", "abc", 1),
            ["volatile acidity: 1 value not a number (line 2: 'abc')"],
        ),
        (
            HEADER + "\n" + ROW + "\n" + ROW.replace("9.4", ""),
            ["alcohol: 1 value missing (null or empty) (line 3)"],
        ),
        (
            HEADER + "\n" + ROW.replace("3.51", "15.1"),
            ["pH: 1 value outside the physical range [0, 14] pH (line 2: 15.1)"],
        ),
        (
            HEADER + "\n" + ROW.replace("9.4", "1e308"),
            ["alcohol: 1 value outside the physical range [0, 100] % vol (line 2: 1e+308)"],
        ),
        (HEADER + "\n" + ROW.replace("9.4", "inf"), ["alcohol: 1 value not finite (line 2: inf)"]),
        (HEADER + "\n" + ROW[:-1] + "5.5", ["quality: 1 value not an integer score within 0..10"]),
        (HEADER + "\n", ["no rows to check"]),
        (
            HEADER + "\n" + ROW + "\n\n" + ROW + "\n\n",
            ["pH: 1 value missing (null or empty) (line 3)"],
        ),
    ],
)
def test_each_bad_input_is_named_with_its_line(tmp_path, text, expected) -> None:
    with pytest.raises(SchemaError) as caught:
        load(write(tmp_path, text))
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message


def test_every_problem_is_listed_in_one_error(tmp_path) -> None:
    rows = [ROW.replace("0.7", "x", 1), ROW.replace("3.51", "-2"), ROW.replace("9.4", "")]
    with pytest.raises(SchemaError) as caught:
        load(
            write(
                tmp_path,
                HEADER.replace("density", "densty")
                + ",extra\n"
                + "\n".join(r + ",1" for r in rows),
            )
        )
    kinds = sorted(i.kind for i in caught.value.issues)
    assert kinds == ["missing_column", "missing_value", "not_numeric", "out_of_range"]
    assert "density: required column is missing (found 'densty': misspelled?)" in str(caught.value)


def test_other_columns_are_ignored_with_a_warning(tmp_path) -> None:
    text = (
        "id,date," + HEADER + ",colour\n" + "\n".join(f"{i},2024-01-0{i},{ROW},red" for i in (1, 2))
    )
    loaded = load(write(tmp_path, text))
    assert list(loaded.frame.columns) == [*FEATURE_NAMES, "quality"]
    assert len(loaded.frame) == 2
    assert [w.describe() for w in loaded.warnings] == [
        "id: unknown column, ignored",
        "date: unknown column, ignored",
        "colour: unknown column, ignored",
    ]


def test_empty_file_and_wrong_separator(tmp_path) -> None:
    with pytest.raises(DataError, match="is empty"):
        load(write(tmp_path, ""))
    tabbed = write(tmp_path, HEADER.replace(",", "\t") + "\n" + ROW.replace(",", "\t"))
    with pytest.raises(DataError, match="tab-separated; winequality reads ','"):
        load(tabbed)
    with pytest.raises(DataError, match=r"no such data file.*omit --data"):
        load(tmp_path / "absent.csv")


# --- the copies shipped inside the package ---------------------------------------------------


def test_the_shipped_copies_are_uci_files_verified_on_read(workdir) -> None:
    red, white = load(), load(wine="white")  # no --data, no network: the embedded copies
    assert (len(red.frame), len(white.frame)) == (1599, 4898)
    assert red.sha256 == data.UCI_MEMBER_SHA256["winequality-red.csv"]
    assert white.sha256 == data.UCI_MEMBER_SHA256["winequality-white.csv"]
    assert red.name == "winequality-red.csv"
    assert "shipped with winequality" in red.description
    assert (red.duplicate_rows, white.duplicate_rows) == (240, 937)
    readme = (data.embedded_path("red").parent / "README.md").read_text()
    assert "CC BY 4.0" in readme
    assert "Decision Support Systems" in readme
    assert "47(4)" in readme


def test_a_damaged_shipped_copy_is_refused(workdir, monkeypatch, tmp_path) -> None:
    import gzip

    damaged = tmp_path / "winequality-red.csv.gz"
    damaged.write_bytes(gzip.compress(data.embedded_bytes("red").replace(b"7.4", b"7.5", 1)))
    monkeypatch.setattr(data, "embedded_path", lambda wine: damaged)
    with pytest.raises(DataError, match="shipped with winequality is damaged"):
        load()


def test_the_data_variable_still_names_a_file(workdir, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from winequality.cli import app

    # read by the command (the library takes what it is given): a file that does not exist
    # proves the variable reached `train` before anything else happened
    monkeypatch.setenv("WINEQUALITY_DATA", str(tmp_path / "from-the-variable.csv"))
    answer = CliRunner().invoke(app, ["train"])
    assert answer.exit_code == 2
    assert "from-the-variable.csv" in answer.output
    assert load().name == "winequality-red.csv"  # the library: the shipped copy


# --- the download: pooch against a local HTTP server -----------------------------------------


class Archive(http.server.BaseHTTPRequestHandler):
    payload = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if "missing" in self.path:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def archive_server(red_csv: Path, white_csv: Path) -> Iterator[tuple[str, type[Archive]]]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(red_csv, "winequality-red.csv")
        archive.write(white_csv, "winequality-white.csv")
    handler = type("Handler", (Archive,), {"payload": buffer.getvalue(), "hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/wine+quality.zip", handler
    server.shutdown()
    server.server_close()


def test_the_archive_is_downloaded_once_verified_and_cached(
    workdir, archive_server, monkeypatch
) -> None:
    url, handler = archive_server
    monkeypatch.setenv(data.ENV_DATA_URL, url)
    first = load("uci")  # --data uci: fetch UCI's archive
    assert first.path.name == "winequality-red.csv"
    assert len(first.frame) == 1599
    assert first.path.is_relative_to(workdir / "cache")
    assert load("uci").path == first.path
    assert handler.hits == 1
    assert len(load("uci", wine="white").frame) == 4898
    assert handler.hits == 1
    assert load().sha256 == first.sha256
    assert handler.hits == 1


def test_a_tampered_archive_fails_verification_and_is_not_kept(
    workdir, archive_server, monkeypatch
) -> None:
    url, handler = archive_server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("winequality-red.csv", "not,the,data\n")
    handler.payload = buffer.getvalue()
    monkeypatch.setenv(data.ENV_DATA_URL, url)
    with pytest.raises(DataError, match="failed verification"):
        load("uci")
    assert not list((workdir / "cache").rglob("*.csv"))


def test_offline_is_one_plain_line_that_names_the_way_out(workdir, monkeypatch) -> None:
    monkeypatch.setenv(data.ENV_DATA_URL, "http://127.0.0.1:9/wine+quality.zip")
    with pytest.raises(DataError) as caught:
        load("uci")
    message = str(caught.value)
    assert message == (
        "could not download the wine data from http://127.0.0.1:9/wine+quality.zip: cannot "
        "connect (no network, or the server is down). Omit --data to use the copy of "
        "winequality-red.csv shipped with winequality, or pass a local file: "
        "--data /path/to/winequality-red.csv"
    )


def test_an_http_error_is_named_by_its_status(workdir, monkeypatch, archive_server) -> None:
    url, _ = archive_server
    with pytest.raises(DataError, match="the server answered HTTP 404"):
        load(url.replace("wine+quality.zip", "missing.csv"))


def test_a_csv_url_is_fetched_once(workdir, red_csv, tmp_path) -> None:
    handler: type[Archive] = type(
        "Handler", (Archive,), {"payload": red_csv.read_bytes(), "hits": 0}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/red.csv"
        assert len(load(url).frame) == 1599
        assert load(url).source == url
        assert handler.hits == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_duplicated_column_is_named_beside_the_missing_one(tmp_path, red_csv) -> None:
    lines = red_csv.read_text().splitlines()
    header = lines[0].replace('"density"', '"pH"')  # pH twice, no density
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join([header, *lines[1:30]]) + "\n")
    with pytest.raises(SchemaError) as error:
        load(twice)
    text = str(error.value)
    assert "density: required column is missing" in text
    assert "pH: column appears more than once" in text
