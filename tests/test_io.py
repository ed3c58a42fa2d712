"""One reading path for files and HTTP bodies: the same bytes give the same answer either way."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from winequality.errors import DataError, PayloadError, SchemaError
from winequality.io import files, protocol, reader, writers
from winequality.schema import FEATURE_NAMES
from winequality.serving.endpoints_mlflow import decode_body

COLUMNS = list(FEATURE_NAMES)
SUFFIX = {files.CSV: ".csv", files.PARQUET: ".parquet", files.JSON: ".json"}


@pytest.fixture(scope="module")
def frame(red_csv: Path) -> pd.DataFrame:
    return pd.read_csv(red_csv, sep=";").head(12)


def encodings(frame: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    split = {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}
    return {
        "csv ,": (files.CSV, frame.to_csv(index=False).encode()),
        "csv ;": (files.CSV, frame.to_csv(index=False, sep=";").encode()),
        "csv ; decimal comma": (
            files.CSV,
            frame.to_csv(index=False, sep=";", decimal=",").encode(),
        ),
        "parquet": (files.PARQUET, parquet.getvalue()),
        "dataframe_split": (files.JSON, json.dumps({"dataframe_split": split}).encode()),
        "dataframe_records": (
            files.JSON,
            json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode(),
        ),
    }


def as_file(tmp_path: Path, name: str, media_type: str, content: bytes) -> reader.Input:
    path = tmp_path / (name.replace(" ", "-") + SUFFIX[media_type])
    path.write_bytes(content)
    return reader.open_input(path)


def test_every_encoding_decodes_to_the_same_features_as_a_body_and_as_a_file(
    frame, tmp_path
) -> None:
    expected = frame[COLUMNS].to_numpy(dtype=float)
    for name, (media_type, content) in encodings(frame).items():
        features, warnings = decode_body(content, media_type, allow_out_of_range=False)
        np.testing.assert_allclose(features, expected, rtol=0, atol=1e-12)
        assert [w.column for w in warnings] == [], name  # quality: a label, not a feature
        whole = as_file(tmp_path, name, media_type, content).check_all()
        np.testing.assert_allclose(whole.features, expected, rtol=0, atol=1e-12)
        assert (whole.rows, whole.warnings) == (len(frame), []), name


def test_files_may_use_what_people_write_bodies_speak_the_protocol(frame) -> None:
    bare = frame.to_json(orient="records").encode()  # a list of records
    pandas_split = frame.to_json(orient="split", index=False).encode()
    for content in (bare, pandas_split):
        assert len(protocol.file_frame(content, "a file")) == len(frame)
        with pytest.raises(PayloadError, match=r"exactly one of the keys|JSON object"):
            decode_body(content, files.JSON, allow_out_of_range=False)


def test_problems_cite_lines_in_csv_files_and_rows_elsewhere(frame, tmp_path) -> None:
    spoiled = frame.copy()
    spoiled.loc[1, "pH"] = 15.0
    for name, (media_type, content) in encodings(spoiled).items():
        with pytest.raises(SchemaError) as body:
            decode_body(content, media_type, allow_out_of_range=False)
        (issue,) = body.value.issues
        assert (issue.rows, body.value.row_label) == ((1,), "row"), name
        with pytest.raises(SchemaError) as file:
            as_file(tmp_path, name, media_type, content).check_all()
        (issue,) = file.value.issues
        expected = ((3,), "line") if media_type == files.CSV else ((1,), "row")
        assert (issue.rows, file.value.row_label) == expected, name


def test_a_type_retry_stays_inside_the_reader(tmp_path, monkeypatch) -> None:
    """A word far down a number column: Arrow's first guess fails, the reader reads again and
    the caller's pass simply runs again, never seeing why."""
    monkeypatch.setattr(reader, "BATCH_BYTES", 16 * 1024)  # the word lands in a later block
    rows = ["a;b"] + [f"{i};{i}" for i in range(20_000)] + ["x;1"]
    path = tmp_path / "late-word.csv"
    path.write_text("\n".join(rows) + "\n")
    source = reader.open_input(path)
    passes: list[int] = []

    def each_pass(batches) -> int:
        passes.append(1)
        return sum(batch.columns.num_rows for batch in batches)

    assert source.read(each_pass) == 20_001
    assert len(passes) == 2  # read again, with column `a` as text


def test_unreadable_bytes_are_one_line_each() -> None:
    with pytest.raises(PayloadError, match="the body is not valid JSON"):
        protocol.parse_json(b"{nope", "the body")
    with pytest.raises(DataError, match="is not readable Parquet"):
        reader.open_bytes(b"PAR1 not really", files.PARQUET).check_all()
    with pytest.raises(DataError, match="is empty"):
        reader.open_bytes(b"", files.CSV).check_all()


def test_standard_input_is_sniffed(frame) -> None:
    for name, (media_type, content) in encodings(frame).items():
        assert files.sniff(content) == media_type, name


