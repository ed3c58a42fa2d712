"""The held-out rows travel with the run: logged as an artifact and as the run's `test` dataset,
with a source MLflow loads, so `mlflow.models.evaluate` reruns from the run alone."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import mlflow_server
from winequality import logged_model, schema, tracking
from winequality.errors import ModelLoadError
from winequality.train import TrainConfig, train


def rerun_evaluate(model_uri: str, rows: pd.DataFrame, experiment: str) -> float:
    """MLflow's own evaluation of the model on `rows`: its RMSE. (Its run goes to an experiment
    named here, never through `set_experiment`: that would stay active for later tests.)"""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id):
        result = mlflow.models.evaluate(
            model_uri, rows, targets=schema.TARGET.name, model_type="regressor"
        )
    return float(result.metrics["root_mean_squared_error"])


def held_out_dataset(run_id: str, uri: str):
    run = tracking.client(uri).get_run(run_id)
    by_context = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(by_context) == {"train", "test"}
    return by_context["test"]


def test_a_local_store_run_reruns_mlflow_evaluate_from_its_dataset_alone(trained_model) -> None:
    result, uri = trained_model.result, trained_model.tracking_uri
    with tracking.activated(uri):
        dataset = held_out_dataset(result.run_id, uri)
        # the dataset's own source, loaded by MLflow: no split rebuilt, no artifact path known
        source = mlflow.data.get_source(dataset)
        rows = pd.read_csv(source.load())
        rmse = rerun_evaluate(result.model_uri, rows, "held-out-recheck")
    assert len(rows) == 400
    assert list(rows.columns) == [*schema.FEATURE_NAMES, schema.TARGET.name]
    assert rmse == pytest.approx(result.metrics["rmse"], abs=1e-9)
    logged = tracking.client(uri).get_run(result.run_id).data.metrics["rmse"]
    assert rmse == pytest.approx(logged, abs=1e-9)
    pd.testing.assert_frame_equal(logged_model.read_held_out(result.run_id, uri), rows)


@pytest.mark.slow
def test_a_tracking_server_run_reruns_mlflow_evaluate_from_the_run_alone(tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as uri:
        result = train(TrainConfig(tracking_uri=uri, output_dir=None))
        rows = logged_model.read_held_out(result.run_id, uri)  # through the server's proxy
        with tracking.activated(uri):
            dataset = held_out_dataset(result.run_id, uri)
            # the artifact proxy's URL: MLflow's HTTP source loads it too
            assert dataset.source_type == "http"
            url = json.loads(dataset.source)["url"]
            assert url.startswith(f"{uri}/api/2.0/mlflow-artifacts/artifacts/")
            loaded = pd.read_csv(mlflow.data.get_source(dataset).load())
            rmse = rerun_evaluate(result.model_uri, rows, "held-out-recheck")
    pd.testing.assert_frame_equal(loaded, rows, check_exact=False, rtol=0, atol=1e-12)
    assert len(rows) == 400
    assert rmse == pytest.approx(result.metrics["rmse"], abs=1e-9)


def test_a_run_without_held_out_rows_is_named(tracking_uri) -> None:
    client = tracking.client(tracking_uri)
    run = client.create_run(client.create_experiment("older"))
    with pytest.raises(ModelLoadError, match=f"run {run.info.run_id} has no held-out rows"):
        logged_model.read_held_out(run.info.run_id, tracking_uri)
    with pytest.raises(ModelLoadError, match="cannot fetch the held-out rows of run absent"):
        logged_model.read_held_out("absent", tracking_uri)


def test_a_tracking_uris_credentials_stay_out_of_the_stored_source() -> None:
    artifact = "1/run/artifacts/held_out/test.csv"
    source = logged_model.loadable_source(
        f"mlflow-artifacts:/{artifact}", "https://alice:s3cret@host/prefix"
    )
    assert source == f"https://host/prefix/api/2.0/mlflow-artifacts/artifacts/{artifact}"
