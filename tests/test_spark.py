"""The spark tier: `predict --engine spark` against the batch path, on real Spark.

Needs PySpark (`uv sync --extra spark`) and Java 17+; skips in one line without them, except
where tiers are required (CI). Runs on `local[*]` and on `local-cluster[2,1,1024]`, whose
executors are separate JVMs with their own Python workers, so that the model and the validator
really cross a process boundary.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from winequality import data
from winequality.cli import app
from winequality.errors import ModelLoadError, ParameterError, SchemaError
from winequality.predict import predict_file
from winequality.schema import FEATURE_NAMES

from .conftest import tier_unavailable

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()
pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def spark_available() -> None:
    if importlib.util.find_spec("pyspark") is None:
        tier_unavailable("spark", "PySpark is not installed", "uv sync --extra spark")
    if shutil.which("java") is None:
        tier_unavailable(
            "spark", "Java is not installed", "apt-get install openjdk-17-jre-headless"
        )


def spark_predict(trained_model, source: Path, output: Path, **options):
    from winequality.spark import predict_spark

    return predict_spark(
        trained_model.model_uri,
        str(source),
        str(output),
        tracking_uri=trained_model.tracking_uri,
        **options,
    )


def read(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder).sort_values("row_id").reset_index(drop=True)


@pytest.mark.parametrize("master", ["local[2]", "local-cluster[2,1,1024]"])
def test_spark_scores_like_predict_to_the_last_bit(trained_model, tmp_path, master) -> None:
    red = data.load().frame
    source = tmp_path / "red.parquet"
    red.to_parquet(source)
    result = spark_predict(trained_model, source, tmp_path / "out", master=master)
    assert (result.predictions, result.quarantined) == (len(red), 0)
    scored = read(tmp_path / "out" / "predictions")
    local = predict_file(trained_model.model_uri, source, tracking_uri=trained_model.tracking_uri)
    assert local.predictions is not None
    # Spark's row order is its own: match rows on their values
    key = [*COLUMNS, "quality"]
    merged = scored.merge(local.frame, on=key, suffixes=("_spark", "_local"))
    assert len(merged) >= len(red)  # duplicates multiply; every row found
    np.testing.assert_allclose(merged["prediction_spark"], merged["prediction_local"], atol=1e-9)
    empty = pd.read_parquet(tmp_path / "out" / "quarantine")  # no rows, but its columns
    assert len(empty) == 0
    assert set(empty.columns) >= {*COLUMNS, "source_file", "row_id", "problems"}
    assert "prediction" not in empty.columns


def test_a_mixed_file_splits_exactly_into_predictions_and_quarantine(
    trained_model, tmp_path
) -> None:
    red = data.load().frame.head(40)
    text = red.astype(object)
    text.loc[3, "pH"] = 15.0  # out of range
    text.loc[5, "alcohol"] = None  # missing
    text.loc[7, "density"] = "dense"  # not a number
    text.loc[9, "chlorides"] = -1  # negative
    text.loc[11, "free sulfur dioxide"] = 90  # free > total: the SO2 rule
    text.loc[11, "total sulfur dioxide"] = 50
    folder = tmp_path / "in"
    folder.mkdir()
    text.iloc[:20].to_csv(folder / "part-1.csv", index=False)
    text.iloc[20:].to_csv(folder / "part-2.csv", index=False)
    result = spark_predict(trained_model, folder, tmp_path / "out")
    assert result.rows == 40
    assert (result.predictions, result.quarantined) == (35, 5)
    quarantine = read(tmp_path / "out" / "quarantine")
    predictions = read(tmp_path / "out" / "predictions")
    assert len(quarantine) + len(predictions) == 40
    assert set(quarantine.columns) >= {*COLUMNS, "problems", "source_file", "row_id"}
    assert "prediction" not in quarantine.columns
    reasons = " | ".join(quarantine["problems"])
    for fragment in (
        "pH: outside the physical range",
        "alcohol: missing",
        "density: not a number",
        "chlorides: outside the physical range",
        "free sulfur dioxide",
    ):
        assert fragment in reasons
    assert predictions["prediction"].notna().all()
    # the same reasons the batch path gives for the same cells
    with pytest.raises(SchemaError) as caught:
        predict_file(
            trained_model.model_uri, folder / "part-1.csv", tracking_uri=trained_model.tracking_uri
        )
    assert "density: 1 value not a number" in str(caught.value)


def test_an_existing_output_is_refused_and_a_bad_model_fails_before_any_task(
    trained_model, tmp_path
) -> None:
    red = data.load().frame.head(10)
    source = tmp_path / "red.parquet"
    red.to_parquet(source)
    output = tmp_path / "out"
    output.mkdir()
    with pytest.raises(ParameterError, match="exists; choose another --output or pass --overwrite"):
        spark_predict(trained_model, source, output)
    from winequality.spark import predict_spark

    with pytest.raises(ModelLoadError, match="cannot load model"):
        predict_spark(
            "models:/absent@champion",
            str(source),
            str(tmp_path / "other"),
            tracking_uri=trained_model.tracking_uri,
        )
    assert not (tmp_path / "other").exists()
    result = spark_predict(trained_model, source, output, overwrite=True)
    assert result.predictions == 10


def test_cli_prints_the_counts(trained_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    red = data.load().frame.head(30)
    source = tmp_path / "red.csv"
    red.to_csv(source, sep=";", index=False)
    answer = runner.invoke(
        app,
        [
            "predict", "--engine", "spark", "--model", trained_model.model_uri,
            "--input", str(source), "--output", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    assert answer.exit_code == 0, answer.output
    assert "30 rows on local[*]: 30 scored into" in answer.stderr
    assert "0 quarantined" in answer.stderr


def test_interval_bounds_match_predicts_and_an_uncalibrated_level_runs_no_task(
    trained_model, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    red = data.load().frame.head(50)
    source = tmp_path / "red.csv"
    red.to_csv(source, sep=";", index=False)
    command = ["predict", "--engine", "spark", "--model", trained_model.model_uri,
               "--input", str(source)]  # fmt: skip
    refused = runner.invoke(app, [*command, "--output", str(tmp_path / "no"), "--interval", "0.5"])
    assert refused.exit_code == 2, refused.output
    assert "no interval calibrated at 0.5; this model has 0.8, 0.9, 0.95" in refused.stderr
    assert not (tmp_path / "no").exists()

    answer = runner.invoke(app, [*command, "--output", str(tmp_path / "out"), "--interval", "0.9"])
    assert answer.exit_code == 0, answer.output
    scored = read(tmp_path / "out" / "predictions")
    assert list(scored.columns[-3:]) == ["prediction", "lower_0.9", "upper_0.9"]
    local = predict_file(
        trained_model.model_uri, source, tracking_uri=trained_model.tracking_uri, interval=0.9
    ).frame
    # every cell read as text on both paths, in file order: row_id follows it within one file
    for column in ("prediction", "lower_0.9", "upper_0.9"):
        np.testing.assert_allclose(scored[column], local[column], rtol=0, atol=1e-12)
    half = trained_model.result.intervals.half_widths["0.9"]
    np.testing.assert_allclose(scored["upper_0.9"] - scored["prediction"], half, atol=1e-12)


def test_uris_go_through_hadoops_file_system_in_a_session_left_running(
    trained_model, tmp_path
) -> None:
    """`file://` URIs take the path `hdfs://` and `s3a://` take (Hadoop's FileSystem API in the
    driver's JVM): listing, the CSV layout read from the first file's start, the existence
    check, the footers' counts, the final rename. The notebook's session is used, not stopped."""
    from pyspark.sql import SparkSession

    from winequality.errors import DataError
    from winequality.spark import SparkResult, _new_session, hadoop_gateway, predict_spark

    red = data.load().frame
    folder = tmp_path / "lab results"  # a space, as Hadoop's paths take it
    for year, rows in (("2025", red.head(700)), ("2026", red.iloc[700:])):  # partitioned
        (folder / f"year={year}").mkdir(parents=True)
        rows.to_csv(folder / f"year={year}" / "part-0.csv", sep=";", index=False)
    (folder / "_SUCCESS").write_text("")
    output = f"file://{tmp_path / 'scored'}"

    def run(source: str, **options) -> SparkResult:
        return predict_spark(
            trained_model.model_uri,
            source,
            output,
            tracking_uri=trained_model.tracking_uri,
            **options,
        )

    spark = _new_session("local[2]")
    try:
        # what the one use of PySpark's private gateway relies on (spark.hadoop_gateway)
        jvm, conf = hadoop_gateway(spark)
        root = jvm.org.apache.hadoop.fs.Path(f"file://{folder}")
        assert root.getFileSystem(conf).exists(root)
        assert spark.conf.get("spark.pyspark.python") == sys.executable  # not the environment
        result = run(f"file://{folder}")
        assert (result.output, result.predictions, result.quarantined) == (output, len(red), 0)
        scored = read(tmp_path / "scored" / "predictions")
        assert len(scored) == len(red)
        assert scored["source_file"].str.contains("/year=202[56]/part-0.csv").all()
        assert sorted(scored["year"].unique()) == [2025, 2026]  # the partition column kept
        with pytest.raises(ParameterError, match="exists; choose another --output"):
            run(f"file://{folder}")
        with pytest.raises(DataError, match="no such input"):
            run(f"file://{tmp_path / 'absent'}", overwrite=True)
        assert SparkSession.getActiveSession() is spark  # left running for its owner
    finally:
        spark.stop()
