"""The model registry: versions, the `champion` gate, listing.

A new version becomes `champion` only if it beats the current champion on the *same* held-out
rows: the champion is reloaded and re-scored on the caller's test frame, so a change of data or
of protocol cannot make an old number look better or worse than it is. Otherwise the version
becomes `challenger`, and the decision says why. Which metric decides is the caller's.

`decide` is the rule, a pure function; `gate` gathers what it needs (the current champion and
its score now) and applies the decision.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from winequality import tracking
from winequality.errors import NotFoundError, ParameterError, PromotionRefused, first_line
from winequality.tracking import CHALLENGER, CHAMPION, alias_version

if TYPE_CHECKING:
    from winequality.shadow_report import ShadowReport

__all__ = [
    "COVERAGE_LEVEL",
    "COVERAGE_TAG",
    "COVERAGE_TOLERANCE",
    "DATA_TAG",
    "DEFAULT_MODEL_NAME",
    "EVALUATION_TAGS",
    "FORCED_TAG",
    "GATE_TAG",
    "HISTORY_TAG",
    "HOLDOUT_TAG",
    "LIVE_TAG",
    "SEED_TAG",
    "TEST_SIZE_TAG",
    "Check",
    "Decision",
    "VersionInfo",
    "champion_history",
    "coverage_check",
    "decide",
    "evaluation_checks",
    "evaluation_tags",
    "gate",
    "list_versions",
    "live_check",
    "promote",
    "register",
    "register_logged",
    "registered_from",
    "resolved_version",
    "rollback",
    "standing",
    "version_holding",
]

DEFAULT_MODEL_NAME = "wine-quality"
GATE_TAG = "winequality.gate"
FORCED_TAG = "winequality.forced"  # on a version promoted past a failed check: the reason
HISTORY_TAG = "winequality.champions"  # on the registered model: who was champion when (JSON)
HISTORY_KEPT = 50  # entries (a tag holds a few thousand characters)
# What makes two versions' held-out numbers comparable: recorded on every version.
DATA_TAG, HOLDOUT_TAG = "winequality.data_sha256", "winequality.holdout"
SEED_TAG, TEST_SIZE_TAG = "winequality.split_seed", "winequality.test_size"
EVALUATION_TAGS = (DATA_TAG, HOLDOUT_TAG, SEED_TAG, TEST_SIZE_TAG)


# The gate's check on a version's intervals: held-out coverage at 0.9 within 4 points (about
# 2.7 standard errors on 400 rows: beyond sampling noise, the ranges do not keep their promise).
COVERAGE_LEVEL, COVERAGE_TOLERANCE = 0.9, 0.04
COVERAGE_TAG = "test_coverage_0.9"


def coverage_check(coverage: float | None) -> Check:
    """Whether a version's 0.9 intervals covered about 90 % of its held-out rows."""
    name = "intervals keep their promise"
    if coverage is None:
        return Check(name, True, "no intervals calibrated at 0.9 (not checked)")
    passed = round(abs(coverage - COVERAGE_LEVEL), 9) <= COVERAGE_TOLERANCE  # 0.86 passes
    return Check(
        name,
        passed,
        f"its 0.9 intervals covered {coverage:.1%} of the held-out rows, "
        + ("within" if passed else "more than")
        + f" {COVERAGE_TOLERANCE:.0%} of 90 %"
        + ("" if passed else ": its ranges do not say what they promise"),
    )


LIVE_TAG = "winequality.live_evidence"  # the shadow report a promotion was decided on (JSON)
LiveMargin = float | Literal["paired"]
MIN_LIVE_ROWS = 30  # joined rows a live comparison needs before it can pass


