"""Batch scoring of files: read, validate and score in batches, write atomically or nothing.

`predict_file(...)` reads a CSV/Parquet/JSON file in batches (`io.reader`), validates and
scores each with the `scoring.Scorer`, and writes the output batch by batch (`io.writers`),
renamed onto the target only when every row passed; memory stays flat. `drift_file` compares
a file with a model's training profile. Knows nothing about HTTP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import drift, intervals
from winequality.errors import ModelLoadError, ParameterError, SchemaError
from winequality.io import files, reader, writers
from winequality.schema import FEATURE_NAMES, FeatureIssue
from winequality.scoring import Scorer, load_scorer

__all__ = [
    "FLAG_COLUMN",
    "DriftResult",
    "PredictResult",
    "drift_file",
    "predict_file",
]


FLAG_COLUMN = "outside_training_range"


@dataclass(frozen=True)
class PredictResult:
    rows: int
    warnings: list[FeatureIssue]
    predictions: np.ndarray | None = None  # kept only when nothing is written (in memory)
    frame: pd.DataFrame | None = None  # likewise: what would have been written
    row_label: str = "row"  # how warnings cite rows: "line" for CSV files, else 0-based "row"
    row_offset: int = 0


Progress = Callable[[int, int, int], None]  # (rows done, bytes read, bytes in all)


def predict_file(
    model_uri: str,
    input_path: Path,
    output_path: Path | None = None,
    *,
    id_column: str | None = None,
    allow_out_of_range: bool = False,
    tracking_uri: str | None = None,
    on_progress: Progress | None = None,
    flag_outside: bool = False,
    overwrite: bool = False,
    interval: float | None = None,
) -> PredictResult:
    """Score a file; write `prediction` next to the inputs (or only next to `id_column`).

    The file is read, validated, scored and written batch by batch (`io.reader`), so memory does
    not grow with its size. `input_path` may be `-` (standard input). With no `output_path`,
    nothing is written and the result holds the frame and predictions in memory. Raises
    SchemaError listing every problem of the whole file, and writes nothing, if any row is
    invalid; the model is not even loaded when the first batch is already invalid.

    Rows beyond the model's training range (its reference profile, with a margin) are scored
    and listed among the warnings; `flag_outside` also adds a boolean column
    `outside_training_range`. `interval` (a level the model was calibrated at, such as 0.9)
    adds its bounds, `lower_0.9` and `upper_0.9`, after `prediction`; a level it was not
    calibrated at is refused, naming those it was, before anything is written. An existing
    output is replaced only with `overwrite`.
    """
    source = reader.open_input(input_path, allow_out_of_range=allow_out_of_range)
    if id_column is not None and id_column not in source.names:
        raise SchemaError(
            [FeatureIssue("missing_column", id_column, "the --id-column is not in the input")],
            what=source.what,
        )
    if output_path == files.STDIO:
        output_path = None
    if output_path is not None:
        files.media_type_for(output_path)  # refuse an unknown output type before reading
        if output_path.exists() and not overwrite:
            raise ParameterError(
                f"{output_path} exists; choose another --output or pass --overwrite"
            )
    run = _StreamRun(
        source, model_uri, tracking_uri, id_column, output_path, on_progress, flag_outside,
        interval=interval,
    )  # fmt: skip
    return source.read(run.each_pass)


@dataclass
class _StreamRun:
    source: reader.Input
    model_uri: str
    tracking_uri: str | None
    id_column: str | None
    output_path: Path | None
    on_progress: Progress | None
    flag_outside: bool = False
    scorer: Scorer | None = None  # loaded at the first valid batch, kept across re-reads
    interval: float | None = None  # the level of the bounds to add (checked once loaded)

    def _training_range(self, table: Any, batch: reader.Batch, problems: reader.Problems) -> Any:
        """Warn about (and optionally flag) rows beyond what the model was trained on."""
        import pyarrow as pa

        assert self.scorer is not None
        profile = self.scorer.model.profile
        assert profile is not None
        features = batch.validation.features
        outside = drift.outside_training(profile, features)
        asked = self.interval is not None
        for issue in drift.outside_issues(profile, outside, features, interval=asked):
            problems.add_warning(issue, batch.start)
        if self.flag_outside:
            table = table.append_column(FLAG_COLUMN, pa.array(outside.any(axis=1)))
        return table

    def each_pass(self, batches: Iterator[reader.Batch]) -> PredictResult:
        """One read of the input: check every batch, score and write while all passed."""
        import pyarrow as pa

        source, problems = self.source, reader.Problems()
        kept: list[pa.Table] = []
        rows = 0
        with contextlib.ExitStack() as stack:
            writer = (
                stack.enter_context(writers.open_writer(self.output_path))
                if self.output_path is not None
                else None
            )
            for batch in batches:
                problems.add(batch.validation, batch.start)
                rows = batch.start + batch.columns.num_rows
                if problems.ok:  # after the first problem, only check the rest
                    if self.scorer is None:
                        self.scorer = load_scorer(self.model_uri, self.tracking_uri)
                        # refused before anything is written: a model without intervals,
                        # or a level it was not calibrated at (naming those it was)
                        self.interval = intervals.asked_level(
                            self.scorer.model.intervals, self.interval, self.model_uri
                        )  # (as the model writes it: 0.9000000001 is its 0.9)
                    features = batch.validation.features
                    table = _output(batch, self.scorer.predict(features), self)
                    if self.scorer.model.profile is not None:
                        table = self._training_range(table, batch, problems)
                    if writer is not None:
                        writer.write(table)
                    else:
                        kept.append(table)
                if self.on_progress is not None:
                    self.on_progress(rows, source.bytes_read(), source.size)
            warned = [w for w in source.finish(problems, rows) if w.column != self.id_column]
        if writer is not None:
            return PredictResult(rows, warned, row_label=source.row_label)
        frame = pa.concat_tables(kept).to_pandas() if kept else pd.DataFrame()
        predictions = frame["prediction"].to_numpy() if kept else np.empty(0)
        return PredictResult(rows, warned, predictions, frame, source.row_label)


def _output(batch: reader.Batch, predictions: np.ndarray, run: _StreamRun) -> Any:
    """The batch's rows as written: the input's columns (or the id column) and `prediction`."""
    import pyarrow as pa

    table = batch.columns
    if run.output_path is None or files.media_type_for(run.output_path) != files.CSV:
        table = _features_as_numbers(table, batch.validation.features)
    if run.id_column is not None:
        table = table.select([run.source.names.index(run.id_column)])
    scores = pa.array(predictions, type=pa.float64())
    if "prediction" in table.column_names:  # an input column of that name is replaced in place
        table = table.set_column(table.column_names.index("prediction"), "prediction", scores)
    else:
        table = table.append_column("prediction", scores)
    if run.interval is not None:
        assert run.scorer is not None
        assert run.scorer.model.intervals is not None  # (checked when it was loaded)
        bounds = run.scorer.model.intervals.bounds(predictions, run.interval)
        for name, values in zip(intervals.bound_names(run.interval), bounds, strict=True):
            column = pa.array(values, type=pa.float64())
            if name in table.column_names:  # as `prediction`: replaced in place
                table = table.set_column(table.column_names.index(name), name, column)
            else:
                table = table.append_column(name, column)
    return table


def _features_as_numbers(table: Any, features: np.ndarray) -> Any:
    """Feature columns read as text (CSV) become the checked float64 values: typed outputs
    (Parquet, JSON, a DataFrame) hold numbers, as the model's signature says."""
    import pyarrow as pa

    for j, name in enumerate(FEATURE_NAMES):
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            index = table.column_names.index(name)
            table = table.set_column(index, name, pa.array(features[:, j], type=pa.float64()))
    return table


