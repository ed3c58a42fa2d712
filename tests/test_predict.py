"""Batch scoring: every URI form, every file format, the shared validator against MLflow's."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.pyfunc.scoring_server import invocations
from typer.testing import CliRunner

from winequality.cli import app
from winequality.errors import ModelLoadError, PayloadError, SchemaError
from winequality.io.protocol import parse_payload
from winequality.predict import predict_file
from winequality.schema import FEATURE_NAMES, FEATURES
from winequality.scoring import fold_linear, load_scorer

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()


@pytest.fixture(scope="module")
def red_sample(red_csv: Path) -> pd.DataFrame:
    return pd.read_csv(red_csv, sep=";").sample(40, random_state=1).reset_index(drop=True)


@pytest.fixture
def sample(red_sample: pd.DataFrame) -> pd.DataFrame:
    return red_sample.copy()  # each test may spoil its own


def expected(mlflow_pyfunc, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(mlflow_pyfunc.predict(frame[COLUMNS].astype("float64")))


def test_every_model_uri_form_loads_the_same_model(trained_model, scorer) -> None:
    run_id = trained_model.result.run_id
    local = mlflow.artifacts.download_artifacts(
        trained_model.model_uri, tracking_uri=trained_model.tracking_uri
    )
    for uri in (
        f"runs:/{run_id}/model",
        "models:/wine-test@champion",
        "models:/wine-test/1",
        trained_model.model_uri,
        local,
    ):
        loaded = load_scorer(uri, trained_model.tracking_uri)
        assert loaded.model.run_id == run_id
        np.testing.assert_array_equal(loaded.weights, scorer.weights)
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_scorer("runs:/0123456789abcdef/model", trained_model.tracking_uri)


def test_the_folded_linear_model_equals_sklearn(scorer, sample) -> None:
    from winequality.model import elasticnet

    direct = scorer.model.estimator.predict(sample[COLUMNS])
    np.testing.assert_allclose(
        scorer.predict(sample[COLUMNS].to_numpy()), direct, rtol=0, atol=1e-12
    )
    scaled = elasticnet(0.01, 0.5, scale=True).fit(sample[COLUMNS], sample["quality"])
    w, b = fold_linear(scaled)
    np.testing.assert_allclose(
        sample[COLUMNS].to_numpy() @ w + b, scaled.predict(sample[COLUMNS]), rtol=0, atol=1e-9
    )


@pytest.mark.parametrize(
    "layout",
    ["uci.csv", "tutorial.csv", "in.parquet", "records.json", "split.json", "pandas-split.json"],
)
@pytest.mark.parametrize("output", ["out.csv", "out.parquet", "out.json"])
def test_files_in_every_format_score_like_mlflow(
    trained_model, mlflow_pyfunc, sample, tmp_path, layout, output
) -> None:
    source = tmp_path / layout
    if layout == "uci.csv":
        sample.to_csv(source, sep=";", index=False)
    elif layout == "tutorial.csv":
        sample.to_csv(source, index=False)
    elif layout == "in.parquet":
        sample.to_parquet(source)
    elif layout == "records.json":
        source.write_text(sample.to_json(orient="records"))
    elif layout == "pandas-split.json":  # what DataFrame.to_json(orient="split") writes
        source.write_text(sample.to_json(orient="split", index=False))
    else:
        source.write_text(
            json.dumps({"dataframe_split": json.loads(sample.to_json(orient="split", index=False))})
        )
    result = predict_file(
        trained_model.model_uri, source, tmp_path / output, tracking_uri=trained_model.tracking_uri
    )
    written = {"out.csv": pd.read_csv, "out.parquet": pd.read_parquet, "out.json": pd.read_json}[
        output
    ](tmp_path / output)
    assert list(written.columns) == [*sample.columns, "prediction"]  # inputs kept, quality too
    np.testing.assert_allclose(written["prediction"], expected(mlflow_pyfunc, sample), atol=1e-9)
    assert result.rows == 40


def test_bad_rows_are_all_listed_and_nothing_is_written(trained_model, sample, tmp_path) -> None:
    frame = sample.astype(object)
    frame.loc[3, "pH"] = 15.0
    frame.loc[5, "alcohol"] = None
    frame.loc[7, "density"] = "dense"
    frame = frame.drop(columns=["sulphates"])
    source = tmp_path / "bad.csv"
    frame.to_csv(source, index=False)
    with pytest.raises(SchemaError) as caught:
        predict_file(
            trained_model.model_uri,
            source,
            tmp_path / "out.csv",
            tracking_uri=trained_model.tracking_uri,
        )
    text = str(caught.value)
    for fragment in (
        "sulphates: required column is missing",
        "pH: 1 value outside the physical range [0, 14] pH (line 5: 15.0)",
        "alcohol: 1 value missing (null or empty) (line 7)",
        "density: 1 value not a number (line 9: 'dense')",
    ):
        assert fragment in text
    assert list(tmp_path.iterdir()) == [source]


def test_out_of_range_can_be_scored_on_request(trained_model, sample, tmp_path) -> None:
    sample.loc[0, "alcohol"] = 120.0
    source = tmp_path / "in.csv"
    sample.to_csv(source, index=False)
    with pytest.raises(SchemaError):
        predict_file(trained_model.model_uri, source, tracking_uri=trained_model.tracking_uri)
    result = predict_file(
        trained_model.model_uri,
        source,
        allow_out_of_range=True,
        tracking_uri=trained_model.tracking_uri,
    )
    assert result.warnings[0].kind == "out_of_range"
    assert math.isfinite(result.predictions[0])


def test_cli_predict_writes_csv_to_stdout_or_exits_2(
    trained_model, sample, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    sample["id"] = range(100, 140)
    sample["colour"] = "red"
    source = tmp_path / "in.csv"
    sample.to_csv(source, index=False)
    answer = runner.invoke(
        app,
        [
            "predict",
            "--model",
            "models:/wine-test@champion",
            "--input",
            str(source),
            "--id-column",
            "id",
        ],
    )
    assert answer.exit_code == 0, answer.output
    lines = answer.stdout.strip().splitlines()
    assert lines[0] == "id,prediction"
    assert len(lines) == 41
    assert lines[1].startswith("100,")
    assert "warning: colour: unknown column, ignored" in answer.stderr
    answer = runner.invoke(
        app, ["predict", "--model", "models:/no-such-model@champion", "--input", str(source)]
    )
    assert answer.exit_code == 2
    assert "cannot load model" in answer.output


# --- the validator against MLflow's own scoring path -----------------------------------------


def cells_for(feature):
    inside = st.floats(feature.minimum, min(feature.maximum, 1e4), allow_nan=False)
    return st.one_of(
        inside,
        inside,
        inside,
        st.integers(0, int(min(feature.maximum, 1e4))),
        inside.map(repr),  # "7.4": MLflow converts it
        st.booleans(),  # MLflow converts True to 1.0
        st.none(),
        st.sampled_from(["abc", "", "1,5", "nan", "inf", "--1"]),
        st.floats(-1e6, -1e-3),
        st.floats(1e6, 1e300),  # outside the physical range
        st.integers(10**20, 10**30),
    )


@st.composite
def payloads(draw):
    rows = draw(st.integers(1, 4))
    table = [[draw(cells_for(f)) for f in FEATURES] for _ in range(rows)]
    form = draw(st.sampled_from(["dataframe_split", "dataframe_records", "inputs", "instances"]))
    if form == "dataframe_split":
        return {form: {"columns": COLUMNS, "data": table}}
    records = [dict(zip(COLUMNS, row, strict=True)) for row in table]
    if form == "inputs" and draw(st.booleans()):
        return {form: {c: [r[c] for r in records] for c in COLUMNS}}
    return {form: records}


def mlflow_answer(model, payload) -> np.ndarray | None:
    try:
        answer = invocations(
            json.dumps(payload), "application/json", model, model.metadata.get_input_schema()
        )
    except Exception:
        return None
    return np.asarray(json.loads(answer.response)["predictions"]) if answer.status == 200 else None


@pytest.mark.slow
@given(payload=payloads())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_we_accept_what_mlflow_accepts_within_the_ranges_and_score_it_identically(
    payload, mlflow_pyfunc, scorer
) -> None:
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    theirs = mlflow_answer(mlflow_pyfunc, payload)
    ours = parse_payload(payload)
    if ours.ok:
        assert theirs is not None, f"we accepted what MLflow rejects: {payload}"
        np.testing.assert_allclose(scorer.predict(ours.features), theirs, rtol=0, atol=1e-9)
    elif theirs is not None:  # MLflow scored it: the only reasons we may refuse are physical
        kinds = {issue.kind for issue in ours.errors}
        assert kinds <= {"out_of_range", "rule"}, (kinds, payload)
    else:  # both refuse: MLflow refuses only malformed cells, so we must have found one too
        kinds = {issue.kind for issue in ours.errors}
        assert kinds - {"out_of_range", "rule"}, (kinds, payload)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "text",
        {"dataframe_split": {"columns": COLUMNS}},
        {"inputs": [[1.0] * 11]},
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0] * 11]}, "inputs": []},
        {"dataframe_split": {"columns": "abc", "data": []}},
        {"inputs": {"pH": 3.0}},
    ],
)
def test_malformed_payloads_are_refused_before_any_value(payload) -> None:
    with pytest.raises(PayloadError):
        parse_payload(payload)


def test_an_existing_output_is_refused_without_overwrite(trained_model, red_csv, tmp_path) -> None:
    output = tmp_path / "scored.csv"
    output.write_text("precious\n")
    arguments = [
        "predict", "--model", trained_model.model_uri, "--input", str(red_csv),
        "--output", str(output), "--tracking-uri", trained_model.tracking_uri,
    ]  # fmt: skip
    refused = runner.invoke(app, arguments)
    assert refused.exit_code == 2, refused.output
    assert "--overwrite" in refused.output
    assert output.read_text() == "precious\n"  # untouched
    replaced = runner.invoke(app, [*arguments, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert output.read_text().startswith("fixed acidity")


def test_model_uri_typos_say_what_exists(trained_model, red_csv) -> None:
    def error_of(model: str) -> str:
        answer = runner.invoke(
            app,
            [
                "predict", "--model", model, "--input", str(red_csv),
                "--tracking-uri", trained_model.tracking_uri,
            ],
        )  # fmt: skip
        assert answer.exit_code == 2, answer.output
        return " ".join(answer.output.split())

    bare = error_of("wine-test")  # a registered name, not a URI
    assert "models:/wine-test@champion" in bare
    alias = error_of("models:/wine-test@champin")
    assert "no alias 'champin'" in alias
    assert "champion" in alias.split("no alias 'champin'")[1]
    missing = error_of("models:/wine-quality@champion")
    assert "`winequality train` logs a model but does not register it" in missing
    assert "wine-test" in missing  # what is registered there
