"""Protocols, metrics and artifacts of the evaluation module."""

from __future__ import annotations

import numpy as np
import pytest

from winequality import evaluate
from winequality.data import load
from winequality.model import FAMILIES


def test_metrics_match_their_definitions() -> None:
    actual = np.array([5, 6, 7, 5])
    predicted = np.array([5.2, 5.4, 7.0, 6.1])
    m = evaluate.regression_metrics(actual, predicted)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - actual) ** 2)))
    assert m["mae"] == pytest.approx(0.475)
    assert m["accuracy_within_0.25"] == 0.5  # 0.2 and 0.0
    assert m["accuracy_within_0.5"] == 0.5
    assert m["accuracy_within_1"] == 0.75


def test_grouped_folds_never_split_a_duplicated_wine(red_csv) -> None:
    frame = load(red_csv).frame
    groups = evaluate.duplicate_groups(frame)
    assert len(frame) - len(np.unique(groups)) == 240  # the 240 known exact duplicates
    for train, valid in evaluate.make_folds(frame, "grouped", folds=5, repeats=2):
        assert not set(groups[train]) & set(groups[valid])
    leaky = evaluate.make_folds(frame, "random", folds=5)
    assert any(set(groups[t]) & set(groups[v]) for t, v in leaky)


def test_folds_are_reproducible_and_cover_every_row(red_csv) -> None:
    frame = load(red_csv).frame
    first = evaluate.make_folds(frame, "grouped", folds=5, repeats=3, seed=7)
    again = evaluate.make_folds(frame, "grouped", folds=5, repeats=3, seed=7)
    assert len(first) == 15
    assert all((a[1] == b[1]).all() for a, b in zip(first, again, strict=True))
    covered = np.sort(np.concatenate([valid for _, valid in first[:5]]))
    assert (covered == np.arange(len(frame))).all()
    ((train, test),) = evaluate.make_folds(frame, "split")
    assert (len(train), len(test)) == (1199, 400)


@pytest.mark.slow
def test_grouping_makes_flexible_models_look_less_flattering(red_csv) -> None:
    frame = load(red_csv).frame
    features, target = frame.drop(columns="quality"), frame["quality"]
    forest = FAMILIES["random-forest"]
    params = {"n_estimators": 100, "max_features": 0.5, "min_samples_leaf": 1}
    scores = {
        p: evaluate.cross_validate(
            lambda: forest.build(params), features, target, evaluate.make_folds(frame, p, folds=5)
        ).mean["rmse"]
        for p in ("grouped", "random")
    }
    assert scores["random"] < scores["grouped"]  # leaked copies flatter the random folds


def test_plots_and_report_are_written(tmp_path, red_csv) -> None:
    frame = load(red_csv).frame.head(300)
    features, target = frame.drop(columns="quality"), frame["quality"].to_numpy()
    estimator = FAMILIES["elasticnet"].build({"alpha": 0.05, "l1_ratio": 0.5}).fit(features, target)
    predicted = estimator.predict(features)
    importance, label = evaluate.feature_importance(estimator, features, target)
    assert set(importance) == set(features.columns)
    assert "coefficient" in label
    plots = [
        evaluate.plot_predictions(target, predicted, tmp_path / "a.png"),
        evaluate.plot_importance(importance, label, tmp_path / "b.png"),
        evaluate.plot_search(
            [{"alpha": 0.1, "l1_ratio": 0.2}, {"alpha": 1, "l1_ratio": 0.9}],
            [0.7, 0.8],
            "alpha",
            "l1_ratio",
            tmp_path / "c.png",
        ),
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    report = evaluate.write_report(
        tmp_path / "r.md",
        title="t",
        protocol="grouped",
        cv=None,
        test=evaluate.regression_metrics(target, predicted),
        params={"alpha": 0.05},
        plots=plots,
    ).read_text()
    assert "| rmse |" in report
    assert "![a](a.png)" in report
