"""The tutorial's tracked run, end to end, on real MLflow stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from winequality import logged_model
from winequality import train as train_module
from winequality.cli import app
from winequality.errors import ModelCheckError
from winequality.schema import FEATURE_NAMES
from winequality.train import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[train_module.TrainResult, Path]:
    folder = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("WINEQUALITY_DATA", raising=False)
        result = train(TrainConfig(tracking_uri=f"sqlite:///{folder}/m.db"))  # the shipped data
    return result, folder


def test_the_tutorials_numbers_come_out(trained) -> None:
    result, _ = trained
    assert result.metrics["rmse"] == pytest.approx(0.8327, abs=1e-4)  # the tutorial's split
    assert result.metrics["r2"] == pytest.approx(0.0175, abs=1e-4)
    assert result.test_twins == 95  # the tutorial's split leaks: 95 test wines seen in training
    logged = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    assert logged["test_twins"] == 95
    assert logged["unseen_rmse"] == pytest.approx(result.unseen_metrics["rmse"], abs=1e-12)
    assert result.unseen_metrics["rmse"] != result.metrics["rmse"]
    assert (result.rows, result.duplicate_rows, result.train_rows, result.test_rows) == (
        1599,
        240,
        1199,
        400,
    )


def test_the_run_holds_everything_the_tutorial_logged_and_more(trained) -> None:
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
    params = run.data.params  # the tutorial's autolog names: plain, as MLflow's tutorials query
    assert params["alpha"] == "0.7"
    assert params["l1_ratio"] == "0.7"
    assert params["random_state"] == "42"
    assert params["scale"] == "False"
    assert not [p for p in params if "__" in p]
    assert tags["estimator_name"] == "ElasticNet"
    metrics = run.data.metrics
    assert metrics["rmse"] == pytest.approx(result.metrics["rmse"], abs=1e-12)
    assert {"mae", "r2", "training_r2_score", "training_root_mean_squared_error"} <= set(metrics)
    assert not [m for m in metrics if "X_test" in m]  # no duplicate post-training metrics
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"train", "test"}
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
    assert "scikit-learn==" in requirements
    assert "skops==" in requirements

    # as a user loads it: MLFLOW_ALLOW_PICKLE_DESERIALIZATION unset (skops needs no pickle)
    model = mlflow.pyfunc.load_model(result.run_model_uri)  # the tutorial's runs:/ form
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


def test_the_tutorials_copies_are_written(trained) -> None:
    result, folder = trained
    assert [p.name for p in result.written] == ["winequality-red.csv", "train.csv", "test.csv"]
    train_csv = pd.read_csv(folder / "data/train.csv", index_col=0)
    assert len(train_csv) == 1199
    assert "quality" in train_csv


def test_same_inputs_give_the_same_run(trained, red_csv, workdir) -> None:
    first, _ = trained
    second = train(
        TrainConfig(data=str(red_csv), tracking_uri=f"sqlite:///{workdir}/m.db", output_dir=None)
    )
    for key, value in first.metrics.items():
        assert second.metrics[key] == pytest.approx(value, abs=1e-12, rel=0)
    assert second.coefficients == first.coefficients
    assert second.intercept == first.intercept
    assert second.run_id != first.run_id


def test_bad_data_leaves_no_run_and_no_files(workdir, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join([*FEATURE_NAMES, "quality"]) + "\n" + ",".join(["x"] * 12) + "\n")
    answer = runner.invoke(app, ["train", "--data", str(bad)])
    assert answer.exit_code == 2
    assert "does not fit the wine feature schema (12 problems)" in answer.output
    assert not (workdir / "data").exists()
    assert not (workdir / "mlflow.db").exists()


def test_an_unusable_tracking_store_is_one_line_and_exit_2(workdir, red_csv) -> None:
    for uri, expected in (
        ("http://127.0.0.1:9", "cannot reach the MLflow tracking server"),
        ("nosuch://x", "unsupported tracking URI"),
        ("sqlite:////no/such/folder/m.db", "does not exist"),
    ):
        answer = runner.invoke(app, ["train", "--data", str(red_csv), "--tracking-uri", uri])
        assert answer.exit_code == 2, answer.output
        assert expected in answer.output
        assert "Traceback" not in answer.output
    assert not (workdir / "data").exists()


def test_a_failure_after_logging_fails_the_run_and_removes_the_model(
    workdir, red_csv, tracking_uri, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise ModelCheckError("simulated")

    monkeypatch.setattr(logged_model, "verify", broken)
    with pytest.raises(ModelCheckError):
        train(TrainConfig(data=str(red_csv), tracking_uri=tracking_uri, output_dir=None))
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("experiment_signature")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert not client.search_logged_models([experiment.experiment_id])


def test_cli_flags_and_tags(workdir, tutorial_csv, tracking_uri) -> None:
    answer = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tutorial_csv),
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
    assert run.data.params["l1_ratio"] == "0.2"


@pytest.mark.slow
def test_the_installed_command_runs_in_a_fresh_process(workdir) -> None:
    done = subprocess.run(
        [Path(sys.executable).with_name("winequality"), "train"],  # README's first command
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Active run id is" in done.stdout
    assert done.stderr == ""  # no warnings, logs or progress bars leak


def test_params_metrics_and_tags_are_those_the_tutorials_autolog_recorded(trained) -> None:
    """The same keys and values as a real sklearn autolog run of the tutorial's estimator."""
    from sklearn.linear_model import ElasticNet

    from winequality.data import load, split
    from winequality.schema import TARGET

    result, folder = trained
    train_frame, _ = split(load().frame)
    mlflow.set_tracking_uri(f"sqlite:///{folder}/autolog.db")
    mlflow.set_experiment("autolog reference")
    with mlflow.start_run() as reference:
        mlflow.sklearn.autolog(
            log_input_examples=False, log_model_signatures=False, log_models=False, silent=True
        )
        try:
            ElasticNet(alpha=0.7, l1_ratio=0.7, random_state=42).fit(
                train_frame[list(FEATURE_NAMES)], train_frame[[TARGET.name]]
            )
        finally:
            mlflow.sklearn.autolog(disable=True, silent=True)
    theirs = mlflow.MlflowClient().get_run(reference.info.run_id).data
    ours = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id).data
    assert theirs.params
    assert theirs.params.items() <= ours.params.items()
    assert {k for k in theirs.metrics if k.startswith("training_")} == {
        k for k in ours.metrics if k.startswith("training_")
    }
    for key, value in theirs.metrics.items():
        assert ours.metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    for key in ("estimator_name", "estimator_class"):
        assert ours.tags[key] == theirs.tags[key]


