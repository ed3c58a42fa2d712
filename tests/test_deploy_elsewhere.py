"""The logged model deployed without winequality, as the README's "Deploying the model with
other tools" section tells users to: MLflow's own batch scorer and loader; MLServer with its
MLflow runtime (the `mlserver` tier: MLServer 1.7 in an environment of its own, as
`deploy/mlserver/requirements.txt` pins it); KServe's InferenceService for it, checked against
KServe's API types (the `kserve` tier: `deploy/kserve/requirements.txt`)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from winequality import tracking
from winequality.predict import predict_file
from winequality.schema import FEATURE_NAMES
from winequality.scoring import load_scorer
from winequality.serving import create_app

from .conftest import ServerThread, close_pipes, free_port, split_body, tier_unavailable, wait_for

COLUMNS = list(FEATURE_NAMES)
ROOT = Path(__file__).resolve().parents[1]
MLSERVER_DEPLOY = ROOT / "deploy" / "mlserver"
MLSERVER_ENV = "WINEQUALITY_MLSERVER"  # an `mlserver` executable elsewhere than .venv-mlserver
KSERVE_SDK = ROOT / ".kserve-sdk"
KSERVE_MANIFEST = ROOT / "deploy" / "kserve" / "inferenceservice-mlserver.yaml"


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


# --- MLServer ----------------------------------------------------------------------------------


def pinned_requirements() -> dict[str, str]:
    lines = (MLSERVER_DEPLOY / "requirements.txt").read_text().splitlines()
    return dict(re.findall(r"^([\w-]+)==(\S+)$", "\n".join(lines), re.M))


def test_mlservers_environment_pins_what_the_model_is_logged_with() -> None:
    pins = pinned_requirements()
    assert pins["mlserver"] == pins["mlserver-mlflow"] == "1.7.1"
    for package in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"):
        assert pins[package] == importlib.metadata.version(package), package


@pytest.fixture(scope="module")
def mlserver_executable() -> Path:
    found = Path(os.environ.get(MLSERVER_ENV) or ROOT / ".venv-mlserver" / "bin" / "mlserver")
    if not found.exists():
        tier_unavailable(
            "mlserver",
            f"MLServer is not installed at {found}",
            "python -m venv .venv-mlserver && "
            ".venv-mlserver/bin/pip install -r deploy/mlserver/requirements.txt",
        )
    return found


@pytest.fixture(scope="module")
def mlserver_url(mlserver_executable, trained_model, tmp_path_factory) -> Iterator[str]:
    """MLServer serving the session's model as the README deploys it: the model downloaded
    with MLflow's CLI beside deploy/mlserver's model-settings.json, `mlserver start` on it."""
    folder = tmp_path_factory.mktemp("mlserver")
    shutil.copy(MLSERVER_DEPLOY / "model-settings.json", folder)
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained_model.tracking_uri}
    download = [sys.executable, "-m", "mlflow", "artifacts", "download"]
    download += ["-u", "models:/wine-test@champion", "-d", str(folder / "model")]
    subprocess.run(download, env=env, check=True, capture_output=True, timeout=120)
    port = free_port()
    env = {
        **os.environ,
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [str(mlserver_executable), "start", str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # MLServer starts a worker process: stop the group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, process, timeout=180, path="/v2/models/wine-quality/ready")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gone already: wait_for says why)
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        close_pipes(process)


def pd_request(frame: pd.DataFrame, datatype: str = "FP64") -> dict:
    """The request of MLServer's and KServe's documentation: one tensor per feature (`pd`)."""
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": c, "shape": [len(frame)], "datatype": datatype, "data": frame[c].tolist()}
            for c in COLUMNS
        ],
    }


@pytest.mark.slow
@pytest.mark.mlserver
def test_mlserver_scores_every_red_wine_as_we_do(mlserver_url, trained_model, red) -> None:
    uri = "models:/wine-test@champion"
    scorer = load_scorer(uri, trained_model.tracking_uri)
    app = create_app(scorer, model_uri=uri, tracking_uri=trained_model.tracking_uri)
    with ServerThread(app) as ours, httpx.Client(timeout=60) as http:
        for datatype in ("FP64", "FP32"):  # FP32: the documentation's own request
            body = pd_request(red, datatype)
            theirs = http.post(f"{mlserver_url}/v2/models/wine-quality/infer", json=body)
            assert theirs.status_code == 200, theirs.text
            (output,) = theirs.json()["outputs"]
            assert output["shape"] == [len(red), 1]  # MLServer answers a column
            v2 = http.post(f"{ours}/v2/models/wine-test/infer", json=body)
            assert v2.status_code == 200, v2.text
            np.testing.assert_allclose(
                v2.json()["outputs"][0]["data"], output["data"], rtol=0, atol=1e-12
            )
        invocations = http.post(f"{ours}/invocations", json=split_body(red)).json()
        first = pd_request(red)
        theirs = http.post(f"{mlserver_url}/v2/models/wine-quality/infer", json=first).json()
        np.testing.assert_allclose(
            invocations["predictions"], theirs["outputs"][0]["data"], rtol=0, atol=1e-12
        )


# --- KServe ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inference_service_schema() -> dict:
    if not (KSERVE_SDK / "kserve" / "models").is_dir():
        tier_unavailable(
            "kserve",
            f"KServe's API types are not installed in {KSERVE_SDK}",
            "python -m pip install --no-deps --target .kserve-sdk "
            "-r deploy/kserve/requirements.txt",
        )
    from .kserve_schema import inference_service_schema

    return inference_service_schema(KSERVE_SDK)


def manifest_problems(schema: dict, manifest: dict) -> list[tuple[str, str]]:
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        ("/".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(manifest)
    )


@pytest.mark.kserve
def test_the_kserve_manifest_is_an_inference_service_for_mlservers_runtime(
    inference_service_schema,
) -> None:
    manifest = yaml.safe_load(KSERVE_MANIFEST.read_text())
    assert manifest_problems(inference_service_schema, manifest) == []
    model = manifest["spec"]["predictor"]["model"]
    # what selects KServe's MLServer runtime for an MLflow model, speaking V2
    assert (model["modelFormat"]["name"], model["protocolVersion"]) == ("mlflow", "v2")
    definitions = inference_service_schema["$defs"]
    assert "storageUri" in definitions["V1beta1ModelSpec"]["properties"]
    assert definitions["V1beta1InferenceServiceSpec"]["required"] == ["predictor"]
    # the types neither SDK ships, taken as anything: a new one means a field goes unchecked
    unchecked = sorted(name for name, definition in definitions.items() if not definition)
    assert unchecked == ["KnativeDevServingPkgApisServingV1TrafficTarget", "V1PodSchedulingGroup"]
    # a quantity may be a number (`cpu: 1`), as the API server takes it
    numeric = broken(lambda m: m["spec"]["predictor"]["model"]["resources"]["limits"].update(cpu=1))
    assert manifest_problems(inference_service_schema, numeric) == []


def broken(change) -> dict:
    manifest = yaml.safe_load(KSERVE_MANIFEST.read_text())
    change(manifest)
    return manifest


BROKEN_MANIFESTS = {
    "a misspelled field": (
        lambda m: m["spec"]["predictor"]["model"].update(storageURI="s3://b/m"),
        ("spec/predictor/model", "Additional properties are not allowed ('storageURI' was"),
    ),
    "a count as text": (
        lambda m: m["spec"]["predictor"].update(minReplicas="one"),
        ("spec/predictor/minReplicas", "'one' is not of type 'integer'"),
    ),
    "no predictor": (
        lambda m: m["spec"].pop("predictor"),
        ("spec", "'predictor' is a required property"),
    ),
    "another API version": (
        lambda m: m.update(apiVersion="serving.kserve.io/v1alpha1"),
        ("apiVersion", "'serving.kserve.io/v1beta1' was expected"),
    ),
    "a misspelled resource key": (
        lambda m: m["spec"]["predictor"]["model"]["resources"].update(limit={"cpu": "1"}),
        ("spec/predictor/model/resources", "Additional properties are not allowed ('limit' was"),
    ),
}


@pytest.mark.kserve
@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
def test_a_broken_inference_service_is_refused_where_it_is_broken(
    inference_service_schema, case
) -> None:
    change, (where, message) = BROKEN_MANIFESTS[case]
    problems = manifest_problems(inference_service_schema, broken(change))
    assert [p[0] for p in problems] == [where]
    assert problems[0][1].startswith(message), problems
