"""A loaded model ready to score validated matrices: the one loader that serving, batch
scoring, Spark and the registry's gate share.

`load_scorer(uri)` loads any model URI through `logged_model.load` (signature checked, skops
with our allow-list). Linear pipelines are folded into one weight vector, so scoring a request
costs a dot product. Knows nothing about files or HTTP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from winequality import logged_model, schema, tracking
from winequality.logged_model import LoadedModel

__all__ = ["Scorer", "fold_linear", "load_scorer"]


@dataclass(frozen=True)
class Scorer:
    """A loaded wine-quality model, ready to score validated (n, 11) float64 matrices."""

    model: LoadedModel
    weights: np.ndarray | None = None  # set when the pipeline folds into x @ w + b
    bias: float = 0.0

    @classmethod
    def of(cls, model: LoadedModel) -> Scorer:
        weights, bias = fold_linear(model.estimator) or (None, 0.0)
        return cls(model, weights, bias)

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.weights is not None:
            scores: np.ndarray = features @ self.weights + self.bias
            return scores
        import sklearn

        with warnings.catch_warnings(), sklearn.config_context(assume_finite=True):
            # fitted on a named frame; the matrix is already in schema order and validated
            warnings.simplefilter("ignore", UserWarning)
            predicted = np.asarray(self.model.estimator.predict(features), dtype=np.float64)
            return predicted.ravel()

    def metadata(self) -> dict[str, Any]:
        model, estimator = self.model, self.model.estimator
        example = None
        if model.input_example is not None:
            example = {
                "columns": list(model.input_example.columns),
                "data": model.input_example.to_numpy().tolist(),
            }
        steps = getattr(estimator, "steps", None)
        return {
            "model_uri": model.uri,
            "run_id": model.run_id,
            "model_id": model.model_id,
            "estimator": type(estimator).__name__
            + (f"({', '.join(n for n, _ in steps)})" if steps else ""),
            "signature": model.signature,
            "input_example": example,
            # the levels `params`/`parameters` may ask bounds at (none: logged before intervals)
            "interval_levels": list(model.intervals.levels) if model.intervals else [],
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

    store = None
    if not Path(model_uri).expanduser().is_dir():  # registry and run URIs need the store
        store = tracking.connect(tracking_uri, create=False)
    return Scorer.of(logged_model.load(model_uri, store))  # a missing one: what the store has


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
