"""Estimator factories: every model is a scikit-learn Pipeline that takes the 11 raw features.

Scaling, when a family needs it, lives inside the pipeline, so the logged model takes raw
features and its signature never changes. Logs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from winequality.errors import ParameterError

if TYPE_CHECKING:  # scikit-learn is imported by the builders, so that importing this is cheap
    from sklearn.pipeline import Pipeline

__all__ = [
    "FAMILIES",
    "RANDOM_STATE",
    "Family",
    "elasticnet",
    "family",
]

RANDOM_STATE = 42  # the tutorial's ElasticNet(random_state=42)


def elasticnet(
    alpha: float = 0.7,
    l1_ratio: float = 0.7,
    *,
    scale: bool = False,
    random_state: int = RANDOM_STATE,
) -> Pipeline:
    """The tutorial's ElasticNet; `scale=True` standardises features first (inside the pipeline).

    alpha > 0 is the penalty strength, l1_ratio in [0, 1] mixes L1 (1.0) and L2 (0.0).
    """
    if not alpha > 0:
        raise ParameterError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ParameterError(f"l1_ratio must be within [0, 1], got {l1_ratio}")
    from sklearn.linear_model import ElasticNet
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[tuple[str, Any]] = [("scale", StandardScaler())] if scale else []
    steps.append(
        ("elasticnet", ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=random_state))
    )
    return Pipeline(steps)


@dataclass(frozen=True)
class Family:
    """A model family: a factory from hyperparameters and a search space over them."""

    name: str
    build: Callable[[dict[str, Any]], Pipeline]
    suggest: Callable[[Any], dict[str, Any]]  # an Optuna trial -> hyperparameters
    grid: dict[str, list[Any]]  # for --grid
    axes: tuple[str, str]  # the two hyperparameters the sweep plot shows


def _elasticnet(p: dict[str, Any]) -> Pipeline:
    return elasticnet(p["alpha"], p["l1_ratio"], scale=True)


def _svr(p: dict[str, Any]) -> Pipeline:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("svr", SVR(C=p["C"], gamma=p["gamma"], epsilon=p["epsilon"])),
        ]
    )


def _trees(step: str) -> Callable[[dict[str, Any]], Pipeline]:
    """Random forest ("forest") or extra trees ("trees"): same knobs, another way to split."""

    def build(p: dict[str, Any]) -> Pipeline:
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
        from sklearn.pipeline import Pipeline

        cls = RandomForestRegressor if step == "forest" else ExtraTreesRegressor
        return Pipeline(
            [
                (
                    step,
                    cls(
                        n_estimators=p["n_estimators"],
                        max_features=p["max_features"],
                        min_samples_leaf=p["min_samples_leaf"],
                        random_state=RANDOM_STATE,
                        n_jobs=1,
                    ),
                )
            ]
        )

    return build


def _suggest_trees(t: Any) -> dict[str, Any]:
    return {
        "n_estimators": t.suggest_int("n_estimators", 100, 400, step=50),
        "max_features": t.suggest_float("max_features", 0.2, 1.0),
        "min_samples_leaf": t.suggest_int("min_samples_leaf", 1, 10),
    }


TREES_GRID: dict[str, list[Any]] = {
    "n_estimators": [200],
    "max_features": [0.3, 0.5, 0.7],
    "min_samples_leaf": [1, 2, 5],
}


def _hist_gradient_boosting(p: dict[str, Any]) -> Pipeline:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            (
                "boosting",
                HistGradientBoostingRegressor(
                    learning_rate=p["learning_rate"],
                    max_leaf_nodes=p["max_leaf_nodes"],
                    min_samples_leaf=p["min_samples_leaf"],
                    l2_regularization=p["l2_regularization"],
                    max_iter=300,
                    early_stopping=False,
                    random_state=RANDOM_STATE,
                ),
            )
        ]
    )


FAMILIES: dict[str, Family] = {
    "elasticnet": Family(
        "elasticnet",
        _elasticnet,
        lambda t: {
            "alpha": t.suggest_float("alpha", 1e-4, 10.0, log=True),
            "l1_ratio": t.suggest_float("l1_ratio", 0.0, 1.0),
        },
        {
            "alpha": [float(a) for a in np.logspace(-4, 1, 10)],
            "l1_ratio": [0.0, 0.25, 0.5, 0.75, 1.0],
        },
        ("alpha", "l1_ratio"),
    ),
    "svr": Family(
        "svr",
        _svr,
        lambda t: {
            "C": t.suggest_float("C", 0.1, 100.0, log=True),
            "gamma": t.suggest_float("gamma", 1e-3, 1.0, log=True),
            "epsilon": t.suggest_float("epsilon", 0.01, 1.0),
        },
        {"C": [0.3, 1.0, 3.0, 10.0], "gamma": [0.01, 0.03, 0.1, 0.3], "epsilon": [0.1, 0.5]},
        ("C", "gamma"),
    ),
    "random-forest": Family(
        "random-forest",
        _trees("forest"),
        _suggest_trees,
        TREES_GRID,
        ("max_features", "min_samples_leaf"),
    ),
    "extra-trees": Family(
        "extra-trees",
        _trees("trees"),
        _suggest_trees,
        TREES_GRID,
        ("max_features", "min_samples_leaf"),
    ),
    "hist-gradient-boosting": Family(
        "hist-gradient-boosting",
        _hist_gradient_boosting,
        lambda t: {
            "learning_rate": t.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_leaf_nodes": t.suggest_int("max_leaf_nodes", 8, 64),
            "min_samples_leaf": t.suggest_int("min_samples_leaf", 5, 50),
            "l2_regularization": t.suggest_float("l2_regularization", 1e-6, 1.0, log=True),
        },
        {
            "learning_rate": [0.03, 0.1],
            "max_leaf_nodes": [15, 31],
            "min_samples_leaf": [10, 30],
            "l2_regularization": [1e-3, 1.0],
        },
        ("learning_rate", "max_leaf_nodes"),
    ),
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ParameterError(
            f"unknown model family {name!r}; choose from {', '.join(FAMILIES)}"
        ) from None
