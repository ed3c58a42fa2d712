"""Prediction intervals: calibrated out of fold, pinned against MAPIE, checked on held-out rows,
carried in the model, served on both protocols."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ServerThread
from winequality import data, evaluate, intervals, schema
from winequality.errors import ParameterError
from winequality.export import export_model
from winequality.model import FAMILIES, elasticnet
from winequality.scoring import load_scorer
from winequality.serving import create_app

FEATURES = list(schema.FEATURE_NAMES)


@pytest.fixture(scope="module")
def red_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    return evaluate.holdout_split(data.load().frame, 0.25, 40)


def test_the_half_widths_are_mapies_for_the_same_folds(red_split) -> None:
    from mapie.regression import CrossConformalRegressor
    from sklearn.model_selection import GroupKFold

    train, test = red_split
    x, y = train[FEATURES], train[schema.TARGET.name].to_numpy(float)
    levels = (0.8, 0.9, 0.95)
    ours = intervals.calibrate(lambda: elasticnet(0.7, 0.7), x, y, levels, seed=41)
    theirs = CrossConformalRegressor(
        elasticnet(0.7, 0.7),
        confidence_level=list(levels),
        method="base",
        cv=GroupKFold(n_splits=5, shuffle=True, random_state=41),  # make_folds' own splitter
    )
    theirs.fit_conformalize(x.to_numpy(), y, groups=evaluate.duplicate_groups(x))
    predicted, bounds = theirs.predict_interval(test[FEATURES].to_numpy())
    refit = elasticnet(0.7, 0.7).fit(x.to_numpy(), y).predict(test[FEATURES].to_numpy())
    np.testing.assert_allclose(predicted, refit, rtol=0, atol=1e-12)
    for k, level in enumerate(levels):
        lower, upper = ours.bounds(refit, level)
        np.testing.assert_allclose(bounds[:, 0, k], lower, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bounds[:, 1, k], upper, rtol=0, atol=1e-12)


class Spy:
    """An estimator that remembers every row it was fitted on and every row it scored."""

    fitted: ClassVar[list[set[bytes]]] = []
    scored: ClassVar[list[set[bytes]]] = []

    def __init__(self) -> None:
        self.inner = elasticnet(0.7, 0.7)

    def fit(self, x: np.ndarray, y: np.ndarray) -> Spy:
        Spy.fitted.append({row.tobytes() for row in x})
        self.inner.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        Spy.scored.append({row.tobytes() for row in x})
        return np.asarray(self.inner.predict(x))


def test_no_calibration_row_was_seen_by_the_model_that_scored_it(red_split) -> None:
    train, _ = red_split
    x, y = train[FEATURES], train[schema.TARGET.name]
    Spy.fitted, Spy.scored = [], []
    calibrated = intervals.calibrate(Spy, x, y, seed=1040)
    assert len(Spy.fitted) == len(Spy.scored) == intervals.CALIBRATION_FOLDS
    every_row = {row.tobytes() for row in x.to_numpy(np.float64)}
    assert set().union(*Spy.scored) == every_row  # each wine scored once, out of fold
    for fitted, scored in zip(Spy.fitted, Spy.scored, strict=True):
        assert not fitted & scored  # not the row itself, nor an exact twin of it
    assert calibrated.calibration_rows == len(x)


def test_folds_that_score_a_row_twice_or_on_its_own_fit_are_refused() -> None:
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    rows = np.arange(10)
    with pytest.raises(ValueError, match="fits on rows it leaves out"):
        intervals.out_of_fold(lambda: elasticnet(), x, y, [(rows, rows[:5])])
    halves = [(rows[5:], rows[:5]), (rows[:5], rows[5:]), (rows[5:], rows[:5])]
    with pytest.raises(ValueError, match="exactly once"):
        intervals.out_of_fold(lambda: elasticnet(), x, y, halves)


def test_a_level_is_read_as_the_model_writes_it() -> None:
    calibrated = intervals.Intervals({"0.8": 1.0, "0.9": 1.5}, 100, 5, 0)
    assert calibrated.levels == (0.8, 0.9)
    for asked in (0.9, "0.9", "0.90", 0.9000000001):
        level = calibrated.level(asked)
        assert level == 0.9
        lower, upper = calibrated.bounds(np.array([5.0]), level)
        assert (lower[0], upper[0]) == (3.5, 6.5)
    assert list(calibrated.named_bounds(np.array([5.0]), 0.8)) == ["lower_0.8", "upper_0.8"]
    assert calibrated == intervals.Intervals.from_dict(calibrated.to_dict())


def test_a_level_needing_more_rows_than_there_are_is_refused_by_name() -> None:
    assert [intervals.rows_needed(v) for v in (0.8, 0.9, 0.95)] == [4, 9, 19]
    assert intervals.parse_levels([0.95, 0.8, 0.9], 19) == (0.8, 0.9, 0.95)
    with pytest.raises(ParameterError, match=r"\(18\) for the interval level\(s\) 0.95 needs 19"):
        intervals.parse_levels([0.8, 0.95], 18)
    with pytest.raises(ParameterError, match="within"):
        intervals.parse_levels([0.9, 1.0])
    with pytest.raises(ParameterError, match="at most 6 significant digits"):
        intervals.parse_levels([0.9, 0.9000001])  # both would be named lower_0.9
    scores = np.arange(1.0, 20.0)  # 19 residuals: the 0.95 quantile is the largest
    assert intervals.half_width(scores, 0.95) == 19.0
    assert intervals.half_width(scores, 0.9) == 18.0  # ceil(20 * 0.9) = 18th


def test_train_logs_intervals_with_the_model_and_their_held_out_checks(trained_model) -> None:
    result = trained_model.result
    assert result.intervals is not None
    assert result.intervals.levels == (0.8, 0.9, 0.95)
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    run = client.get_run(result.run_id)
    for level in ("0.8", "0.9", "0.95"):
        covered = run.data.metrics[f"test_coverage_{level}"]
        assert covered == result.interval_metrics[f"test_coverage_{level}"]
        assert abs(covered - float(level)) <= 0.03  # 400 rows: one standard error is 1.5 pts
        width = run.data.metrics[f"test_interval_width_{level}"]
        assert width == pytest.approx(2 * result.intervals.half_widths[level])
    assert run.data.params["interval_levels"] == "0.8,0.9,0.95"
    table = json.loads(
        Path(
            client.download_artifacts(result.run_id, "interval_coverage_by_grade.json")
        ).read_text()
    )
    assert table["columns"][:2] == ["quality", "rows"]
    assert sum(row[1] for row in table["data"]) == result.test_rows
    loaded = load_scorer(trained_model.model_uri, trained_model.tracking_uri).model
    assert loaded.intervals == result.intervals  # it travels inside the model's folder
    assert loaded.signature["params"] is not None
    assert "interval" in loaded.signature["params"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["elasticnet", "random-forest"])
def test_coverage_averaged_over_twenty_resplits_keeps_the_promise(family) -> None:
    """What the guarantee promises: over re-drawn calibration and test rows, coverage at
    each level averages within 1 point of it."""
    frame = data.load().frame
    chosen = FAMILIES[family]
    params = {axis: values[0] for axis, values in chosen.grid.items()}
    covered: dict[float, list[float]] = {0.8: [], 0.9: [], 0.95: []}
    for seed in range(20):
        train, test = evaluate.holdout_split(frame, 0.25, seed)
        x, y = train[FEATURES], train[schema.TARGET.name]
        calibrated = intervals.calibrate(lambda: chosen.build(params), x, y, seed=seed + 1000)
        predicted = chosen.build(params).fit(x, y).predict(test[FEATURES])
        for level, found in covered.items():
            lower, upper = calibrated.bounds(predicted, level)
            found.append(intervals.coverage(test[schema.TARGET.name], lower, upper))
    for level, found in covered.items():
        assert abs(np.mean(found) - level) <= 0.01, (level, np.mean(found))


# --- serving -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(trained_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("intervals") / "model"
    export_model(trained_model.model_uri, folder, tracking_uri=trained_model.tracking_uri)
    scorer = load_scorer(str(folder))
    with ServerThread(create_app(scorer, model_uri=str(folder))) as url:
        yield url, scorer


def split_body(frame: pd.DataFrame, **extra) -> dict:
    return {"dataframe_split": {"columns": FEATURES, "data": frame.to_numpy().tolist()}, **extra}


def test_invocations_add_the_bounds_when_asked_and_nothing_otherwise(served, red_split) -> None:
    url, scorer = served
    wines = red_split[1][FEATURES].head(7)
    plain = httpx.post(url + "/invocations", json=split_body(wines))
    assert list(plain.json()) == ["predictions"]
    asked = httpx.post(url + "/invocations", json=split_body(wines, params={"interval": 0.9}))
    assert asked.status_code == 200, asked.text
    answer = asked.json()
    assert list(answer) == ["predictions", "lower_0.9", "upper_0.9"]
    assert answer["predictions"] == plain.json()["predictions"]
    half = scorer.model.intervals.half_widths["0.9"]
    np.testing.assert_allclose(np.subtract(answer["predictions"], answer["lower_0.9"]), half)
    np.testing.assert_allclose(np.subtract(answer["upper_0.9"], answer["predictions"]), half)
    big = pd.concat([red_split[0][FEATURES]] * 2)  # a body large enough for the bulk reader
    bulk = httpx.post(url + "/invocations", json=split_body(big, params={"interval": "0.8"}))
    assert list(bulk.json())[:3] == ["predictions", "lower_0.8", "upper_0.8"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"interval": 0.85}, "no interval calibrated at 0.85; this model has 0.8, 0.9, 0.95"),
        ({"interval": "wide"}, "interval must be a number such as 0.9, got 'wide'"),
        ({"interval": True}, "interval must be a number such as 0.9, got True"),
        ({"interval": "nan"}, "interval must be a number such as 0.9, got 'nan'"),
        ({"level": 0.9}, "unknown params ['level']; this model takes 'interval'"),
        ([0.9], "params must be an object such as {'interval': 0.9}"),
    ],
)
def test_a_bad_interval_is_a_400_naming_what_there_is(served, red_split, params, message) -> None:
    url, _ = served
    wines = red_split[1][FEATURES].head(2)
    answer = httpx.post(url + "/invocations", json=split_body(wines, params=params))
    assert answer.status_code == 400
    assert answer.json()["message"] == message


def test_v2_adds_two_outputs_for_an_interval(served, red_split) -> None:
    url, scorer = served
    values = red_split[1][FEATURES].head(3).to_numpy()
    request = {
        "inputs": [{"name": "wines", "shape": [3, 11], "datatype": "FP64",
                    "data": values.ravel().tolist()}],
        "parameters": {"interval": 0.95},
    }  # fmt: skip
    answer = httpx.post(url + "/v2/models/wine-quality/infer", json=request).json()
    names = [o["name"] for o in answer["outputs"]]
    assert names == ["predictions", "lower_0.95", "upper_0.95"]
    predictions, lower, upper = (np.array(o["data"]) for o in answer["outputs"])
    half = scorer.model.intervals.half_widths["0.95"]
    np.testing.assert_allclose(upper - predictions, half)
    np.testing.assert_allclose(predictions - lower, half)
    request["parameters"] = {}  # outputs named at any calibrated level: only those, in order
    request["outputs"] = [{"name": "upper_0.8"}, {"name": "predictions"}]
    chosen = httpx.post(url + "/v2/models/wine-quality/infer", json=request).json()["outputs"]
    assert [o["name"] for o in chosen] == ["upper_0.8", "predictions"]
    np.testing.assert_allclose(
        np.subtract(chosen[0]["data"], chosen[1]["data"]), scorer.model.intervals.half_widths["0.8"]
    )
    for name, message in (
        ("lower_0.85", "no interval calibrated at 0.85; this model has 0.8, 0.9, 0.95"),
        ("lower_0.90", "unknown output 'lower_0.90'; write it 'lower_0.9' or so"),
        ("middle_0.9", "unknown output 'middle_0.9'"),
    ):
        request["outputs"] = [{"name": name}]
        refused = httpx.post(url + "/v2/models/wine-quality/infer", json=request)
        assert refused.status_code == 400
        assert refused.json()["error"].startswith(message)


def test_a_model_logged_before_intervals_serves_and_says_it_has_none(
    trained_model, tmp_path, red_split
) -> None:
    folder = tmp_path / "model"
    export_model(trained_model.model_uri, folder, tracking_uri=trained_model.tracking_uri)
    (folder / intervals.INTERVALS_FILE).unlink()
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    with ServerThread(create_app(load_scorer(str(old)), model_uri=str(old))) as url:
        wines = red_split[1][FEATURES].head(2)
        assert httpx.post(url + "/invocations", json=split_body(wines)).status_code == 200
        asked = httpx.post(url + "/invocations", json=split_body(wines, params={"interval": 0.9}))
        assert asked.status_code == 400
        assert "has no calibrated intervals (it was logged before" in asked.json()["message"]
        assert httpx.get(url + "/metadata").json()["interval_levels"] == []
        page = httpx.get(url + "/").text  # the page asks for no range
        assert '"level":null,"bounds":null' in page


def test_the_page_asks_for_the_09_range_and_metadata_names_the_levels(served) -> None:
    url, _ = served
    assert httpx.get(url + "/metadata").json()["interval_levels"] == [0.8, 0.9, 0.95]
    assert '"level":0.9,"bounds":["lower_0.9","upper_0.9"],"range":"90 % range"' in (
        httpx.get(url + "/").text
    )


# --- batch ---------------------------------------------------------------------------------------


def test_predict_adds_the_bounds_in_every_output_format(trained_model, red_csv, tmp_path) -> None:
    from winequality.predict import predict_file

    half = trained_model.result.intervals.half_widths["0.9"]
    for suffix in (".csv", ".parquet", ".json"):
        out = tmp_path / f"scored{suffix}"
        predict_file(trained_model.model_uri, red_csv, out, interval=0.9,
                     tracking_uri=trained_model.tracking_uri)  # fmt: skip
        frame = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".json": pd.read_json}[suffix](
            out
        )
        assert list(frame.columns[-3:]) == ["prediction", "lower_0.9", "upper_0.9"]
        assert len(frame) == 1599
        np.testing.assert_allclose(frame["prediction"] - frame["lower_0.9"], half, atol=1e-9)
        np.testing.assert_allclose(frame["upper_0.9"] - frame["prediction"], half, atol=1e-9)


def test_predict_refuses_an_uncalibrated_level_and_writes_nothing(
    trained_model, red_csv, tmp_path
) -> None:
    from typer.testing import CliRunner

    from winequality.cli import app

    out = tmp_path / "scored.csv"
    done = CliRunner().invoke(
        app,
        ["predict", "--model", trained_model.model_uri, "--input", str(red_csv), "--output",
         str(out), "--interval", "0.85", "--tracking-uri", trained_model.tracking_uri],
    )  # fmt: skip
    assert done.exit_code == 2
    assert "no interval calibrated at 0.85; this model has 0.8, 0.9, 0.95" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_interval_too_large_for_a_float_is_a_400_not_a_500(served, red_split) -> None:
    url, _ = served
    rows = red_split[1][FEATURES].head(1).to_numpy().tolist()
    body = (
        b'{"dataframe_split": {"columns": ' + json.dumps(FEATURES).encode()
        + b', "data": ' + json.dumps(rows).encode()
        + b'}, "params": {"interval": 1' + b"0" * 400 + b"}}"
    )  # fmt: skip
    answer = httpx.post(url + "/invocations", content=body,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("interval must be a number such as 0.9, got ")
