"""Metrics and evaluation protocols.

Metrics are the tutorial's (RMSE, MAE, R2) plus those of Cortez et al. 2009, the data's paper:
the share of predictions within a tolerance T of the true score (T = 0.25, 0.5, 1.0). Their
MAD (mean absolute deviation) is the same number as MAE, so it is logged once, as `mae`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from winequality.errors import ParameterError

if TYPE_CHECKING:  # pandas is imported where it is used, so that importing this is cheap
    import pandas as pd

__all__ = [
    "PROTOCOLS",
    "TOLERANCES",
    "CVResult",
    "Folds",
    "Protocol",
    "cross_validate",
    "duplicate_groups",
    "feature_importance",
    "holdout_split",
    "make_folds",
    "plot_importance",
    "plot_predictions",
    "plot_search",
    "regression_metrics",
    "twins_in",
    "warm_up_plots",
    "write_report",
]

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


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------

Protocol = Literal["grouped", "random", "split"]
PROTOCOLS: dict[str, str] = {
    "grouped": "repeated K-fold with exact duplicate rows kept in the same fold (honest)",
    "random": "repeated plain K-fold (copies of one wine can sit on both sides; as published)",
    "split": "the tutorial's single shuffled 75/25 split",
}
Folds = list[tuple[np.ndarray, np.ndarray]]


def duplicate_groups(frame: pd.DataFrame) -> np.ndarray:
    """One group id per distinct row: exact duplicates share an id."""
    import pandas as pd

    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return np.unique(hashes, return_inverse=True)[1]


def make_folds(
    frame: pd.DataFrame,
    protocol: Protocol = "grouped",
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 40,
    test_size: float = 0.25,
) -> Folds:
    """Train/validation index pairs for a protocol; the same seed gives the same folds."""
    from sklearn.model_selection import GroupKFold, KFold, train_test_split

    positions = np.arange(len(frame))
    if protocol == "split":
        train, test = train_test_split(positions, test_size=test_size, random_state=seed)
        return [(np.sort(train), np.sort(test))]
    if folds < 2:
        raise ParameterError(f"need at least 2 folds, got {folds}")
    groups = duplicate_groups(frame)
    result: Folds = []
    for repeat in range(repeats):
        if protocol == "grouped":
            splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
            result += list(splitter.split(positions, groups=groups))
        elif protocol == "random":
            result += list(KFold(folds, shuffle=True, random_state=seed + repeat).split(positions))
        else:
            raise ParameterError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
    return result


def holdout_split(
    frame: pd.DataFrame, test_size: float = 0.25, seed: int = 40
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded train/test split in which no wine sits on both sides.

    Exact duplicate rows form one group and go to the same side, so every test row is a wine
    the model never saw (the tutorial's random split puts twins of 95 of its 400 test rows in
    training, where a flexible model memorises them).
    """
    from sklearn.model_selection import GroupShuffleSplit

    if not 0.0 < test_size < 1.0:
        raise ParameterError(f"test_size must be within (0, 1), got {test_size}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(frame, groups=duplicate_groups(frame)))
    return frame.iloc[np.sort(train)], frame.iloc[np.sort(test)]


def twins_in(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """A boolean mask over `test`: True where the row has an exact twin in `train`."""
    import pandas as pd

    seen = set(pd.util.hash_pandas_object(train, index=False).to_numpy().tolist())
    hashes = pd.util.hash_pandas_object(test, index=False).to_numpy()
    return np.fromiter((h in seen for h in hashes.tolist()), dtype=bool, count=len(hashes))


@dataclass(frozen=True)
class CVResult:
    per_fold: list[dict[str, float]]

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(np.mean([f[k] for f in self.per_fold])) for k in self.per_fold[0]}

    @property
    def std(self) -> dict[str, float]:
        return {k: float(np.std([f[k] for f in self.per_fold])) for k in self.per_fold[0]}

    def flat(self) -> dict[str, float]:
        """`cv_rmse`, `cv_rmse_std`, … for logging."""
        out = {f"cv_{k}": v for k, v in self.mean.items()}
        out.update({f"cv_{k}_std": v for k, v in self.std.items()})
        return out


def cross_validate(
    make_estimator: Callable[[], Any],
    features: pd.DataFrame | np.ndarray,
    target: pd.Series | np.ndarray,
    folds: Folds,
) -> CVResult:
    """Fit a fresh estimator per fold and score it on the held-out part of that fold."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from extreme search corners
        for train_idx, valid_idx in folds:
            estimator = make_estimator()
            estimator.fit(x[train_idx], y[train_idx])
            scores.append(regression_metrics(y[valid_idx], estimator.predict(x[valid_idx])))
    return CVResult(scores)


# ---------------------------------------------------------------------------------------------
# Plots and report (artifacts of a run)
# ---------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def warm_up_plots() -> None:
    """Import the plotting stack ahead of time (it costs about half a second)."""
    _pyplot()


def plot_predictions(actual: np.ndarray, predicted: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(actual))
    axes[0].scatter(actual + jitter, predicted, s=8, alpha=0.5)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    axes[0].plot([low, high], [low, high], color="black", linewidth=1)
    axes[0].set(
        xlabel="actual quality (jittered)",
        ylabel="predicted quality",
        title="Predicted vs actual (held-out)",
    )
    levels = sorted(np.unique(actual))
    residuals = [predicted[actual == q] - q for q in levels]
    axes[1].boxplot(residuals, tick_labels=[str(int(q)) for q in levels])
    axes[1].axhline(0, color="black", linewidth=1)
    axes[1].set(
        xlabel="actual quality",
        ylabel="residual (predicted − actual)",
        title="Residuals by quality",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def feature_importance(
    estimator: Any, features: pd.DataFrame, target: np.ndarray
) -> tuple[dict[str, float], str]:
    """Coefficients on standardised features for linear models, else permutation importance."""
    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    names = list(features.columns)
    if hasattr(last, "coef_"):
        coef = np.ravel(last.coef_)
        scaled = hasattr(estimator, "steps") and len(estimator.steps) > 1
        if not scaled:  # express per standard deviation so features compare
            coef = coef * features.to_numpy().std(axis=0)
        return dict(zip(names, coef.tolist(), strict=True)), "coefficient (per std of feature)"
    from sklearn.inspection import permutation_importance

    result = permutation_importance(
        estimator,
        features,
        target,
        n_repeats=5,
        random_state=0,
        scoring="neg_root_mean_squared_error",
    )
    return dict(
        zip(names, result.importances_mean.tolist(), strict=True)
    ), "permutation importance (RMSE increase)"


def plot_importance(importance: dict[str, float], label: str, path: Path) -> Path:
    plt = _pyplot()
    order = sorted(importance, key=lambda k: abs(importance[k]))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.barh(order, [importance[k] for k in order])
    axes.axvline(0, color="black", linewidth=1)
    axes.set(xlabel=label, title="What drives the prediction")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_search(
    params: list[dict[str, float]], scores: list[float], x: str, y: str, path: Path
) -> Path:
    """CV score over two hyperparameters (log x axis), one dot per trial."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    points = axes.scatter(
        [p[x] for p in params], [p[y] for p in params], c=scores, cmap="viridis_r", s=30
    )
    axes.set_xscale("log")
    axes.set(xlabel=x, ylabel=y, title="CV RMSE across the search")
    figure.colorbar(points, label="CV RMSE")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(
    path: Path,
    *,
    title: str,
    protocol: str,
    cv: CVResult | None,
    test: dict[str, float],
    params: dict[str, Any],
    plots: list[Path],
) -> Path:
    lines = [f"# {title}", "", f"**Protocol:** {protocol}", ""]
    if params:
        lines += ["**Parameters:** " + ", ".join(f"`{k}={v}`" for k, v in params.items()), ""]
    lines += ["| metric | CV mean ± std | held-out test |", "|---|---|---|"]
    for key, value in test.items():
        cv_text = f"{cv.mean[key]:.4f} ± {cv.std[key]:.4f}" if cv else "–"
        lines.append(f"| {key} | {cv_text} | {value:.4f} |")
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(lines) + "\n")
    return path
