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

from winequality import intervals
from winequality.errors import DataError, ParameterError, first_line

__all__ = ["ROW_COLUMNS", "SparkResult", "hadoop_gateway", "predict_spark", "score_batches"]

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
    interval: float | None = None,
) -> SparkResult:
    """Score `input_path` on Spark; see the module's docstring.

    `input_path` and `output` are local paths (on a file system the executors share, such as
    NFS) or URIs of any file system Spark's Hadoop layer reaches (`hdfs://`, `s3a://`,
    `abfss://`, `file://`). Local paths are checked before Spark starts; URIs as soon as the
    session is up, through Hadoop's FileSystem API: before any task either way. `interval` adds
    the bounds of the prediction interval at that level (`lower_0.9`, `upper_0.9`) beside
    `prediction`; a level the model was not calibrated at is refused before Spark starts.
    """
    checked_early = {}
    for role, path in (("output", output), ("input", input_path)):
        if not _is_uri(path):
            checked_early[role] = _check(_LOCAL, role, path, overwrite)
    with tempfile.TemporaryDirectory(prefix="winequality-spark-") as folder:
        archive, level = _checked_model_archive(model_uri, tracking_uri, Path(folder), interval)
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
            hadoop = _HadoopFiles(spark)
            source = checked_early.get("input") or _check(hadoop, "input", input_path, overwrite)
            target = checked_early.get("output") or _check(hadoop, "output", output, overwrite)
            return _run(spark, archive, source, target, allow_out_of_range, level)
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
    if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # Executors on this machine run this very Python, the one winequality is installed in
        # (Spark's own setting; on a cluster, PYSPARK_PYTHON names the executors' Python).
        builder = builder.config("spark.pyspark.python", sys.executable)
    return builder.getOrCreate()


def _run(
    spark: Any,
    archive: Path,
    source: _Located,
    target: _Located,
    allow_out_of_range: bool,
    interval: float | None,
) -> SparkResult:
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    spark.sparkContext.addFile(str(archive))
    if source.kind == "parquet":
        frame = spark.read.parquet(source.uri)
    else:  # every cell as text: the schema check reads it, as `predict` does
        frame = spark.read.csv(source.uri, header=True, sep=source.separator, inferSchema=False)
    frame = frame.toDF(*[c.strip() for c in frame.columns])
    frame = frame.withColumn(ROW_COLUMNS[0], F.input_file_name()).withColumn(
        ROW_COLUMNS[1], F.monotonically_increasing_id()
    )
    scored = ["prediction", *(intervals.bound_names(interval) if interval is not None else ())]
    # an input that is an earlier output: its scores are replaced, as the local engine does
    frame = frame.drop(*[c for c in scored if c in frame.columns])
    names = [c for c in frame.columns if c not in ROW_COLUMNS]
    check = partial(
        score_batches,
        archive=archive.name,
        names=names,
        allow_out_of_range=allow_out_of_range,
        decimal=source.decimal,
        interval=interval,
    )
    valid_schema = StructType(
        [*frame.schema.fields, *(StructField(name, DoubleType()) for name in scored)]
    )
    invalid_schema = StructType([*frame.schema.fields, StructField("problems", StringType())])
    # Pass 1 scores and writes the valid rows, and counts the others (an accumulator: a task
    # run twice can only count more, so "none" is exact). Pass 2, only when some row failed,
    # checks the input again (no scoring) and writes the failed rows with their reasons: the
    # check is deterministic, so both passes split the rows the same way. A clean input
    # costs one pass, with no cache of the scored rows.
    refused = spark.sparkContext.accumulator(0)
    files, partial_output = target.files, target.sibling(".partial")
    files.delete(partial_output)
    predictions, quarantine = f"{partial_output}/predictions", f"{partial_output}/quarantine"
    try:
        frame.mapInArrow(partial(check, keep="valid", refused=refused), valid_schema).write.parquet(
            predictions
        )
        if refused.value:
            frame.mapInArrow(partial(check, keep="invalid"), invalid_schema).write.parquet(
                quarantine
            )
        else:  # an empty data set that still has the columns
            spark.createDataFrame([], invalid_schema).write.parquet(quarantine)
        # counted from the written files' footers: no further pass over the rows
        counts = (files.parquet_rows(predictions), files.parquet_rows(quarantine))
    except BaseException:
        files.delete(partial_output)
        raise
    if files.exists(target.uri):  # --overwrite: replaced only now that the new output is whole
        files.delete(target.uri)
    files.rename(partial_output, target.uri)
    return SparkResult(target.shown, counts[0], counts[1], spark.sparkContext.master)


