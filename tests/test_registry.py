"""The registry: the gate's rule as a pure function, listing that names its store."""

from __future__ import annotations

import mlflow
import pytest

from winequality import registry, tracking
from winequality.errors import NotFoundError, PromotionRefused, TrackingError
from winequality.registry import decide


def test_the_first_version_becomes_champion() -> None:
    d = decide("m", "1", 0.7, None, None)
    assert (d.alias, d.previous_version, d.reason) == (
        "champion",
        None,
        "first version: no champion yet",
    )


def test_a_better_version_takes_the_champion_alias() -> None:
    d = decide("m", "3", 0.60, "2", 0.65)
    assert (d.alias, d.previous_version, d.previous_score) == ("champion", "2", 0.65)
    assert d.reason == "rmse 0.6000 beats champion v2 (0.6500) on the same held-out rows"


@pytest.mark.parametrize("score", [0.65, 0.70])
def test_a_version_that_does_not_beat_it_is_challenger(score) -> None:
    d = decide("m", "3", score, "2", 0.65)
    assert d.alias == "challenger"
    assert "does not beat champion v2" in d.reason


def test_force_and_already_champion() -> None:
    forced = decide("m", "3", 0.9, "2", 0.65, force=True)
    assert forced.alias == "champion"
    assert forced.reason.startswith("--force: replaces v2")
    same = decide("m", "2", 0.65, "2", None)
    assert (same.alias, same.previous_version) == ("champion", None)


def test_a_champion_without_a_score_is_a_bug_not_a_decision() -> None:
    with pytest.raises(ValueError, match="needs its score"):
        decide("m", "3", 0.6, "2", None)


def test_listing_a_model_that_is_not_there_names_the_store(workdir, tracking_uri) -> None:
    mlflow.MlflowClient(tracking_uri).search_experiments()  # the store exists, empty
    with pytest.raises(NotFoundError) as caught:
        registry.list_versions("wine-quality", tracking_uri)
    message = str(caught.value)
    assert tracking_uri in message
    assert "--tracking-uri" in message
    assert "winequality sweep" in message


def test_listing_in_a_folder_without_a_store_creates_none(workdir) -> None:
    with pytest.raises(TrackingError, match=r"no MLflow tracking store at sqlite:///mlflow\.db"):
        registry.list_versions()
    assert not (workdir / "mlflow.db").exists()


def test_listing_escapes_the_name_and_sorts_newest_first(trained_model) -> None:
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    client = mlflow.MlflowClient()
    name = "o'brien's wine"
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, trained_model.model_uri)
    client.set_registered_model_alias(name, "champion", "1")
    versions = registry.list_versions(name, trained_model.tracking_uri)
    assert [(v.version, v.aliases) for v in versions] == [("2", []), ("1", ["champion"])]


# --- promote and rollback ---------------------------------------------------------------------

SPLIT_A = {
    "winequality.data_sha256": "a" * 64,
    "winequality.holdout": "grouped",
    "winequality.split_seed": "40",
    "winequality.test_size": "0.25",
}
SPLIT_B = {**SPLIT_A, "winequality.split_seed": "7"}


def add_version(trained_model, name: str, rmse: float, split: dict[str, str]) -> str:
    return registry.register(
        trained_model.model_uri,
        name,
        tags={**split, "test_rmse": f"{rmse:.6f}"},
        tracking_uri=trained_model.tracking_uri,
    )


def test_promotion_passes_the_gate_only_on_the_same_data_and_split(trained_model) -> None:
    uri, name = trained_model.tracking_uri, "promo"
    first = add_version(trained_model, name, 0.70, SPLIT_A)
    registry.promote(name, first, tracking_uri=uri)  # the first champion: nothing to beat
    better = add_version(trained_model, name, 0.65, SPLIT_A)
    decision = registry.promote(name, better, tracking_uri=uri)
    assert (decision.alias, decision.previous_version) == ("champion", first)
    assert [check.name for check in decision.checks] == [
        "same evaluation",
        "beats the champion",
        "intervals keep their promise",
    ]
    worse = add_version(trained_model, name, 0.80, SPLIT_A)
    with pytest.raises(PromotionRefused, match=r"beats the champion: rmse 0\.8000 does not beat"):
        registry.promote(name, worse, tracking_uri=uri)
    elsewhere = add_version(trained_model, name, 0.50, SPLIT_B)
    with pytest.raises(PromotionRefused, match=r"same evaluation: .*split_seed"):
        registry.promote(name, elsewhere, tracking_uri=uri)
    forced = registry.promote(
        name, elsewhere, force="re-split after the 2026 harvest", tracking_uri=uri
    )
    assert forced.alias == "champion"
    tags = mlflow.MlflowClient(uri).get_model_version(name, elsewhere).tags
    assert tags[registry.FORCED_TAG] == "re-split after the 2026 harvest"
    assert tracking.alias_version(mlflow.MlflowClient(uri), name, "champion") == elsewhere