def test_the_data_file_is_logged_as_the_tutorial_logs_it(trained) -> None:
    from winequality.data import embedded_bytes

    result, _ = trained
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="winequality-red.csv", tracking_uri=result.tracking_uri
    )
    assert Path(local).read_bytes() == embedded_bytes("red")  # UCI's file, uncompressed


def test_a_users_refusal_of_model_deserialisation_is_respected(
    workdir, tracking_uri, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    result = train(TrainConfig(tracking_uri=tracking_uri, output_dir=None))
    assert mlflow.MlflowClient(tracking_uri).get_run(result.run_id).info.status == "FINISHED"
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"  # never overridden
    mlflow.set_tracking_uri(tracking_uri)  # where MLflow looks a `models:/` URI up
    with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.pyfunc.load_model(result.model_uri)  # MLflow's own refusal stands


def test_a_french_export_with_extra_columns_trains_with_a_warning(
    workdir, red_csv, tracking_uri
) -> None:
    rows = red_csv.read_text().replace(".", ",").splitlines()
    french = workdir / "export.csv"
    french.write_text(
        "\n".join([f'"lot";{rows[0]}'] + [f"L{i};{row}" for i, row in enumerate(rows[1:])]) + "\n"
    )
    answer = runner.invoke(app, ["train", "--data", str(french)])
    assert answer.exit_code == 0, answer.output
    assert "warning: lot: unknown column, ignored" in answer.stderr
    assert "│ RMSE                 │ 0.832726 │" in answer.stdout  # the same numbers


@pytest.mark.slow
def test_mlflow_run_runs_the_projects_train_entry_point(workdir) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(root),
            "-e",
            "train",
            "-P",
            "alpha=0.5",
            "-P",
            f"output_dir={workdir / 'data'}",  # not in the project's folder
            "--env-manager",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="params.alpha = '0.5'",
    )
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["l1_ratio"] == "0.7"
    assert "rmse" in runs[0].data.metrics
    assert client.search_logged_models([runs[0].info.experiment_id])


def test_too_few_rows_is_one_line_exit_2_and_no_run(workdir, red_csv) -> None:
    five = workdir / "five.csv"
    pd.read_csv(red_csv, sep=";").head(5).to_csv(five, index=False)
    answer = runner.invoke(app, ["train", "--data", str(five)])
    assert answer.exit_code == 2, answer.output
    assert "has 5 rows" in answer.output
    assert "at least" in answer.output
    assert len(answer.output.strip().splitlines()) == 1  # one line, no traceback
    assert not (workdir / "mlflow.db").exists()  # refused before the store was touched


def test_the_split_files_name_their_index_column(workdir, tracking_uri) -> None:
    from winequality.predict import predict_file

    trained = train(TrainConfig(tracking_uri=tracking_uri, output_dir=workdir / "data"))
    test_csv = workdir / "data" / "test.csv"
    assert test_csv.read_text().splitlines()[0].split(",")[0] == "row"
    result = predict_file(trained.model_uri, test_csv, tracking_uri=tracking_uri)
    assert "" not in {w.column for w in result.warnings}  # no nameless column
    assert "row" in {w.column for w in result.warnings}  # an index, named, ignored


def test_a_linear_model_with_every_coefficient_zero_is_warned_about(workdir) -> None:
    answer = runner.invoke(app, ["train", "--scale"])  # the tutorial's alpha on scaled data
    assert answer.exit_code == 0, answer.output
    assert "every coefficient is zero" in answer.stderr