def live_check(
    report: ShadowReport,
    candidate: str,
    champion: str,
    margin: LiveMargin = 0.0,
    *,
    candidate_model: str | None = None,
    champion_model: str | None = None,
) -> Check:
    """Whether `candidate`, as the shadow of `champion`, was no worse on live rows whose true
    grade is known. The report must be about those versions and, when their logged models are
    given, those very models (a version number alone could be another registered model's).
    `margin`: the RMSE it may lose by (0: none), or "paired": refused only when the paired test
    says it is worse (its squared errors' mean difference has a 95 % interval above 0)."""
    name = "no worse on live rows"
    live = report.live
    if report.shadow_versions != (candidate,):
        seen = ", ".join(f"v{v}" for v in report.shadow_versions) or "none"
        return Check(name, False, f"the report's shadow was {seen}, not v{candidate}")
    if report.champion_versions != (champion,):
        seen = ", ".join(f"v{v}" for v in report.champion_versions)
        return Check(name, False, f"the report's champion was {seen}, not the champion v{champion}")
    for role, expected, seen_ids in (
        ("shadow", candidate_model, report.shadow_model_ids),
        ("champion", champion_model, report.champion_model_ids),
    ):
        if expected is not None and seen_ids != (expected,):
            return Check(
                name,
                False,
                f"the report's {role} was the logged model {', '.join(seen_ids) or 'unknown'}, "
                f"not {expected}: another model under the same version number",
            )
    if live is None:
        return Check(name, False, "the report has no true grades (shadow-report --truth FILE)")
    if live.rows < MIN_LIVE_ROWS:
        return Check(
            name, False, f"{live.rows} live rows with a true grade: too few to judge (at least "
            f"{MIN_LIVE_ROWS})",
        )  # fmt: skip
    head = (
        f"on {live.rows} live rows RMSE {live.shadow_rmse:.4f} against the champion's "
        f"{live.champion_rmse:.4f}"
    )
    if margin == "paired":
        low, high = live.mse_difference_ci95
        worse = low > 0
        verdict = (
            f"{head}; squared-error difference {live.mse_difference:+.4f} (95 % interval "
            f"{low:+.4f} .. {high:+.4f}, p = {live.p_value:.3g}): "
            + ("worse beyond the paired test" if worse else "not worse by the paired test")
        )
    else:
        worse = live.shadow_rmse > live.champion_rmse + margin
        verdict = f"{head} (margin {margin:g}): " + ("worse" if worse else "no worse")
    return Check(name, not worse, verdict)


def _live_summary(report: ShadowReport, margin: LiveMargin) -> str:
    """What a version records of the report it was promoted on (a tag holds a few KB)."""
    live = report.live
    summary = {
        "rows": report.rows,
        "requests": report.requests,
        "champion_versions": report.champion_versions,
        "shadow_versions": report.shadow_versions,
        "mean_abs_difference": report.mean_abs_difference,
        "margin": margin,
        "live": None
        if live is None
        else {
            "rows": live.rows,
            "champion_rmse": live.champion_rmse,
            "shadow_rmse": live.shadow_rmse,
            "mse_difference": live.mse_difference,
            "mse_difference_ci95": live.mse_difference_ci95,
            "p_value": live.p_value,
        },
    }
    return json.dumps(_no_nan(summary))


def _no_nan(value: Any) -> Any:
    """NaN (a test that could not be run) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


@dataclass(frozen=True)
class Check:
    """One named check of the gate, with its verdict in plain words."""

    name: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    name: str
    version: str
    alias: str  # champion or challenger
    score: float  # the new version's metric on the held-out rows
    previous_version: str | None
    previous_score: float | None
    reason: str
    checks: tuple[Check, ...] = ()  # what the gate looked at (a first version: its intervals)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: list[str]
    run_id: str | None
    created: int
    tags: dict[str, str]
    champion_periods: list[tuple[str, str | None]] = field(default_factory=list)  # since, until


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


def evaluation_tags(data_sha256: str, holdout: str, seed: int, test_size: float) -> dict[str, str]:
    """What a version's held-out numbers were measured on, as recorded on it (and on a run)."""
    return {
        DATA_TAG: data_sha256,
        HOLDOUT_TAG: holdout,
        SEED_TAG: str(seed),
        TEST_SIZE_TAG: repr(float(test_size)),
    }


def register_logged(
    model_uri: str, name: str = DEFAULT_MODEL_NAME, tracking_uri: str | None = None
) -> str:
    """Register a model `train` (or anything) logged, carrying over what its run recorded:
    how it was evaluated and its held-out metrics. No alias: `promote` decides."""
    client = tracking.client(tracking.connect(tracking_uri, create=False))
    if model_uri.startswith("models:/m-"):
        run_id = client.get_logged_model(model_uri.removeprefix("models:/")).source_run_id
    elif model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
    else:
        raise ParameterError(
            f"{model_uri}: register a logged model (models:/m-<id>, as train prints it) or a "
            f"run's model (runs:/<run_id>/model)"
        )
    run = client.get_run(run_id)
    tags = {t: run.data.tags[t] for t in EVALUATION_TAGS if t in run.data.tags}
    for metric in ("rmse", "mae", "r2"):  # train logs `rmse`, the sweep `test_rmse`
        value = run.data.metrics.get(f"test_{metric}", run.data.metrics.get(metric))
        if value is not None:
            tags[f"test_{metric}"] = f"{value:.6f}"
    if COVERAGE_TAG in run.data.metrics:
        tags[COVERAGE_TAG] = f"{run.data.metrics[COVERAGE_TAG]:.6f}"
    return register(model_uri, name, tags, tracking_uri)


