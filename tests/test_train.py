"""The seed's tracked run, end to end, on real MLflow stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from winequality import train as train_module
from winequality.cli import app
from winequality.schema import FEATURE_NAMES
from winequality.train import TrainConfig, allow_model_deserialization, train

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(red_csv, tmp_path_factory) -> tuple[train_module.TrainResult, Path]:
    folder = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = train(TrainConfig(data=str(red_csv), tracking_uri=f"sqlite:///{folder}/m.db"))
    return result, folder


def test_the_seeds_numbers_come_out(trained) -> None:
    result, _ = trained
    assert result.metrics["rmse"] == pytest.approx(0.8327, abs=1e-4)  # the seed's split
    assert result.metrics["r2"] == pytest.approx(0.0175, abs=1e-4)
    assert (result.rows, result.duplicate_rows, result.train_rows, result.test_rows) == (
        1599,
        240,
        1199,
        400,
    )


def test_the_run_holds_everything_the_seed_logged_and_more(trained) -> None:
    result, _ = trained
    mlflow.set_tracking_uri(result.tracking_uri)
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "experiment_signature"
    tags = run.data.tags
    assert {k: tags[k] for k in ("engineering", "release.candidate", "release.version")} == {
        "engineering": "ML platform",
        "release.candidate": "RC1",
        "release.version": "2.0",
    }
    assert tags["winequality.version"] == "0.1.0"
    params = run.data.params  # autologged, once
    assert params["elasticnet__alpha"] == "0.7" and params["elasticnet__l1_ratio"] == "0.7"
    assert params["elasticnet__random_state"] == "42"
    metrics = run.data.metrics
    assert metrics["rmse"] == pytest.approx(result.metrics["rmse"], abs=1e-12)
    assert {"mae", "r2", "training_r2_score", "training_root_mean_squared_error"} <= set(metrics)
    assert not [m for m in metrics if "X_test" in m]  # no duplicate post-training metrics
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"training", "testing"}
    assert all(i.dataset.digest and i.dataset.source for i in run.inputs.dataset_inputs)
    files = [a.path for a in client.list_artifacts(result.run_id)]
    assert "winequality-red.csv" in files


def test_the_logged_model_has_the_right_signature_and_serves(trained) -> None:
    result, _ = trained
    mlflow.set_tracking_uri(result.tracking_uri)
    info = mlflow.models.get_model_info(result.model_uri)
    assert info.signature.inputs.input_names() == list(FEATURE_NAMES)
    assert info.signature.outputs.to_dict() == [{"type": "double", "required": True}]
    assert info.flavors["sklearn"]["serialization_format"] == "skops"
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    requirements = (local / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "skops==" in requirements

    with allow_model_deserialization():
        model = mlflow.pyfunc.load_model(result.run_model_uri)  # the seed's runs:/ form
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert example.shape == (5, 11)
    predictions = model.predict(example)
    assert np.all((predictions > 3) & (predictions < 8))
    with pytest.raises(MlflowException, match="pH"):
        model.predict(example.drop(columns=["pH"]))
    text = example.astype(object)
    text.loc[0, "alcohol"] = "strong"
    with pytest.raises(MlflowException, match="alcohol"):
        model.predict(text)


def test_the_seeds_copies_are_written(trained) -> None:
    result, folder = trained
    assert [p.name for p in result.written] == ["winequality-red.csv", "train.csv", "test.csv"]
    train_csv = pd.read_csv(folder / "data/train.csv", index_col=0)
    assert len(train_csv) == 1199 and "quality" in train_csv


def test_same_inputs_give_the_same_run(trained, red_csv, workdir) -> None:
    first, _ = trained
    second = train(
        TrainConfig(data=str(red_csv), tracking_uri=f"sqlite:///{workdir}/m.db", output_dir=None)
    )
    for key, value in first.metrics.items():
        assert second.metrics[key] == pytest.approx(value, abs=1e-12, rel=0)
    assert second.coefficients == first.coefficients and second.intercept == first.intercept
    assert second.run_id != first.run_id


def test_bad_data_leaves_no_run_and_no_files(workdir, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join([*FEATURE_NAMES, "quality"]) + "\n" + ",".join(["x"] * 12) + "\n")
    answer = runner.invoke(app, ["train", "--data", str(bad)])
    assert answer.exit_code == 2
    assert "does not fit the wine feature schema (12 problems)" in answer.output
    assert not (workdir / "data").exists() and not (workdir / "mlflow.db").exists()


def test_an_unusable_tracking_store_is_one_line_and_exit_2(workdir, red_csv) -> None:
    for uri, expected in (
        ("http://127.0.0.1:9", "cannot reach the MLflow tracking server"),
        ("nosuch://x", "unsupported tracking URI"),
        ("sqlite:////no/such/folder/m.db", "does not exist"),
    ):
        answer = runner.invoke(app, ["train", "--data", str(red_csv), "--tracking-uri", uri])
        assert answer.exit_code == 2, answer.output
        assert expected in answer.output and "Traceback" not in answer.output
    assert not (workdir / "data").exists()


def test_a_failure_after_logging_fails_the_run_and_removes_the_model(
    workdir, red_csv, tracking_uri, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise train_module.ModelCheckError("simulated")

    monkeypatch.setattr(train_module, "verify_logged_model", broken)
    with pytest.raises(train_module.ModelCheckError):
        train(TrainConfig(data=str(red_csv), tracking_uri=tracking_uri, output_dir=None))
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("experiment_signature")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert not client.search_logged_models([experiment.experiment_id])


def test_cli_flags_and_tags(workdir, seed_csv, tracking_uri) -> None:
    answer = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(seed_csv),
            "--alpha",
            "0.5",
            "--l1_ratio",
            "0.2",
            "--tag",
            "release.version=3.0",
            "--experiment",
            "other",
        ],
    )
    assert answer.exit_code == 0, answer.output
    for line in (
        "The set tracking uri is sqlite:///mlflow.db",
        "Name",
        "Experiment_id",
        "Artifact Location",
        "Lifecycle_stage",
        "Creation timestamp",
        "Elasticnet model (alpha=0.500000, l1_ratio=0.200000)",
        "RMSE",
        "MAE",
        "R2",
        "The artifact path is",
        "Active run id is",
        "Active run name is",
    ):
        assert line in answer.output
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("other").experiment_id])
    assert run.data.tags["release.version"] == "3.0"
    assert run.data.params["elasticnet__l1_ratio"] == "0.2"


@pytest.mark.slow
def test_the_installed_command_runs_in_a_fresh_process(workdir, red_csv) -> None:
    done = subprocess.run(
        [Path(sys.executable).with_name("winequality"), "train", "--data", str(red_csv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Active run id is" in done.stdout
    assert done.stderr == ""  # no warnings, logs or progress bars leak
