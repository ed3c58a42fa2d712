"""Scoring past one machine: the batch path's loader and validator inside Spark's executors.

`predict_spark(model_uri, input, output)` reads a Parquet or CSV file or folder, and in the
executors, batch by batch over Arrow (`mapInArrow`), checks every row with the schema check that
`predict` and `serve` use (`streaming.validate_table`) and scores the valid ones with the model
loaded by our loader (skops allow-list). Every input row lands in exactly one of two outputs:
`OUTPUT/predictions/` (the input's columns, `prediction`) or `OUTPUT/quarantine/` (the input's
columns and `problems`, the reasons the batch path gives), both Parquet, both with the row's
identity (`source_file`, `row_id`). Nothing is collected to the driver. A clean input is read
once; when the first pass counted refused rows, a second, checking-only pass writes them.

The model travels as MLflow's `spark_udf` sends it: the driver downloads it once, checks it
(a model that cannot be loaded fails before any task runs), and ships the folder with
`SparkContext.addFile`; each executor's Python loads it once. Both outputs are written by
Spark's commit protocol into a folder beside OUTPUT, renamed onto OUTPUT only when both
succeeded: a failed job leaves no output that looks complete.

PySpark is an optional extra (`pip install 'winequality[spark]'`) and needs Java 17+.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from winequality.errors import DataError, ParameterError, first_line

__all__ = ["ROW_COLUMNS", "SparkResult", "predict_spark", "score_batches"]

ROW_COLUMNS = ("source_file", "row_id")  # a row's identity in both outputs
_SCORERS: dict[str, Any] = {}  # per executor Python process: the model, loaded once


@dataclass(frozen=True)
class SparkResult:
    output: str
    predictions: int
    quarantined: int
    master: str

    @property
    def rows(self) -> int:
        return self.predictions + self.quarantined


def predict_spark(
    model_uri: str,
    input_path: str,
    output: str,
    *,
    master: str = "local[*]",
    allow_out_of_range: bool = False,
    overwrite: bool = False,
    tracking_uri: str | None = None,
) -> SparkResult:
    """Score `input_path` on Spark; see the module's docstring."""
    target = Path(output)
    if target.exists() and not overwrite:
        raise ParameterError(f"{output} exists; choose another --output or pass --overwrite")
    source = Path(input_path)
    kind, decimal, separator = _input_kind(source)
    with tempfile.TemporaryDirectory(prefix="winequality-spark-") as folder:
        archive = _checked_model_archive(model_uri, tracking_uri, Path(folder))
        try:
            with warnings.catch_warnings():  # PySpark's notice about pandas 3: not our path
                warnings.simplefilter("ignore", FutureWarning)
                from pyspark.sql import SparkSession
        except ImportError as exc:
            raise ParameterError(
                "the spark engine needs PySpark: pip install 'winequality[spark]' (and Java 17+)"
            ) from exc
        active = SparkSession.getActiveSession()
        spark = active or _new_session(master)
        try:
            return _run(
                spark, archive, source, kind, separator, decimal, target, allow_out_of_range
            )
        finally:
            if active is None:  # ours: stopped; a notebook's session is left running
                spark.stop()


def _new_session(master: str) -> Any:
    import sys

    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName("winequality predict")
        .config("spark.ui.showConsoleProgress", "false")  # the command prints its own counts
    )
    if not master.startswith("local") or os.environ.get("PYSPARK_PYTHON"):
        return builder.getOrCreate()  # on a cluster, PYSPARK_PYTHON names the executors' Python
    # Executors on this machine run this very Python, the one winequality is installed in
    # (PySpark reads the variable once, when the context starts).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        return builder.getOrCreate()
    finally:
        del os.environ["PYSPARK_PYTHON"]


def _run(
    spark: Any,
    archive: Path,
    source: Path,
    kind: str,
    separator: str,
    decimal: str,
    target: Path,
    allow_out_of_range: bool,
) -> SparkResult:
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    spark.sparkContext.addFile(str(archive))
    if kind == "parquet":
        frame = spark.read.parquet(str(source))
    else:  # every cell as text: the schema check reads it, as `predict` does
        frame = spark.read.csv(str(source), header=True, sep=separator, inferSchema=False)
    frame = frame.toDF(*[c.strip() for c in frame.columns])
    frame = frame.withColumn(ROW_COLUMNS[0], F.input_file_name()).withColumn(
        ROW_COLUMNS[1], F.monotonically_increasing_id()
    )
    names = [c for c in frame.columns if c not in ROW_COLUMNS]
    check = partial(
        score_batches,
        archive=archive.name,
        names=names,
        allow_out_of_range=allow_out_of_range,
        decimal=decimal,
    )
    valid_schema = StructType([*frame.schema.fields, StructField("prediction", DoubleType())])
    invalid_schema = StructType([*frame.schema.fields, StructField("problems", StringType())])
    # Pass 1 scores and writes the valid rows, and counts the others (an accumulator: a task
    # run twice can only count more, so "none" is exact). Pass 2, only when some row failed,
    # checks the input again (no scoring) and writes the failed rows with their reasons: the
    # check is deterministic, so both passes split the rows the same way. A clean input
    # costs one pass, with no cache of the scored rows.
    refused = spark.sparkContext.accumulator(0)
    partial_output = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial_output, ignore_errors=True)
    try:
        frame.mapInArrow(partial(check, keep="valid", refused=refused), valid_schema).write.parquet(
            str(partial_output / "predictions")
        )
        quarantine = str(partial_output / "quarantine")
        if refused.value:
            frame.mapInArrow(partial(check, keep="invalid"), invalid_schema).write.parquet(
                quarantine
            )
        else:  # an empty data set that still has the columns
            spark.createDataFrame([], invalid_schema).write.parquet(quarantine)
        # counted from the written files' footers: no further pass over the rows
        counts = {
            "ok": _rows_in(partial_output / "predictions"),
            "quarantine": _rows_in(partial_output / "quarantine"),
        }
    except BaseException:
        shutil.rmtree(partial_output, ignore_errors=True)
        raise
    if target.exists():  # --overwrite: replaced only now that the new output is whole
        shutil.rmtree(target)
    partial_output.replace(target)
    return SparkResult(
        str(target),
        int(counts.get("ok", 0)),
        int(counts.get("quarantine", 0)),
        spark.sparkContext.master,
    )


