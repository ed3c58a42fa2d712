"""Drift and the training range: white wines against a red model (serve, drift, predict)."""

from __future__ import annotations

from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from winequality import data
from winequality.cli import DRIFT_EXIT, app
from winequality.drift import PROFILE_FILE, Profile
from winequality.predict import FLAG_COLUMN, predict_file
from winequality.schema import FEATURE_NAMES
from winequality.scoring import load_scorer
from winequality.serving import create_app

from .conftest import ServerThread, metric
from .conftest import split_body as body

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()
NAME = "wine-follow"


def test_white_wines_drift_in_the_server_and_are_flagged_outside_training(
    scorer, red, white
) -> None:
    with ServerThread(create_app(scorer)) as url, httpx.Client(base_url=url, timeout=30) as http:
        few = http.post("/invocations", json=body(red.head(50)))
        assert few.status_code == 200
        assert http.get("/drift").json()["features"] == {}  # too few rows for a verdict
        red_answer = http.post("/invocations", json=body(red.sample(350, random_state=0)))
        assert red_answer.status_code == 200
        assert "warnings" not in red_answer.json()
        assert http.get("/drift").json()["features"]["total sulfur dioxide"]["verdict"] == "stable"
        answer = http.post("/invocations", json=body(white))
        view = http.get("/drift").json()
        text = http.get("/metrics").text
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == len(white)  # still scored
    warnings = answer.json()["warnings"]
    assert {"row", "column", "reason", "value"} <= set(warnings[0])
    assert "outside the training range" in warnings[0]["reason"]
    assert "rows outside the training range" in answer.headers["x-winequality-warnings"]
    assert view["rows"] == 400 + len(white)
    for feature in ("total sulfur dioxide", "free sulfur dioxide", "residual sugar"):
        assert view["features"][feature]["verdict"] == "drift"
        assert metric(text, "winequality_feature_psi", feature=feature) >= 0.25
    assert metric(text, "winequality_outside_training_range_total", feature="residual sugar") > 100


