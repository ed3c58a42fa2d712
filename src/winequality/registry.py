"""The model registry: versions, the `champion` gate, listing.

A new version becomes `champion` only if it beats the current champion on the *same* held-out
rows: the champion is reloaded and re-scored on the caller's test frame, so a change of data or
of protocol cannot make an old number look better or worse than it is. Otherwise the version
becomes `challenger`, and the decision says why. Which metric decides is the caller's.

`decide` is the rule, a pure function; `gate` gathers what it needs (the current champion and
its score now) and applies the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from winequality import tracking
from winequality.errors import NotFoundError

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_MODEL_NAME",
    "GATE_TAG",
    "Decision",
    "RegistryUri",
    "VersionInfo",
    "alias_version",
    "decide",
    "gate",
    "list_versions",
    "register",
    "registered_from",
    "version_holding",
]

DEFAULT_MODEL_NAME = "wine-quality"
CHAMPION, CHALLENGER = "champion", "challenger"
GATE_TAG = "winequality.gate"


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
    model_uri: str,
    name: str = DEFAULT_MODEL_NAME,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Register a logged model (`models:/m-…`) as a new version of `name`; its number.

    Through the client API: `mlflow.register_model` prints to stderr on every call.
    """
    from mlflow.exceptions import MlflowException

    uri = tracking.resolve_uri(tracking_uri)
    client = tracking.client(uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    # MLflow's SQL registry looks the logged model up through the process-wide URI, whatever
    # the client it was called on says (a TODO in its sqlalchemy_store): activate it.
    with tracking.activated(uri):
        version = client.create_model_version(name, model_uri, tags=tags, model_id=model_id)
    return str(version.version)


def decide(
    name: str,
    version: str,
    score: float,
    champion: str | None,
    champion_score: float | None,
    *,
    metric: str = "rmse",
    force: bool = False,
) -> Decision:
    """The gate's rule: lower `metric` wins; the first version and `force` win outright."""
    if champion is None:
        alias, reason = CHAMPION, "first version: no champion yet"
    elif champion == version:
        alias, reason = CHAMPION, "already the champion"
    elif champion_score is None:
        raise ValueError("a champion to beat needs its score")
    elif force:
        alias = CHAMPION
        reason = (
            f"--force: replaces v{champion} ({metric} {champion_score:.4f}) "
            f"regardless of {metric} {score:.4f}"
        )
    elif score < champion_score:
        alias = CHAMPION
        reason = (
            f"{metric} {score:.4f} beats champion v{champion} ({champion_score:.4f}) "
            f"on the same held-out rows"
        )
    else:
        alias = CHALLENGER
        reason = (
            f"{metric} {score:.4f} does not beat champion v{champion} "
            f"({champion_score:.4f}) on the same held-out rows"
        )
    previous = champion if champion != version else None
    return Decision(name, version, alias, score, previous, champion_score, reason)


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
    """Re-score the current champion on the same rows, decide, and set the alias and tag."""
    from winequality.evaluate import regression_metrics
    from winequality.scoring import load_scorer

    client = tracking.client(tracking_uri)
    champion = alias_version(client, name, CHAMPION)
    champion_score = None
    if champion is not None and champion != version:
        scorer = load_scorer(f"models:/{name}@{CHAMPION}", tracking_uri)
        champion_score = regression_metrics(test_target, scorer.predict(test_features))[metric]
    decision = decide(name, version, score, champion, champion_score, metric=metric, force=force)
    client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, GATE_TAG, decision.reason)
    return decision


@dataclass(frozen=True)
class RegistryUri:
    """`models:/name@alias` or `models:/name/version`, taken apart."""

    name: str
    alias: str | None
    version: str | None

    @classmethod
    def parse(cls, uri: str) -> RegistryUri | None:
        """None for URIs that name no registered model (runs:/, models:/m-…, folders)."""
        if not uri.startswith("models:/"):
            return None
        rest = uri[len("models:/") :].rstrip("/")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            return cls(name, alias, None)
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return cls(name, None, version)
        return None


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points to, or None if the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_holding(client: Any, name: str, model_id: str) -> str | None:
    """The (newest) version of `name` registered from the logged model `model_id`, if any."""
    held = [int(v.version) for v in _versions_of(client, name) if registered_from(v) == model_id]
    return str(max(held)) if held else None


def registered_from(version: Any) -> str | None:
    """The id of the logged model a model version was registered from, when it says (MLflow
    fills `model_id` on some stores; `source` is `models:/<model_id>` when registered from one);
    None for versions that name no logged model (MLflow 2's run artifacts)."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(getattr(version, "source", "") or "")
    if source.startswith("models:/m-") and source.count("/") == 1:
        return source.removeprefix("models:/")
    return None


def _versions_of(client: Any, name: str) -> list[Any]:
    """Every version of `name`, whatever quotes the name holds (it is never pasted raw)."""
    for quote in ("'", '"'):
        if quote not in name:
            return list(client.search_model_versions(f"name = {quote}{name}{quote}"))
    return [v for v in client.search_model_versions(max_results=200_000) if v.name == name]


def list_versions(
    name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None
) -> list[VersionInfo]:
    """Every version of a registered model, newest first, with aliases and tags (metrics).

    Raises NotFoundError naming the store searched if there is no such model. Only reads: a
    missing local store is reported, not created.
    """
    from mlflow.exceptions import MlflowException

    uri = tracking.connect(tracking_uri, create=False)
    client = tracking.client(uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NotFoundError(
            f"no registered model named {name!r} in {tracking.describe(uri)}; register one with "
            f"`winequality sweep`, or point at another store with --tracking-uri "
            f"(or MLFLOW_TRACKING_URI)"
        ) from None
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    versions = _versions_of(client, name)
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
