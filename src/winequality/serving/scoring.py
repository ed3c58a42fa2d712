"""What every protocol does once a request's features are checked: score them with the model
the request started on, say which rows lie beyond the training range, count what drift needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from winequality import drift
from winequality.intervals import asked_level
from winequality.schema import FEATURE_NAMES, FeatureIssue
from winequality.serving.follower import ServedModel
from winequality.serving.metrics import ServerMetrics

__all__ = ["MAX_WARNINGS", "Scored", "interval_bounds", "interval_level", "score"]

_PRINTABLE = re.compile(r"[^\x20-\x7e]")
MAX_WARNINGS = 100  # cells listed in an answer's warnings; the header counts the rows


@dataclass(frozen=True)
class Scored:
    predictions: np.ndarray
    outside: list[dict[str, Any]]  # cells beyond the training range (the first MAX_WARNINGS)
    header: dict[str, str]  # X-Model-Version, and X-Winequality-Warnings when there are any


def score(
    served: ServedModel,
    features: np.ndarray,
    warnings: list[FeatureIssue],
    metrics: ServerMetrics | None,
    interval: bool = False,
) -> Scored:
    predictions = served.scorer.predict(features)
    entries: list[dict[str, Any]] = []
    extra = ""
    outside = None
    profile = served.scorer.model.profile
    if profile is not None:
        outside = drift.outside_training(profile, features)
        if outside.any():
            issues = drift.outside_issues(profile, outside, features, interval=interval)
            entries = _entries(issues, features, outside)
            extra = f"{int(outside.any(axis=1).sum())} rows outside the training range"
        else:
            outside = None
    if metrics is not None:
        metrics.accepted(features, outside)
    return Scored(
        predictions,
        entries,
        {"X-Model-Version": served.version, **_warning_header(warnings, extra)},
    )


def _entries(
    issues: list[FeatureIssue], features: np.ndarray, outside: np.ndarray
) -> list[dict[str, Any]]:
    """The first MAX_WARNINGS cells beyond the training range, row by row, each with its value
    and its feature's warning."""
    reasons = {issue.column: issue.reason for issue in issues}
    rows, found = np.nonzero(outside)
    entries = []
    for row, j in zip(rows[:MAX_WARNINGS].tolist(), found[:MAX_WARNINGS].tolist(), strict=True):
        name = FEATURE_NAMES[j]
        entries.append(
            {"row": row, "column": name, "reason": reasons[name], "value": float(features[row, j])}
        )
    return entries


def _warning_header(issues: list[FeatureIssue], extra: str = "") -> dict[str, str]:
    texts = [i.describe() for i in issues[:5]] + ([extra] if extra else [])
    if not texts:
        return {}
    text = "; ".join(texts)
    # a header carries printable ASCII only: a column name from the body may hold anything
    return {"X-Winequality-Warnings": _PRINTABLE.sub("?", text)[:1000]}


def interval_level(served: ServedModel, asked: Any) -> float | None:
    """The calibrated level a request asks for (None: it asks none); ParameterError (400) for
    a level the model was not calibrated at, naming those it was, or a model without any."""
    return asked_level(served.scorer.model.intervals, asked, f"model version {served.version}")


def interval_bounds(
    served: ServedModel, predictions: np.ndarray, level: float
) -> dict[str, np.ndarray]:
    """The bounds of each prediction at `level`, under their names (lower_0.9, upper_0.9)."""
    intervals = served.scorer.model.intervals
    assert intervals is not None  # (interval_level checked it)
    return intervals.named_bounds(predictions, level)
