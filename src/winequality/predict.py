"""Scoring: a loaded model ready for validated matrices, and batch scoring of files.

- `load_scorer(uri)` loads any model URI through `logged_model.load` (signature checked, skops
  with our allow-list). Linear pipelines are folded into one weight vector so a request costs a
  dot product.
- `predict_file(...)` reads a CSV/Parquet/JSON file in batches (`streaming`), validates and
  scores each, and writes the output atomically, or nothing; memory stays flat.

Knows nothing about HTTP.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import codecs, drift, logged_model, schema, streaming
from winequality.drift import Profile
from winequality.errors import ParameterError, SchemaError
from winequality.schema import FeatureIssue

__all__ = [
    "FLAG_COLUMN",
    "DriftResult",
    "PredictResult",
    "Scorer",
    "drift_file",
    "fold_linear",
    "load_scorer",
    "predict_file",
]


FLAG_COLUMN = "outside_training_range"


@dataclass(frozen=True)
class Scorer:
    """A loaded wine-quality model, ready to score validated (n, 11) float64 matrices."""

    model_uri: str
    estimator: Any
    run_id: str | None
    model_id: str | None
    signature: dict[str, Any]
    input_example: pd.DataFrame | None
    weights: np.ndarray | None = None  # set when the pipeline folds into x @ w + b
    bias: float = 0.0
    profile: Profile | None = None  # the training data's reference (drift, training range)

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.weights is not None:
            scores: np.ndarray = features @ self.weights + self.bias
            return scores
        import sklearn

        with warnings.catch_warnings(), sklearn.config_context(assume_finite=True):
            # fitted on a named frame; the matrix is already in schema order and validated
            warnings.simplefilter("ignore", UserWarning)
            predicted: np.ndarray = np.asarray(self.estimator.predict(features), dtype=np.float64)
            return predicted.ravel()

    def metadata(self) -> dict[str, Any]:
        example = None
        if self.input_example is not None:
            example = {
                "columns": list(self.input_example.columns),
                "data": self.input_example.to_numpy().tolist(),
            }
        return {
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "model_id": self.model_id,
            "estimator": type(self.estimator).__name__
            + (
                f"({', '.join(n for n, _ in self.estimator.steps)})"
                if hasattr(self.estimator, "steps")
                else ""
            ),
            "signature": self.signature,
            "input_example": example,
            "features": schema.feature_table(),
            "target": {
                "name": schema.TARGET.name,
                "description": schema.TARGET.description,
                "minimum": schema.TARGET.minimum,
                "maximum": schema.TARGET.maximum,
            },
        }


def load_scorer(model_uri: str, tracking_uri: str | None = None) -> Scorer:
    """Resolve `runs:/…`, `models:/name@alias`, `models:/name/N`, `models:/m-…` or a folder."""
    import skops.io  # noqa: F401  (first: at import it scans every loaded module, MLflow's too)

    from winequality import tracking

    store = None
    if not Path(model_uri).expanduser().is_dir():  # registry and run URIs need the store
        store = tracking.connect(tracking_uri, create=False)
    loaded = logged_model.load(model_uri, store)
    weights, bias = fold_linear(loaded.estimator) or (None, 0.0)
    return Scorer(
        model_uri=model_uri,
        estimator=loaded.estimator,
        run_id=loaded.run_id,
        model_id=loaded.model_id,
        signature=loaded.signature,
        input_example=loaded.input_example,
        weights=weights,
        bias=bias,
        profile=loaded.profile,
    )


def fold_linear(estimator: Any) -> tuple[np.ndarray, float] | None:
    """Fold [StandardScaler] + linear model into (w, b) with x @ w + b equal to predict(x)."""
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    *before, last = steps
    if type(last) not in (ElasticNet, Lasso, Ridge, LinearRegression):
        return None
    weights = np.asarray(last.coef_, dtype=np.float64).ravel().copy()
    bias = float(np.ravel(last.intercept_)[0])
    for step in reversed(before):
        if type(step) is not StandardScaler:
            return None
        scale = step.scale_ if step.with_std and step.scale_ is not None else 1.0
        mean = step.mean_ if step.with_mean and step.mean_ is not None else 0.0
        weights = weights / scale
        bias -= float(np.dot(mean * np.ones_like(weights), weights))
    return weights, bias


# ---------------------------------------------------------------------------------------------
# Batch scoring of files
# ---------------------------------------------------------------------------------------------


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
) -> PredictResult:
    """Score a file; write `prediction` next to the inputs (or only next to `id_column`).

    The file is read, validated, scored and written batch by batch (`streaming`), so memory does
    not grow with its size. `input_path` may be `-` (standard input). With no `output_path`,
    nothing is written and the result holds the frame and predictions in memory. Raises
    SchemaError listing every problem of the whole file, and writes nothing, if any row is
    invalid; the model is not even loaded when the first batch is already invalid.

    Rows beyond the model's training range (its reference profile, with a margin) are scored
    and listed among the warnings; `flag_outside` also adds a boolean column
    `outside_training_range`.
    """
    source = streaming.open_input(input_path, allow_out_of_range=allow_out_of_range)
    if id_column is not None and id_column not in source.names:
        raise SchemaError(
            [FeatureIssue("missing_column", id_column, "the --id-column is not in the input")],
            what=source.what,
        )
    if output_path == codecs.STDIO:
        output_path = None
    if output_path is not None:
        codecs.media_type_for(output_path)  # refuse an unknown output type before reading
    run = _StreamRun(
        source, model_uri, tracking_uri, id_column, output_path, on_progress, flag_outside
    )
    types: dict[str, Any] = {}
    while True:
        try:
            return run.once(types)
        except streaming.Retype as again:  # a column needs another type: read it again
            types = again.types


@dataclass
class _StreamRun:
    source: streaming.Input
    model_uri: str
    tracking_uri: str | None
    id_column: str | None
    output_path: Path | None
    on_progress: Progress | None
    flag_outside: bool = False
    scorer: Scorer | None = None  # loaded at the first valid batch, kept across re-reads

    def _training_range(
        self, table: Any, batch: streaming.Batch, problems: streaming.Problems
    ) -> Any:
        """Warn about (and optionally flag) rows beyond what the model was trained on."""
        import pyarrow as pa

        assert self.scorer is not None
        assert self.scorer.profile is not None
        features = batch.validation.features
        outside = drift.outside_training(self.scorer.profile, features)
        for issue in _outside_issues(self.scorer.profile, outside, features):
            problems.add_warning(issue, batch.start)
        if self.flag_outside:
            table = table.append_column(FLAG_COLUMN, pa.array(outside.any(axis=1)))
        return table

    def once(self, types: dict[str, Any]) -> PredictResult:
        import pyarrow as pa

        source, problems = self.source, streaming.Problems()
        kept: list[pa.Table] = []
        rows = 0
        with contextlib.ExitStack() as stack:
            writer = (
                stack.enter_context(streaming.open_writer(self.output_path))
                if self.output_path is not None
                else None
            )
            for batch in source.batches(types):
                problems.add(batch.validation, batch.start)
                rows = batch.start + batch.columns.num_rows
                if problems.ok:  # after the first problem, only check the rest
                    if self.scorer is None:
                        self.scorer = load_scorer(self.model_uri, self.tracking_uri)
                    features = batch.validation.features
                    table = _output(batch, self.scorer.predict(features), self)
                    if self.scorer.profile is not None:
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


def _outside_issues(
    profile: Profile, outside: np.ndarray, features: np.ndarray
) -> list[FeatureIssue]:
    issues = []
    for j in np.flatnonzero(outside.any(axis=0)):
        feature = profile.features[j]
        rows = np.flatnonzero(outside[:, j])
        issues.append(
            FeatureIssue(
                "outside_training",
                feature.name,
                f"outside the model's training range [{feature.minimum:g}, "
                f"{feature.maximum:g}] (scored anyway)",
                tuple(rows.tolist()),
                tuple(features[rows[: schema.SAMPLE_VALUES], j].tolist()),
            )
        )
    return issues


def _output(batch: streaming.Batch, predictions: np.ndarray, run: _StreamRun) -> Any:
    """The batch's rows as written: the input's columns (or the id column) and `prediction`."""
    import pyarrow as pa

    table = batch.columns
    if run.output_path is None or codecs.media_type_for(run.output_path) != codecs.CSV:
        table = _features_as_numbers(table, batch.validation.features)
    if run.id_column is not None:
        table = table.select([run.source.names.index(run.id_column)])
    scores = pa.array(predictions, type=pa.float64())
    if "prediction" in table.column_names:  # an input column of that name is replaced in place
        return table.set_column(table.column_names.index("prediction"), "prediction", scores)
    return table.append_column("prediction", scores)


def _features_as_numbers(table: Any, features: np.ndarray) -> Any:
    """Feature columns read as text (CSV) become the checked float64 values: typed outputs
    (Parquet, JSON, a DataFrame) hold numbers, as the model's signature says."""
    import pyarrow as pa

    for j, name in enumerate(schema.FEATURE_NAMES):
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
    from winequality.errors import ModelLoadError

    source = streaming.open_input(input_path, allow_out_of_range=True)
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ParameterError(f"--plot {plot}: write a .png, .svg or .pdf")
    types: dict[str, Any] = {}
    while True:
        try:
            problems, parts, rows = streaming.Problems(), [], 0
            for batch in source.batches(types):
                problems.add(batch.validation, batch.start)
                rows = batch.start + batch.columns.num_rows
                if problems.ok:
                    parts.append(batch.validation.features)
            break
        except streaming.Retype as again:
            types = again.types
    source.finish(problems, rows)
    scorer = load_scorer(model_uri, tracking_uri)
    if scorer.profile is None:
        raise ModelLoadError(
            f"{model_uri} carries no reference profile of its training data (it was logged "
            "before winequality kept one); train or sweep again to compare batches with it"
        )
    features = np.concatenate(parts)
    report = drift.compare(scorer.profile, features)
    written = None
    if plot is not None:
        from winequality.data import atomic_write

        with atomic_write(plot) as partial:
            drift.plot(scorer.profile, features, report, partial, plot.suffix[1:].lower())
        written = plot
    return DriftResult(model_uri, rows, report, written)