def test_the_range_warning_says_an_asked_interval_is_not_guaranteed_there(
    scorer, trained_model, white, tmp_path, monkeypatch
) -> None:
    rows = white.head(40)
    app_ = create_app(scorer, name="red")
    with ServerThread(app_) as url, httpx.Client(base_url=url, timeout=30) as http:
        plain = http.post("/invocations", json=body(rows)).json()["warnings"][0]["reason"]
        asked = http.post("/invocations", json={**body(rows), "params": {"interval": 0.9}}).json()
        v2 = http.post(
            "/v2/models/red/infer",
            json={
                "inputs": [{"name": "input", "datatype": "FP64", "shape": [len(rows), 11],
                            "data": rows[COLUMNS].to_numpy().ravel().tolist()}],
                "parameters": {"interval": 0.9},
            },
        )  # fmt: skip
        only_scores = http.post(
            "/v2/models/red/infer",
            json={
                "inputs": [{"name": "input", "datatype": "FP64", "shape": [len(rows), 11],
                            "data": rows[COLUMNS].to_numpy().ravel().tolist()}],
                "parameters": {"interval": 0.9},
                "outputs": [{"name": "predictions"}],
            },
        )  # fmt: skip
    caveat = "(scored anyway; its interval is not guaranteed there)"
    assert only_scores.json()["parameters"]["warnings"][0]["reason"].endswith("(scored anyway)")
    assert plain.endswith("(scored anyway)")
    assert asked["warnings"][0]["reason"].endswith(caveat)
    assert v2.status_code == 200, v2.text
    assert v2.json()["parameters"]["warnings"][0]["reason"].endswith(caveat)
    source = tmp_path / "white.csv"
    rows.to_csv(source, index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    done = runner.invoke(
        app, ["predict", "--model", trained_model.model_uri, "--input", str(source),
              "--interval", "0.9", "--output", str(tmp_path / "out.csv")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert caveat in done.stderr


def test_drift_command_flags_white_wines_and_passes_red_held_out_rows(
    trained_model, red, white, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    _, red_test = data.split(red)  # the rows the model was tested on, never trained on
    red_test.to_csv(tmp_path / "red.csv", index=False)
    white.to_csv(tmp_path / "white.csv", index=False)
    model = trained_model.model_uri
    plot = tmp_path / "drift.png"
    answer = runner.invoke(
        app,
        ["drift", "--model", model, "--input", str(tmp_path / "white.csv"), "--plot", str(plot)],
    )
    assert answer.exit_code == DRIFT_EXIT, answer.output
    rows = {line.split("│")[1].strip(): line for line in answer.stdout.splitlines() if "│" in line}
    for feature in ("total sulfur dioxide", "free sulfur dioxide", "residual sugar"):
        assert rows[feature].rstrip(" │").endswith("drift")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    answer = runner.invoke(app, ["drift", "--model", model, "--input", str(tmp_path / "red.csv")])
    assert answer.exit_code == 0, answer.output
    assert "no feature drifted" in answer.stderr


def test_predict_warns_about_rows_outside_training_and_can_flag_them(
    trained_model, white, tmp_path
) -> None:
    source = tmp_path / "white.csv"
    white.to_csv(source, index=False)
    output = tmp_path / "scored.parquet"
    result = predict_file(
        trained_model.model_uri,
        source,
        output,
        tracking_uri=trained_model.tracking_uri,
        flag_outside=True,
    )
    sugar = next(w for w in result.warnings if w.column == "residual sugar")
    assert sugar.kind == "outside_training"
    written = pd.read_parquet(output)
    assert len(written) == len(white)  # all scored
    assert written[FLAG_COLUMN].sum() >= sugar.count > 100
    assert sugar.describe("line").startswith(f"residual sugar: {sugar.count} values outside")


def test_a_model_logged_without_a_profile_still_serves(trained_model, red, tmp_path) -> None:
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    folder = Path(
        mlflow.artifacts.download_artifacts(trained_model.model_uri, dst_path=str(tmp_path))
    )
    (folder / PROFILE_FILE).unlink()
    scorer = load_scorer(str(folder))
    assert scorer.model.profile is None
    with ServerThread(create_app(scorer)) as url, httpx.Client(base_url=url) as http:
        answer = http.post("/invocations", json=body(red.head(3)))
        assert answer.status_code == 200
        assert http.get("/drift").json() == {
            "model_version": answer.headers["x-model-version"],
            "rows": 0,
            "minimum_rows": 100,
            "profile": False,
            "features": {},
        }
        assert http.get("/metadata").json()["reference_profile"] is False


def test_too_few_rows_for_a_verdict_say_so_and_exit_0(trained_model, red, tmp_path) -> None:
    one = tmp_path / "one.csv"
    red.head(1).to_csv(one, index=False)
    answer = runner.invoke(
        app,
        [
            "drift", "--model", trained_model.model_uri, "--input", str(one),
            "--tracking-uri", trained_model.tracking_uri,
        ],
    )  # fmt: skip
    assert answer.exit_code == 0, answer.output
    assert "no verdict: 1 of 100 rows needed" in answer.output
    assert "drift in" not in answer.output


@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=60),
    feature=st.integers(0, len(COLUMNS) - 1),
    with_edges=st.booleans(),
)
def test_bin_counts_are_a_binary_search_per_value(red, values, feature, with_edges) -> None:
    """The per-edge comparison that counts a batch's bins agrees with the definition: bin i
    holds the values with i interior edges at or below them (NaN last), edges included."""
    reference = Profile.from_features(red[COLUMNS].to_numpy()).features[feature]
    column = np.array(values + (reference.edges if with_edges else []), dtype=np.float64)
    expected = np.bincount(
        np.searchsorted(reference.edges, column, side="right"), minlength=len(reference.counts)
    )
    assert reference.bin_counts(column).tolist() == expected.tolist()
