"""Estimator factories: every model is a scikit-learn Pipeline that takes the 11 raw features.

Scaling, when a family needs it, lives inside the pipeline, so the logged model takes raw
features and its signature never changes. Logs nothing.
"""

from __future__ import annotations

from typing import Any

from sklearn.linear_model import ElasticNet
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

RANDOM_STATE = 42  # the seed's ElasticNet(random_state=42)


def elasticnet(
    alpha: float = 0.7,
    l1_ratio: float = 0.7,
    *,
    scale: bool = False,
    random_state: int = RANDOM_STATE,
) -> Pipeline:
    """The seed's ElasticNet; `scale=True` standardises features first (inside the pipeline).

    alpha > 0 is the penalty strength, l1_ratio in [0, 1] mixes L1 (1.0) and L2 (0.0).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ValueError(f"l1_ratio must be within [0, 1], got {l1_ratio}")
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())] if scale else []
    steps.append(
        ("elasticnet", ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=random_state))
    )
    return Pipeline(steps)