def decide(
    name: str,
    version: str,
    score: float,
    champion: str | None,
    champion_score: float | None,
    *,
    metric: str = "rmse",
    force: bool = False,
    coverage: float | None = None,
) -> Decision:
    """The gate's rule: lower `metric` wins; the first version and `force` win outright. A
    challenger whose 0.9 intervals missed their coverage (`coverage_check`) does not win."""
    promise = coverage_check(coverage)
    if champion is None and not promise.passed and not force:
        alias, reason = CHALLENGER, f"{promise.name}: {promise.reason} (no champion yet)"
    elif champion is None:
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
    elif not promise.passed:
        alias, reason = CHALLENGER, f"{promise.name}: {promise.reason}"
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
    checks: tuple[Check, ...] = (promise,) if champion is None else ()
    if previous is not None:
        won = alias == CHAMPION and not force
        compared = reason if promise.passed else "not compared: its intervals failed their check"
        checks = (promise, Check("beats the champion", won, compared))
    return Decision(name, version, alias, score, previous, champion_score, reason, checks)


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
    coverage: float | None = None,
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
    decision = decide(
        name,
        version,
        score,
        champion,
        champion_score,
        metric=metric,
        force=force,
        coverage=coverage,
    )
    if decision.alias == CHAMPION and champion != version:
        _crown(client, name, version, "sweep --force" if force else "sweep")
    else:
        client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, GATE_TAG, decision.reason)
    return decision


# ---------------------------------------------------------------------------------------------
# Promotion by hand, rollback, and who was champion when
# ---------------------------------------------------------------------------------------------


def evaluation_checks(candidate: Any, champion: Any, metric: str = "rmse") -> tuple[Check, ...]:
    """The gate for a version promoted by hand: judged like the champion (the same data, split
    and seed, as recorded on both), and better on those held-out rows."""
    mine, theirs = candidate.tags, champion.tags
    differ = [t for t in EVALUATION_TAGS if mine.get(t) is None or mine.get(t) != theirs.get(t)]
    alike = Check(
        "same evaluation",
        not differ,
        "judged on the same data, split and seed"
        if not differ
        else f"v{candidate.version} and champion v{champion.version} were not judged alike "
        f"({', '.join(t.removeprefix('winequality.') for t in differ)}: not the same, or "
        "not recorded)",
    )
    score, best = _score(candidate, metric), _score(champion, metric)
    if differ:
        better = Check("beats the champion", False, "not comparable: other held-out rows")
    else:
        won = score < best
        better = Check(
            "beats the champion",
            won,
            f"{metric} {score:.4f} {'beats' if won else 'does not beat'} champion "
            f"v{champion.version} ({best:.4f}) on the same held-out rows",
        )
    return alike, better, coverage_check(_coverage(candidate))


def promote(
    name: str,
    version: str,
    *,
    force: str | None = None,
    metric: str = "rmse",
    tracking_uri: str | None = None,
    evidence: ShadowReport | None = None,
    live_margin: LiveMargin = 0.0,
) -> Decision:
    """Make `version` the champion if it passes the gate's checks against the current one;
    PromotionRefused naming every failed check otherwise. `force` (a reason, recorded on the
    version) promotes past failed checks. `evidence`, a shadow report of this version beside
    the champion, adds the check `live_check` and is recorded on the version."""
    client = tracking.client(tracking.connect(tracking_uri, create=False))
    candidate = _version(client, name, version)
    current = alias_version(client, name, CHAMPION)
    score = _score(candidate, metric)
    if evidence is not None and (current is None or current == version):
        raise ParameterError(
            f"--evidence compares v{version} with the champion, and "
            + (f"{name} has no champion yet" if current is None else "it is the champion")
        )
    if current is None or current == version:
        promise = coverage_check(_coverage(candidate))
        if current is None and not promise.passed and not force:
            raise PromotionRefused(
                f"{name} v{version} is not promoted: {promise.name}: {promise.reason}. To "
                f"promote it anyway: winequality promote {name} {version} --force REASON"
            )
        why = "first champion" if current is None else "already the champion"
        if current is None and not promise.passed:  # --force: recorded, as past any check
            client.set_model_version_tag(name, version, FORCED_TAG, force)
            why = f"--force ({force}): {promise.name}: {promise.reason}"
        _crown(client, name, version, "promote")
        return Decision(name, version, CHAMPION, score, None, None, why, (promise,))
    champion = _version(client, name, current)
    checks = evaluation_checks(candidate, champion, metric)
    if evidence is not None:
        checks = (
            *checks,
            live_check(
                evidence,
                version,
                current,
                live_margin,
                candidate_model=getattr(candidate, "model_id", None),
                champion_model=getattr(champion, "model_id", None),
            ),
        )
    failed = [c for c in checks if not c.passed]
    if failed and not force:
        raise PromotionRefused(
            f"{name} v{version} is not promoted: "
            + "; ".join(f"{c.name}: {c.reason}" for c in failed)
            + f". To promote it anyway: winequality promote {name} {version} --force REASON"
        )
    if failed:
        client.set_model_version_tag(name, version, FORCED_TAG, force)
    if evidence is not None:
        client.set_model_version_tag(name, version, LIVE_TAG, _live_summary(evidence, live_margin))
    reason = "; ".join(f"{c.name}: {c.reason}" for c in checks)
    if failed:
        reason = f"--force ({force}): {reason}"
    _crown(client, name, version, "promote --force" if failed else "promote")
    client.set_model_version_tag(name, version, GATE_TAG, reason)
    previous_score = _score(champion, metric)
    return Decision(name, version, CHAMPION, score, current, previous_score, reason, checks)


