"""The model registry: versions, the `champion` gate, listing.

A new version becomes `champion` only if it beats the current champion on the *same* held-out
rows: the champion is reloaded and re-scored on the caller's test frame, so a change of data or
of protocol cannot make an old number look better or worse than it is. Otherwise the version
becomes `challenger`, and the decision says why. Which metric decides is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MODEL_NAME = "wine-quality"
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    name: str
    version: str
    alias: str  # champion or challenger
    score: float  # the new version's metric on the held-out rows
    previous_version: str | None
    previous_score: float | None
    reason: str


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: list[str]
    run_id: str | None
    created: int
    tags: dict[str, str]


def register(
    model_uri: str, name: str = DEFAULT_MODEL_NAME, tags: dict[str, str] | None = None
) -> str:
    """Register a logged model as a new version of `name`; returns the version number."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    return str(version.version)


def gate(
    name: str,
    version: str,
    score: float,
    test_features: np.ndarray,
    test_target: np.ndarray,
    *,
    metric: str = "rmse",
    force: bool = False,
    tracking_uri: str | None = None,
) -> Decision:
    """Give `version` the champion alias if it beats the champion on the same rows (lower wins)."""
    import mlflow

    from winequality.evaluate import regression_metrics
    from winequality.predict import load_scorer

    client = mlflow.MlflowClient()
    current = _alias_version(client, name, CHAMPION)
    previous_score = None
    if current is not None and current != version:
        champion = load_scorer(f"models:/{name}@{CHAMPION}", tracking_uri)
        previous_score = regression_metrics(test_target, champion.predict(test_features))[metric]
    if current is None:
        alias, reason = CHAMPION, "first version: no champion yet"
    elif current == version:
        alias, reason = CHAMPION, "already the champion"
    elif force:
        alias, reason = (
            CHAMPION,
            (
                f"--force: replaces v{current} ({metric} "
                f"{previous_score:.4f}) regardless of {metric} {score:.4f}"
            ),
        )
    elif previous_score is not None and score < previous_score:
        alias, reason = (
            CHAMPION,
            (
                f"{metric} {score:.4f} beats champion v{current} "
                f"({previous_score:.4f}) on the same held-out rows"
            ),
        )
    else:
        alias, reason = (
            CHALLENGER,
            (
                f"{metric} {score:.4f} does not beat champion v{current} "
                f"({previous_score:.4f}) on the same held-out rows"
            ),
        )
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "winequality.gate", reason)
    return Decision(
        name, version, alias, score, current if current != version else None, previous_score, reason
    )


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def list_versions(name: str = DEFAULT_MODEL_NAME) -> list[VersionInfo]:
    """Every version of a registered model, newest first, with aliases and tags (metrics)."""
    import mlflow

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except Exception:
        return []
    return sorted(
        (
            VersionInfo(
                str(v.version),
                sorted(aliases.get(str(v.version), [])),
                v.run_id,
                int(v.creation_timestamp or 0),
                dict(v.tags),
            )
            for v in versions
        ),
        key=lambda info: int(info.version),
        reverse=True,
    )