def test_extensions_and_atomic_writes(frame, tmp_path) -> None:
    with pytest.raises(
        DataError, match=r"unknown file type '\.txt'.*\.csv, \.parquet, \.pq, \.json"
    ):
        files.media_type_for(tmp_path / "out.txt")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name in ("out.csv", "out.parquet", "out.json"):
        with writers.open_writer(tmp_path / name) as writer:
            writer.write(table.slice(0, 5))
            writer.write(table.slice(5))
        back = reader.open_input(tmp_path / name).check_all()
        assert back.rows == len(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.json", "out.parquet"]

    def write_then_fail() -> None:
        with writers.open_writer(tmp_path / "half.csv") as writer:
            writer.write(table)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_then_fail()
    assert not (tmp_path / "half.csv").exists()
    assert not list(tmp_path.glob(".*partial"))  # nothing half-written left behind


# --- large all-number bodies (io.bulk) ----------------------------------------------------------

DEFECTS = {  # JSON text spliced in place of one cell
    "null": "null",
    "numeric text": '"7.4"',
    "text": '"acid"',
    "true": "true",
    "a list": "[3.2]",
    "past double range": "1e400",
    "a huge integer": str(2**70),
    "out of range": "-5",
    "NaN": "NaN",
    "a whole number": "1",
}


def _bodies(red: pd.DataFrame) -> dict[str, str]:
    """Bodies past io.bulk's threshold: 600 wines, MLflow's split and V2's two forms."""
    wines = red[COLUMNS].head(600)
    split = {"columns": COLUMNS, "data": wines.to_numpy().tolist()}
    matrix = {"name": "w", "shape": [600, 11], "datatype": "FP64"}
    named = [
        {"name": c, "shape": [600, 1], "datatype": "FP32", "data": wines[c].tolist()}
        for c in COLUMNS
    ]
    return {
        "dataframe_split": json.dumps({"dataframe_split": split}),
        "v2 matrix": json.dumps(
            {"id": "7", "inputs": [{**matrix, "data": wines.to_numpy().ravel().tolist()}]}
        ),
        "v2 named": json.dumps({"parameters": {"content_type": "pd"}, "inputs": named}),
    }


def _answer(form: str, content: bytes) -> object:
    """What the server's decoders make of a body: features, warnings and errors, or the error."""
    from winequality.io.inference import parse_inference_request

    try:
        if form == "dataframe_split":
            checked = protocol.parse_body(content)
            return (repr(checked.features.tolist()), checked.warnings, checked.errors)
        decoded = parse_inference_request(content)
        return (repr(decoded.features.tolist()), decoded.warnings, decoded.id, decoded.parameters)
    except (PayloadError, SchemaError) as refused:
        return (type(refused).__name__, str(refused), getattr(refused, "issues", None))


@pytest.mark.parametrize("form", ["dataframe_split", "v2 matrix", "v2 named"])
@pytest.mark.parametrize("defect", [None, *DEFECTS])
def test_large_bodies_read_straight_into_arrays_answer_as_the_general_reader_does(
    red, monkeypatch, form, defect
) -> None:
    """Above io.bulk.MIN_BYTES, bodies of numbers only skip Python's objects; any other body
    (one defect among 6,600 cells, of each kind) goes the general way. Both must agree on
    every value, warning and problem: the answer is computed both ways and compared."""
    from winequality.io import bulk, inference

    numbers = bulk.numbers

    text = _bodies(red)[form]
    if defect is not None:
        # the 4,000th number in the text: one in the middle of the data, whatever the form
        number = re.compile(r"-?\d+\.?\d*(?:e-?\d+)?")
        start = [m.start() for m in number.finditer(text)][4000]
        end = start + len(number.match(text, start)[0])
        text = text[:start] + DEFECTS[defect] + text[end:]
    content = text.encode()
    assert len(content) > bulk.MIN_BYTES
    read = []

    def counted(*args: object) -> object:
        read.append(args)
        return numbers(*args)

    with monkeypatch.context() as spy:  # (that the body was read straight into arrays)
        spy.setattr(bulk, "numbers", counted)
        straight = _answer(form, content)
    if defect is None:
        assert read
    # the general reader only: no io.bulk, and no one-call decoding of the per-feature form
    monkeypatch.setattr(bulk, "MIN_BYTES", 10**12)
    monkeypatch.setattr(inference, "_plain_named_form", lambda inputs: None)
    assert _answer(form, content) == straight
    if defect is None:
        assert straight[0].startswith("[[")  # accepted, both ways
        if form == "dataframe_split":
            assert not straight[2]


def test_a_csv_body_that_is_not_utf8_is_refused_in_one_line() -> None:
    """Found by the fuzzer: a malformed row holding invalid UTF-8 made Arrow's callback fail
    where no one could catch it."""
    from winequality.errors import DataError

    body = b"\xf6x,y\n1,2,3\n"
    with pytest.raises(DataError, match=r"the input is not UTF-8 text \(byte 0xf6 at offset 0\)"):
        decode_body(body, files.CSV, allow_out_of_range=False)
