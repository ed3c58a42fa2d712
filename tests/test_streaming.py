"""`predict` on big files: batches, problems across batches, atomic output, same bits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from winequality.cli import app
from winequality.errors import SchemaError
from winequality.io import reader
from winequality.predict import predict_file
from winequality.schema import FEATURE_NAMES

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few hundred rows, so that the red data spans many of them."""
    monkeypatch.setattr(reader, "BATCH_BYTES", 16 * 1024)
    monkeypatch.setattr(reader, "BATCH_ROWS", 100)


def read_back(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)  # pandas 3 parses floats exactly (round trip)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.DataFrame(json.loads(path.read_bytes()))


@pytest.mark.parametrize("output", ["out.csv", "out.parquet", "out.json", None])
@pytest.mark.parametrize("layout", ["uci.csv", "comma.csv", "in.parquet"])
def test_streamed_output_is_the_in_memory_result_to_the_last_bit(
    trained_model, scorer, red_csv, tmp_path, small_batches, layout, output
) -> None:
    red = pd.read_csv(red_csv, sep=";")
    red["id"] = [f"wine-{i}" for i in range(len(red))]
    source = tmp_path / layout
    if layout == "uci.csv":
        red.to_csv(source, sep=";", index=False)
    elif layout == "comma.csv":  # a spreadsheet export: ';' and decimal commas
        red.to_csv(source, sep=";", decimal=",", index=False)
    else:
        pq.write_table(__import__("pyarrow").Table.from_pandas(red), source, row_group_size=128)
    # what pandas reads from the same file, scored in one go
    if layout == "in.parquet":
        whole = pd.read_parquet(source)
    else:
        decimal = "," if layout == "comma.csv" else "."
        whole = pd.read_csv(source, sep=";", decimal=decimal)
    features = np.ascontiguousarray(whole[COLUMNS].to_numpy(dtype=np.float64))  # as checked
    reference = scorer.predict(features)
    target = tmp_path / output if output else None
    result = predict_file(
        trained_model.model_uri, source, target, tracking_uri=trained_model.tracking_uri
    )
    assert result.rows == len(red) == 1599
    written = read_back(target) if target else result.frame
    assert written is not None
    assert list(written.columns) == [*red.columns, "prediction"]
    assert np.array_equal(written["prediction"].to_numpy(), reference)  # bit for bit
    assert np.array_equal(written[COLUMNS].to_numpy(dtype=float), features)
    assert written["id"].tolist() == red["id"].tolist()
    assert written["quality"].tolist() == red["quality"].tolist()
    if target is not None:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([layout, output])


def test_every_problem_of_a_big_file_is_listed_by_line_and_nothing_is_written(
    trained_model, red_csv, tmp_path, small_batches
) -> None:
    lines = Path(red_csv).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    rows[2] = rows[2].replace(rows[2].split(";")[8], "15.2", 1)  # pH out of range, line 4
    cells = rows[900].split(";")  # far beyond the first batch: Arrow typed the column already
    cells[7] = "dense"
    rows[900] = ";".join(cells)  # line 902
    rows.insert(1200, "")  # a blank line inside the file: line 1202
    rows.insert(1300, rows[1300] + ";9")  # one value too many: line 1302
    source = tmp_path / "bad.csv"
    source.write_text("\n".join([header, *rows]) + "\n\n\n")  # blank lines at the end are fine
    output = tmp_path / "out.parquet"
    with pytest.raises(SchemaError) as caught:
        predict_file(
            trained_model.model_uri, source, output, tracking_uri=trained_model.tracking_uri
        )
    text = str(caught.value)
    assert "pH: 1 value outside the physical range [0, 14] pH (line 4: 15.2)" in text
    assert "density: 1 value not a number (line 902: 'dense')" in text
    assert "fixed acidity: 1 value missing (null or empty) (line 1202)" in text
    assert "has 13 values where the header has 12 (line 1302" in text
    assert list(tmp_path.iterdir()) == [source]  # no output, no partial file