def test_rollback_brings_back_the_previous_champion_and_history_keeps_both(trained_model) -> None:
    uri, name = trained_model.tracking_uri, "rollback"
    first = add_version(trained_model, name, 0.70, SPLIT_A)
    registry.promote(name, first, tracking_uri=uri)
    second = add_version(trained_model, name, 0.60, SPLIT_A)
    registry.promote(name, second, tracking_uri=uri)
    back = registry.rollback(name, tracking_uri=uri)
    assert (back.version, back.previous_version) == (first, second)
    history = registry.champion_history(name, tracking_uri=uri)
    assert [entry["version"] for entry in history] == [first, second, first]
    assert history[-1]["by"] == "rollback"
    versions = {v.version: v for v in registry.list_versions(name, uri)}
    assert versions[first].aliases == ["champion"]
    assert [period[0] for period in versions[second].champion_periods] == [history[1]["since"]]


def test_a_version_whose_intervals_miss_their_coverage_is_refused(trained_model) -> None:
    uri, name = trained_model.tracking_uri, "promised"
    first = add_version(trained_model, name, 0.70, SPLIT_A)
    registry.promote(name, first, tracking_uri=uri)
    loose = registry.register(
        trained_model.model_uri,
        name,
        tags={**SPLIT_A, "test_rmse": "0.600000", registry.COVERAGE_TAG: "0.845000"},
        tracking_uri=uri,
    )
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(name, loose, tracking_uri=uri)
    assert (
        "intervals keep their promise: its 0.9 intervals covered 84.5% of the held-out rows, "
        "more than 4% of 90 %: its ranges do not say what they promise"
    ) in str(refused.value)
    kept = registry.register(
        trained_model.model_uri,
        name,
        tags={**SPLIT_A, "test_rmse": "0.600000", registry.COVERAGE_TAG: "0.870000"},
        tracking_uri=uri,
    )
    assert registry.promote(name, kept, tracking_uri=uri).alias == "champion"


def test_the_sweeps_gate_keeps_a_miscalibrated_challenger_out() -> None:
    decision = registry.decide("m", "2", 0.5, "1", 0.7, coverage=0.95)
    assert decision.alias == "challenger"
    assert decision.reason.startswith("intervals keep their promise: its 0.9 intervals covered")
    assert registry.decide("m", "2", 0.5, "1", 0.7, coverage=0.91).alias == "champion"
    assert registry.decide("m", "2", 0.5, "1", 0.7).alias == "champion"  # none calibrated


def test_the_coverage_boundary_is_inclusive_both_ways_and_a_first_version_is_checked() -> None:
    assert registry.coverage_check(0.86).passed
    assert registry.coverage_check(0.94).passed
    assert not registry.coverage_check(0.8599).passed
    first = registry.decide("m", "1", 0.7, None, None, coverage=0.7)
    assert first.alias == "challenger"
    assert "(no champion yet)" in first.reason
    assert [c.name for c in first.checks] == ["intervals keep their promise"]
    assert registry.decide("m", "1", 0.7, None, None, coverage=0.9).alias == "champion"
    assert registry.decide("m", "1", 0.7, None, None, coverage=0.7, force=True).alias == "champion"


def test_promoting_a_miscalibrated_first_version_needs_force(trained_model) -> None:
    uri, name = trained_model.tracking_uri, "first-loose"
    loose = registry.register(
        trained_model.model_uri,
        name,
        tags={**SPLIT_A, "test_rmse": "0.700000", registry.COVERAGE_TAG: "0.700000"},
        tracking_uri=uri,
    )
    with pytest.raises(PromotionRefused, match=r"intervals keep their promise: its 0\.9 intervals"):
        registry.promote(name, loose, tracking_uri=uri)
    forced = registry.promote(name, loose, force="known wide", tracking_uri=uri)
    assert forced.alias == "champion"
    assert forced.reason.startswith("--force (known wide): intervals keep their promise")
