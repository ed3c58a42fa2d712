"""Scoring: a loaded model ready for validated matrices, and batch scoring of files.

- `load_scorer(uri)` loads any model URI through `logged_model.load` (signature checked, skops
  with our allow-list). Linear pipelines are folded into one weight vector so a request costs a
  dot product.
- `predict_file(...)` decodes a CSV/Parquet/JSON file with `codecs`, scores it, and writes the
  output atomically, or nothing.

Knows nothing about HTTP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import codecs, logged_model, schema
from winequality.errors import SchemaError
from winequality.schema import FeatureIssue

__all__ = [
    "PredictResult",
    "Scorer",
    "fold_linear",
    "load_scorer",
    "predict_file",
]


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
    predictions: np.ndarray
    warnings: list[FeatureIssue]
    frame: pd.DataFrame  # what was (or would be) written
    row_label: str = "row"  # how warnings cite rows: "line" for CSV files, else 0-based "row"
    row_offset: int = 0


def predict_file(
    model_uri: str,
    input_path: Path,
    output_path: Path | None = None,
    *,
    id_column: str | None = None,
    allow_out_of_range: bool = False,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Score a file; write `prediction` next to the inputs (or only next to `id_column`).

    `input_path` may be `-` (standard input). With no `output_path` (or `-`), nothing is
    written: the caller prints `frame`. Raises SchemaError listing every problem, and writes
    nothing, if any row is invalid.
    """
    decoded = codecs.decode_file(input_path, allow_out_of_range=allow_out_of_range)
    frame = decoded.frame
    assert frame is not None  # decode_file keeps the input's columns
    if id_column is not None and id_column not in frame.columns:
        raise SchemaError(
            [FeatureIssue("missing_column", id_column, "the --id-column is not in the input")],
            what=decoded.what,
        )
    decoded.raise_for_errors()
    if output_path == codecs.STDIO:
        output_path = None
    if output_path is not None:
        codecs.media_type_for(output_path)  # refuse an unknown output type before loading
    scorer = load_scorer(model_uri, tracking_uri)
    predictions = scorer.predict(decoded.validation.features)
    result = frame[[id_column]].copy() if id_column is not None else frame.copy()
    result["prediction"] = predictions
    if output_path is not None:
        codecs.write_file(result, output_path)
    warnings = [w for w in decoded.validation.warnings if w.column != id_column]
    return PredictResult(
        len(result), predictions, warnings, result, decoded.row_label, decoded.row_offset
    )