def rollback(name: str, *, tracking_uri: str | None = None) -> Decision:
    """The champion goes back to the one before it (from the champion history)."""
    client = tracking.client(tracking.connect(tracking_uri, create=False))
    current = alias_version(client, name, CHAMPION)
    earlier = [e["version"] for e in _history(client, name) if e["version"] != current]
    if not earlier:
        raise NotFoundError(f"{name} has no earlier champion to roll back to")
    back = earlier[-1]
    _version(client, name, back)  # still there
    _crown(client, name, back, "rollback")
    reason = f"rolled back from v{current}"
    client.set_model_version_tag(name, back, GATE_TAG, reason)
    return Decision(name, back, CHAMPION, math.nan, current, None, reason)


def standing(
    name: str, version: str, tracking_uri: str | None = None
) -> tuple[list[str], str | None]:
    """(the aliases `version` holds now, the champion's version now)."""
    client = tracking.client(tracking_uri)
    model = client.get_registered_model(name)
    mine = sorted(a for a, v in model.aliases.items() if str(v) == str(version))
    champion = model.aliases.get(CHAMPION)
    return mine, None if champion is None else str(champion)


def champion_history(name: str, *, tracking_uri: str | None = None) -> list[dict[str, str]]:
    """Who was champion when: `{"version", "since", "by"}`, oldest first."""
    return _history(tracking.client(tracking.connect(tracking_uri, create=False)), name)


def _crown(client: Any, name: str, version: str, by: str) -> None:
    """Move the champion alias to `version` and say so in the history."""
    client.set_registered_model_alias(name, CHAMPION, version)
    since = datetime.now(UTC).isoformat(timespec="seconds")
    history = [*_history(client, name), {"version": version, "since": since, "by": by}]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEPT:]))


def _history(client: Any, name: str) -> list[dict[str, str]]:
    text = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return list(json.loads(text)) if text else []


def _version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise NotFoundError(f"{name} has no version {version}: {first_line(exc)}") from None


def _coverage(version: Any) -> float | None:
    """A version's held-out coverage at 0.9, as `register` recorded it (None: not calibrated)."""
    covered = version.tags.get(COVERAGE_TAG)
    return float(covered) if covered is not None else None


def _score(version: Any, metric: str) -> float:
    text = version.tags.get(f"test_{metric}")
    return float(text) if text else math.nan


def resolved_version(
    model_uri: str, tracking_uri: str | None = None, model_id: str | None = None
) -> str | None:
    """The registry version a `models:/` URI resolves to now (None for other URIs).

    For an alias, the version it points to now; if that is not the model loaded (`model_id`:
    the alias moved in between), the version that holds the loaded model, so the answers never
    name a version they were not scored by (the follower then loads the alias's new target).
    """
    parts = tracking.RegistryUri.parse(model_uri)
    if parts is None:
        return None
    if parts.version is not None:
        return parts.version
    assert parts.alias is not None
    client = tracking.client(tracking_uri)
    version = alias_version(client, parts.name, parts.alias)
    if model_id is None or version is None:
        return version
    source = registered_from(client.get_model_version(parts.name, version))
    if source is None or source == model_id:  # (None: a version that cannot tell)
        return version
    return version_holding(client, parts.name, model_id)


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
    history = _history(client, name)
    periods: dict[str, list[tuple[str, str | None]]] = {}
    for i, entry in enumerate(history):
        until = history[i + 1]["since"] if i + 1 < len(history) else None
        periods.setdefault(entry["version"], []).append((entry["since"], until))
    versions = _versions_of(client, name)
    return sorted(
        (
            VersionInfo(
                str(v.version),
                sorted(aliases.get(str(v.version), [])),
                v.run_id,
                int(v.creation_timestamp or 0),
                dict(v.tags),
                periods.get(str(v.version), []),
            )
            for v in versions
        ),
        key=lambda info: int(info.version),
        reverse=True,
    )