# ---------------------------------------------------------------------------------------------
# Where the data is: local paths, or any file system Hadoop reaches
# ---------------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    """`scheme://…` or `file:/…` (a Windows drive letter is not a scheme)."""
    head, sep, _ = path.partition(":")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace("-", "").isalnum()


@dataclass(frozen=True)
class _Located:
    """A checked input or output: its URI for Spark, how it was given, and its layout."""

    files: Any  # _LocalFiles | _HadoopFiles
    uri: str
    shown: str
    kind: str = ""  # input: "parquet" | "csv"
    decimal: str = "."
    separator: str = ","

    def sibling(self, suffix: str) -> str:
        parent, _, name = self.uri.rstrip("/").rpartition("/")
        return f"{parent}/.{name}{suffix}"


def _check(files: Any, role: str, path: str, overwrite: bool) -> _Located:
    """The output must not exist (unless `overwrite`); the input must be a Parquet or CSV file
    or a folder of one kind, whose layout (separator, decimal mark) is read from its start."""
    from winequality.io.files import detect_layout

    uri = files.uri(path)
    if role == "output":
        if files.exists(uri) and not overwrite:
            raise ParameterError(f"{path} exists; choose another --output or pass --overwrite")
        return _Located(files, uri, path)
    if not files.exists(uri):
        raise DataError(f"no such input: {path}")
    found = files.data_files(uri)
    suffixes = {name.rpartition(".")[2].lower() for name in found}
    if not found or not suffixes <= {"parquet", "pq", "csv"} or len(suffixes - {"pq"}) > 1:
        raise DataError(
            f"{path}: the spark engine reads a Parquet or CSV file, or a folder of one kind "
            f"(found {', '.join(sorted('.' + s for s in suffixes)) or 'no files'})"
        )
    if suffixes <= {"parquet", "pq"}:
        return _Located(files, uri, path, "parquet")
    first = sorted(found)[0]
    separator, decimal = detect_layout(files.head(first, 65536), first)
    return _Located(files, uri, path, "csv", decimal, separator)


def _visible(name: str) -> bool:
    return not name.startswith(("_", "."))  # Spark's _SUCCESS, .crc files, hidden folders


class _LocalFiles:
    """Paths on this machine's file system (shared with the executors on a cluster)."""

    def uri(self, path: str) -> str:
        # not percent-encoded: Spark and Hadoop read a path's characters as they are
        return f"file://{Path(path).expanduser().resolve()}"

    def _path(self, uri: str) -> Path:
        return Path(uri.removeprefix("file://"))

    def exists(self, uri: str) -> bool:
        return self._path(uri).exists()

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def rename(self, source: str, target: str) -> None:
        self._path(source).replace(self._path(target))

    def data_files(self, uri: str) -> list[str]:
        root = self._path(uri)
        if root.is_file():
            return [uri]
        return sorted(
            f"file://{p}"
            for p in root.rglob("*")
            if p.is_file() and all(_visible(part) for part in p.relative_to(root).parts)
        )

    def head(self, uri: str, size: int) -> bytes:
        with open(self._path(uri), "rb") as handle:
            return handle.read(size)

    def parquet_rows(self, uri: str) -> int:
        import pyarrow.parquet as pq

        folder = self._path(uri)
        return sum(
            pq.read_metadata(part).num_rows for part in folder.glob("*.parquet") if part.is_file()
        )


def hadoop_gateway(spark: Any) -> tuple[Any, Any]:
    """(the driver's JVM view, the session's Hadoop configuration).

    The one use of PySpark's private API here: PySpark has no Python API for Hadoop's
    FileSystem, and its Py4J gateway (`SparkContext._jvm`, `_jsc`) is the way every PySpark
    user reaches it. `tests/test_spark.py` pins what this relies on.
    """
    context = spark.sparkContext
    return context._jvm, context._jsc.hadoopConfiguration()  # noqa: SLF001