def _rows_in(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(
        pq.read_metadata(part).num_rows for part in folder.glob("*.parquet") if part.is_file()
    )


def score_batches(
    batches: Iterator[Any],
    *,
    archive: str,
    names: list[str],
    allow_out_of_range: bool,
    decimal: str,
    keep: str,
    refused: Any = None,
) -> Iterator[Any]:
    """In an executor: check each Arrow batch; with `keep="valid"`, score the valid rows and
    yield them with `prediction` (adding the number of the others to the `refused`
    accumulator); with `keep="invalid"`, yield the failed rows with their `problems`."""
    import pyarrow as pa

    from winequality.streaming import validate_table

    scorer = _executor_scorer(archive) if keep == "valid" else None
    for batch in batches:
        checked = validate_table(
            pa.Table.from_batches([batch]).select(names).rename_columns(names),
            names,
            allow_out_of_range=allow_out_of_range,
            decimal=decimal,
        )
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        for issue in checked.errors:
            if issue.rows:
                bad[list(issue.rows)] = True
            else:  # a problem of the whole batch (a missing column): every row
                bad[:] = True
        if keep == "valid":
            if refused is not None and bad.any():
                refused.add(int(bad.sum()))
            good = np.flatnonzero(~bad)
            if len(good) == 0:
                continue
            scored = batch if len(good) == n else batch.take(pa.array(good))
            prediction = scorer.predict(checked.features[good])  # type: ignore[union-attr]
            yield pa.RecordBatch.from_arrays(
                [*scored.columns, pa.array(prediction, type=pa.float64())],
                names=[*batch.schema.names, "prediction"],
            )
        elif bad.any():
            rows = np.flatnonzero(bad)
            problems: dict[int, list[str]] = {int(row): [] for row in rows}
            for issue in checked.errors:
                text = f"{issue.column}: {issue.reason}" if issue.column else issue.reason
                for row in issue.rows if issue.rows else range(n):
                    problems[row].append(text)
            yield pa.RecordBatch.from_arrays(
                [
                    *batch.take(pa.array(rows)).columns,
                    pa.array(["; ".join(problems[int(row)]) for row in rows], type=pa.string()),
                ],
                names=[*batch.schema.names, "problems"],
            )


def _executor_scorer(archive: str) -> Any:
    scorer = _SCORERS.get(archive)
    if scorer is None:
        from pyspark import SparkFiles

        from winequality.predict import load_scorer

        folder = Path(tempfile.mkdtemp(prefix="winequality-model-"))
        with zipfile.ZipFile(SparkFiles.get(archive)) as bundle:
            bundle.extractall(folder)
        scorer = _SCORERS[archive] = load_scorer(str(folder))
    return scorer


def _checked_model_archive(model_uri: str, tracking_uri: str | None, folder: Path) -> Path:
    """The model folder, downloaded and loaded once on the driver (so a bad URI fails before
    any task), zipped for `addFile`."""
    from winequality.predict import load_scorer

    local = Path(model_uri).expanduser()
    if not local.is_dir():
        import mlflow

        from winequality import tracking

        tracking.connect(tracking_uri, create=False)
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder / "model"))
            )
        except Exception as exc:
            from winequality.errors import ModelLoadError

            raise ModelLoadError(f"cannot load model {model_uri}: {first_line(exc)}") from exc
    load_scorer(str(local))  # every check the batch path makes, on the driver
    archive = folder / f"winequality-model-{os.getpid()}-{abs(hash(model_uri)):x}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(local))
    return archive


def _input_kind(source: Path) -> tuple[str, str, str]:
    """('parquet' | 'csv', decimal mark, separator) of a file or a folder of them."""
    from winequality.data import detect_layout

    if not source.exists():
        raise DataError(f"no such input: {source}")
    files = (
        [source]
        if source.is_file()
        else sorted(
            p for p in source.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))
        )
    )
    suffixes = {p.suffix.lower() for p in files}
    if not files or not suffixes <= {".parquet", ".pq", ".csv"} or len(suffixes - {".pq"}) > 1:
        raise DataError(
            f"{source}: the spark engine reads a Parquet or CSV file, or a folder of one kind "
            f"(found {', '.join(sorted(suffixes)) or 'no files'})"
        )
    if suffixes <= {".parquet", ".pq"}:
        return "parquet", ".", ","
    with open(files[0], "rb") as handle:
        separator, decimal = detect_layout(handle.read(65536), str(files[0]))
    return "csv", decimal, separator
