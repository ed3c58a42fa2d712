"""One decoder for files and HTTP bodies: the same bytes give the same answer either way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winequality import codecs
from winequality.errors import DataError, PayloadError
from winequality.schema import FEATURE_NAMES

COLUMNS = list(FEATURE_NAMES)


@pytest.fixture(scope="module")
def frame(red_csv: Path) -> pd.DataFrame:
    return pd.read_csv(red_csv, sep=";").head(12)


def encodings(frame: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    split = {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}
    return {
        "csv ,": (codecs.CSV, frame.to_csv(index=False).encode()),
        "csv ;": (codecs.CSV, frame.to_csv(index=False, sep=";").encode()),
        "csv ; decimal comma": (
            codecs.CSV,
            frame.to_csv(index=False, sep=";", decimal=",").encode(),
        ),
        "parquet": (codecs.PARQUET, parquet.getvalue()),
        "dataframe_split": (codecs.JSON, json.dumps({"dataframe_split": split}).encode()),
        "dataframe_records": (
            codecs.JSON,
            json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode(),
        ),
    }


@pytest.mark.parametrize("from_file", [False, True])
def test_every_encoding_decodes_to_the_same_features(frame, from_file) -> None:
    expected = frame[COLUMNS].to_numpy(dtype=float)
    for name, (media_type, content) in encodings(frame).items():
        decoded = codecs.decode(content, media_type, from_file=from_file, keep_frame=True)
        assert decoded.validation.ok, name
        np.testing.assert_allclose(decoded.validation.features, expected, rtol=0, atol=1e-12)
        assert [w.column for w in decoded.validation.warnings] == [], name  # quality: a label
        assert decoded.frame is not None
        assert len(decoded.frame) == len(frame)


def test_files_may_use_what_people_write_bodies_speak_the_protocol(frame) -> None:
    bare = frame.to_json(orient="records").encode()  # a list of records
    pandas_split = frame.to_json(orient="split", index=False).encode()
    for content in (bare, pandas_split):
        assert codecs.decode(content, codecs.JSON, from_file=True).validation.ok
        with pytest.raises(PayloadError, match=r"exactly one of the keys|JSON object"):
            codecs.decode(content, codecs.JSON)


def test_problems_cite_lines_in_csv_files_and_rows_elsewhere(frame) -> None:
    spoiled = frame.copy()
    spoiled.loc[1, "pH"] = 15.0
    for media_type, content in encodings(spoiled).values():
        for from_file in (False, True):
            decoded = codecs.decode(content, media_type, from_file=from_file)
            (issue,) = decoded.validation.errors
            assert issue.rows == (1,)
            expected = ("line", 2) if from_file and media_type == codecs.CSV else ("row", 0)
            assert (decoded.row_label, decoded.row_offset) == expected


def test_unreadable_bytes_are_one_line_each() -> None:
    with pytest.raises(PayloadError, match="the body is not valid JSON"):
        codecs.decode(b"{nope", codecs.JSON, what="the body")
    with pytest.raises(DataError, match="is not readable Parquet"):
        codecs.decode(b"PAR1 not really", codecs.PARQUET)
    with pytest.raises(DataError, match="is empty"):
        codecs.decode(b"", codecs.CSV)
    with pytest.raises(DataError, match="unsupported media type"):
        codecs.decode(b"x", "text/plain")


def test_standard_input_is_sniffed(frame) -> None:
    for name, (media_type, content) in encodings(frame).items():
        assert codecs.sniff(content) == media_type, name


def test_extensions_and_atomic_writes(frame, tmp_path) -> None:
    with pytest.raises(
        DataError, match=r"unknown file type '\.txt'.*\.csv, \.parquet, \.pq, \.json"
    ):
        codecs.media_type_for(tmp_path / "out.txt")
    for name in ("out.csv", "out.parquet", "out.json"):
        codecs.write_file(frame, tmp_path / name)
        back = codecs.decode_file(tmp_path / name)
        assert back.validation.ok
        assert back.frame is not None
        assert len(back.frame) == len(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.json", "out.parquet"]

    class Unwritable(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        codecs.write_file(Unwritable(frame), tmp_path / "half.csv")
    assert not (tmp_path / "half.csv").exists()
    assert not list(tmp_path.glob(".*partial"))  # nothing half-written left behind