class _HadoopFiles:
    """Any file system Spark's Hadoop layer reaches (HDFS, S3A, ABFS, local `file://`), through
    Hadoop's FileSystem API in the driver's JVM."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self.jvm, self.conf = hadoop_gateway(spark)

    def _fs(self, uri: str) -> tuple[Any, Any]:
        path = self.jvm.org.apache.hadoop.fs.Path(uri)
        return path.getFileSystem(self.conf), path

    def uri(self, path: str) -> str:
        return path.rstrip("/")

    def exists(self, uri: str) -> bool:
        fs, path = self._fs(uri)
        return bool(fs.exists(path))

    def delete(self, uri: str) -> None:
        fs, path = self._fs(uri)
        if fs.exists(path):
            fs.delete(path, True)

    def rename(self, source: str, target: str) -> None:
        fs, path = self._fs(source)
        if not fs.rename(path, self._fs(target)[1]):
            raise OSError(f"could not rename {source} to {target}")

    def data_files(self, uri: str) -> list[str]:
        fs, root = self._fs(uri)
        if fs.getFileStatus(root).isFile():
            return [uri]
        prefix = str(fs.makeQualified(root).toString()).rstrip("/") + "/"
        found, listing = [], fs.listFiles(root, True)
        while listing.hasNext():
            full = str(listing.next().getPath().toString())
            if all(_visible(part) for part in full.removeprefix(prefix).split("/")):
                found.append(full)
        return sorted(found)

    def head(self, uri: str, size: int) -> bytes:
        fs, path = self._fs(uri)
        stream = fs.open(path)
        try:
            return bytes(stream.readNBytes(size))
        finally:
            stream.close()

    def parquet_rows(self, uri: str) -> int:
        return int(self.spark.read.parquet(uri).count())  # Spark counts from the footers


_LOCAL = _LocalFiles()


def score_batches(
    batches: Iterator[Any],
    *,
    archive: str,
    names: list[str],
    allow_out_of_range: bool,
    decimal: str,
    keep: str,
    refused: Any = None,
    interval: float | None = None,
) -> Iterator[Any]:
    """In an executor: check each Arrow batch; with `keep="valid"`, score the valid rows and
    yield them with `prediction` (and the interval's bounds when one is asked), adding the
    number of the others to the `refused` accumulator; with `keep="invalid"`, yield the failed
    rows with their `problems`."""
    import pyarrow as pa

    from winequality.io.reader import validate_table

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
            assert scorer is not None
            prediction = scorer.predict(checked.features[good])
            columns, names_out = [prediction], ["prediction"]
            if interval is not None:
                calibrated = scorer.model.intervals
                assert calibrated is not None  # (checked on the driver before any task)
                columns += calibrated.bounds(prediction, interval)
                names_out += intervals.bound_names(interval)
            yield pa.RecordBatch.from_arrays(
                [*scored.columns, *(pa.array(c, type=pa.float64()) for c in columns)],
                names=[*batch.schema.names, *names_out],
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

        from winequality.scoring import load_scorer

        folder = Path(tempfile.mkdtemp(prefix="winequality-model-"))
        with zipfile.ZipFile(SparkFiles.get(archive)) as bundle:
            bundle.extractall(folder)
        scorer = _SCORERS[archive] = load_scorer(str(folder))
    return scorer


def _checked_model_archive(
    model_uri: str, tracking_uri: str | None, folder: Path, interval: float | None
) -> tuple[Path, float | None]:
    """The model folder, downloaded and loaded once on the driver (so a bad URI or an
    interval level the model lacks fails before any task), zipped for `addFile`; and the
    calibrated level asked for."""
    from winequality.scoring import load_scorer

    local = Path(model_uri).expanduser()
    if not local.is_dir():
        import mlflow

        from winequality import tracking

        store = tracking.connect(tracking_uri, create=False)
        try:
            with tracking.activated(store):  # `models:/` resolves through the global URI
                local = Path(
                    mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder / "model"))
                )
        except Exception as exc:
            from winequality.errors import ModelLoadError

            raise ModelLoadError(f"cannot load model {model_uri}: {first_line(exc)}") from exc
    scorer = load_scorer(str(local))  # every check the batch path makes, on the driver
    level = intervals.asked_level(scorer.model.intervals, interval, model_uri)
    archive = folder / f"winequality-model-{os.getpid()}-{abs(hash(model_uri)):x}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(local))
    return archive, level