def test_problem_lists_are_capped_and_counted(trained_model, red_csv, tmp_path) -> None:
    red = pd.read_csv(red_csv, sep=";")
    big = pd.concat([red] * 4, ignore_index=True)
    big["alcohol"] = 120.0  # every row: 6,396 problems
    source = tmp_path / "big.csv"
    big.to_csv(source, index=False)
    with pytest.raises(SchemaError) as caught:
        predict_file(trained_model.model_uri, source, tracking_uri=trained_model.tracking_uri)
    (issue,) = caught.value.issues
    assert issue.count == len(big) == 6396
    assert len(issue.rows) == reader.MAX_ROWS_PER_ISSUE
    assert issue.rows[:2] == (2, 3)  # lines
    assert "alcohol: 6396 values outside" in str(caught.value)
    assert "… 6391 more" in str(caught.value)


def test_stdout_gets_the_csv_only_when_every_row_passed(
    trained_model, red_csv, tmp_path, small_batches, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    lines = Path(red_csv).read_text().splitlines()
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n")
    answer = runner.invoke(
        app, ["predict", "--model", trained_model.model_uri, "--input", str(source)]
    )
    assert answer.exit_code == 0, answer.output
    assert len(answer.stdout.splitlines()) == 1600
    last = lines[5].split(";")
    last[10] = "194"  # alcohol (% vol), on the last line
    source.write_text("\n".join([*lines, ";".join(last)]) + "\n")
    answer = runner.invoke(
        app, ["predict", "--model", trained_model.model_uri, "--input", str(source)]
    )
    assert answer.exit_code == 2
    assert answer.stdout == ""
    assert "alcohol: 1 value outside" in answer.stderr
    assert "(line 1601: 194.0)" in answer.stderr


def test_text_cells_are_quoted_only_where_needed(trained_model, red_csv, tmp_path) -> None:
    red = pd.read_csv(red_csv, sep=";").head(3)
    red["note"] = ["plain", "fruity, dry", 'a "grand" vin']
    source = tmp_path / "in.csv"
    red.to_csv(source, index=False)
    output = tmp_path / "out.csv"
    predict_file(trained_model.model_uri, source, output, tracking_uri=trained_model.tracking_uri)
    text = output.read_text().splitlines()
    assert text[0].startswith("fixed acidity,volatile acidity,")
    assert text[1].startswith("7.4,0.7,0,1.9,")  # numbers unquoted, text quoted where needed
    written = pd.read_csv(output)
    assert written["note"].tolist() == red["note"].tolist()
    assert np.array_equal(written[COLUMNS].to_numpy(), red[COLUMNS].to_numpy())


def test_csv_cells_are_written_back_as_the_input_wrote_them(
    trained_model, red_csv, tmp_path
) -> None:
    source = tmp_path / "in.csv"
    lines = Path(red_csv).read_text().splitlines()[:40]
    source.write_text("\n".join(line.replace(";", ",") for line in lines) + "\n")
    output = tmp_path / "out.csv"
    predict_file(trained_model.model_uri, source, output, tracking_uri=trained_model.tracking_uri)
    written = output.read_text().splitlines()
    given = source.read_text().splitlines()
    assert written[0] == given[0].replace('"', "") + ",prediction"  # names quoted only if needed
    for cells, echoed in zip(given[1:], written[1:], strict=True):
        assert echoed.startswith(cells + ",")  # every input cell, byte for byte


def test_a_column_whose_type_changes_late_in_the_file_is_read_again_as_text(
    trained_model, red_csv, tmp_path, small_batches
) -> None:
    red = pd.read_csv(red_csv, sep=";")
    red["quality"] = red["quality"].astype(object)
    red.loc[1500, "quality"] = "five"  # Arrow typed the column as integers blocks ago
    source = tmp_path / "in.csv"
    red.to_csv(source, index=False)
    result = predict_file(trained_model.model_uri, source, tracking_uri=trained_model.tracking_uri)
    assert result.rows == 1599
    assert result.frame is not None
    assert result.frame["quality"].iloc[1500] == "five"
    assert result.frame["quality"].iloc[0] == "5"
