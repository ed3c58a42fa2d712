"""Metrics and evaluation protocols.

Metrics are the seed's (RMSE, MAE, R2) plus those of Cortez et al. 2009, the data's paper:
the share of predictions within a tolerance T of the true score (T = 0.25, 0.5, 1.0). Their
MAD (mean absolute deviation) is the same number as MAE, so it is logged once, as `mae`.
"""

from __future__ import annotations

import numpy as np

TOLERANCES = (0.25, 0.5, 1.0)


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R2 and accuracy within each tolerance; inputs are 1-D of equal length."""
    actual = np.asarray(actual, dtype=float).ravel()
    predicted = np.asarray(predicted, dtype=float).ravel()
    if actual.shape != predicted.shape or actual.size == 0:
        raise ValueError(
            f"need two equal, non-empty vectors, got {actual.shape} and {predicted.shape}"
        )
    error = predicted - actual
    total = float(np.sum((actual - actual.mean()) ** 2))
    metrics = {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - float(np.sum(error**2)) / total if total > 0 else float("nan"),
    }
    for tolerance in TOLERANCES:
        metrics[f"accuracy_within_{tolerance:g}"] = float(np.mean(np.abs(error) <= tolerance))
    return metrics
