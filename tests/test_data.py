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
from winequality.data import DataError, load
from winequality.schema import FEATURE_NAMES, SchemaError


def test_both_layouts_read_to_the_same_frame(red_csv: Path, seed_csv: Path) -> None:
    uci, seed = load(red_csv), load(seed_csv)
    assert (uci.separator, seed.separator) == (";", ",")
    assert list(uci.frame.columns) == [*FEATURE_NAMES, "quality"]
    np.testing.assert_allclose(uci.frame.to_numpy(), seed.frame.to_numpy(), rtol=0, atol=1e-8)
    assert uci.frame["quality"].dtype == np.int64
    assert uci.duplicate_rows == 240  # counted and reported, not an error


def test_the_seeds_split_is_reproduced(red_csv: Path) -> None:
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
            [
                "citric acid: required column is missing (found 'citric acd': misspelled?)",
                "citric acd: unknown column (did you mean 'citric acid'?)",
            ],
        ),
        (
            HEADER.replace(",quality", "") + "\n" + ROW.rsplit(",", 1)[0],
            ["quality: required column is missing"],
        ),
        (HEADER + ",colour\n" + ROW + ",red", ["colour: unknown column"]),
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
    assert kinds == [
        "missing_column",
        "missing_value",
        "not_numeric",
        "out_of_range",
        "unknown_column",
        "unknown_column",
    ]


def test_empty_file_and_wrong_separator(tmp_path) -> None:
    with pytest.raises(DataError, match="is empty"):
        load(write(tmp_path, ""))
    tabbed = write(tmp_path, HEADER.replace(",", "\t") + "\n" + ROW.replace(",", "\t"))
    with pytest.raises(DataError, match="tab-separated; winequality reads ','"):
        load(tabbed)
    with pytest.raises(DataError, match="no such data file"):
        load(tmp_path / "absent.csv")


# --- the download: pooch against a local HTTP server -----------------------------------------


class Archive(http.server.BaseHTTPRequestHandler):
    payload = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
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


def test_the_archive_is_downloaded_once_verified_and_cached(
    workdir, archive_server, monkeypatch
) -> None:
    url, handler = archive_server
    monkeypatch.setenv(data.ENV_DATA_URL, url)
    first = load()  # no --data: fetch UCI's archive
    assert first.path.name == "winequality-red.csv" and len(first.frame) == 1599
    assert first.path.is_relative_to(workdir / "cache")
    assert load().path == first.path and handler.hits == 1  # second call: from the cache
    assert len(load(wine="white").frame) == 4898 and handler.hits == 1


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
        load()
    assert not list((workdir / "cache").rglob("*.csv"))


def test_offline_says_how_to_pass_a_local_file(workdir, monkeypatch) -> None:
    monkeypatch.setenv(data.ENV_DATA_URL, "http://127.0.0.1:9/wine+quality.zip")
    with pytest.raises(DataError) as caught:
        load()
    assert "--data /path/to/winequality-red.csv" in str(caught.value)
    assert "WINEQUALITY_DATA" in str(caught.value)


def test_a_csv_url_is_fetched_once(workdir, red_csv, tmp_path) -> None:
    handler = type("Handler", (Archive,), {"payload": red_csv.read_bytes(), "hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/red.csv"
        assert len(load(url).frame) == 1599 and load(url).source == url
        assert handler.hits == 1
    finally:
        server.shutdown()
