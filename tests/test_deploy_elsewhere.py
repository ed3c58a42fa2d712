"""The logged model deployed without winequality: MLflow's own batch scorer and loader, as the
README's "Deploying the model with other tools" section tells users to run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from winequality import tracking
from winequality.predict import predict_file
from winequality.schema import FEATURE_NAMES

COLUMNS = list(FEATURE_NAMES)


@pytest.fixture
def whole_numbers(red, tmp_path) -> Path:
    """Wines whose sulfur dioxide cells are written as whole numbers (`11`, not `11.0`)."""
    frame = red.head(20).copy()
    for column in ("free sulfur dioxide", "total sulfur dioxide"):
        frame[column] = frame[column].round().astype(int)
    path = tmp_path / "whole.csv"
    frame.to_csv(path, index=False)
    return path


def mlflow_predict(trained_model, source: Path, output: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": trained_model.tracking_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    command = [sys.executable, "-m", "mlflow", "models", "predict", "-m", trained_model.model_uri]
    command += ["-i", str(source), "-t", "csv", "-o", str(output), "--env-manager", "local"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_models_predict_scores_like_us_once_the_cells_are_doubles(
    trained_model, whole_numbers, tmp_path
) -> None:
    ours = predict_file(
        trained_model.model_uri, whole_numbers, tracking_uri=trained_model.tracking_uri
    )
    refused = mlflow_predict(trained_model, whole_numbers, tmp_path / "refused.json")
    assert refused.returncode != 0
    assert "Can not safely convert int64 to float64" in refused.stderr  # the README's pitfall
    doubles = tmp_path / "doubles.csv"
    pd.read_csv(whole_numbers).astype("float64").to_csv(doubles, index=False)  # the fix
    done = mlflow_predict(trained_model, doubles, tmp_path / "scored.json")
    assert done.returncode == 0, done.stderr
    theirs = json.loads((tmp_path / "scored.json").read_text())["predictions"]
    assert ours.predictions is not None
    np.testing.assert_allclose(theirs, ours.predictions, rtol=0, atol=1e-12)


def test_mlflows_loader_needs_doubles_too(trained_model, whole_numbers) -> None:
    with tracking.activated(trained_model.tracking_uri):  # where MLflow resolves models:/m-…
        model = mlflow.pyfunc.load_model(trained_model.model_uri)
    frame = pd.read_csv(whole_numbers)[COLUMNS]
    with pytest.raises(MlflowException, match="Can not safely convert int64 to float64"):
        model.predict(frame)
    assert len(model.predict(frame.astype("float64"))) == len(frame)