# ---------------------------------------------------------------------------------------------
# Drift of a batch against the model's training data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftResult:
    model_uri: str
    rows: int
    features: list[drift.FeatureDrift]
    plot: Path | None

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.verdict == "drift"]

    @property
    def enough_rows(self) -> bool:
        """Whether there were rows enough for a verdict (the server waits for as many)."""
        return self.rows >= drift.MIN_DRIFT_ROWS


def drift_file(
    model_uri: str,
    input_path: Path,
    *,
    plot: Path | None = None,
    tracking_uri: str | None = None,
) -> DriftResult:
    """Compare a file of wines with the training data of `model_uri` (its reference profile):
    PSI, a two-sample Kolmogorov-Smirnov test and a verdict per feature, and optionally a plot.

    Raises SchemaError (the file's problems, as `predict` lists them) or ModelLoadError (no
    model, or a model logged without a reference profile)."""
    source = reader.open_input(input_path, allow_out_of_range=True)
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ParameterError(f"--plot {plot}: write a .png, .svg or .pdf")
    batch = source.check_all()
    profile = load_scorer(model_uri, tracking_uri).model.profile
    if profile is None:
        raise ModelLoadError(
            f"{model_uri} carries no reference profile of its training data (it was logged "
            "before winequality kept one); train or sweep again to compare batches with it"
        )
    if batch.rows < drift.MIN_DRIFT_ROWS:  # PSI on a handful of rows is noise: no verdict
        return DriftResult(model_uri, batch.rows, [], None)
    report = drift.compare(profile, batch.features)
    written = None
    if plot is not None:
        with files.atomic_write(plot) as partial:
            drift.plot(profile, batch.features, report, partial, plot.suffix[1:].lower())
        written = plot
    return DriftResult(model_uri, batch.rows, report, written)
