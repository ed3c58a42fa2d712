"""The image's build-time check, and the bytecode it leaves behind.

The Containerfile's build stage runs this with the environment it has just installed, before
anything is compiled. It saves one model of every family the sweep offers (MLflow's skops
format, the wine schema's signature, a reference profile, as `train` logs them), loads each as
the server loads a model, then starts `winequality serve` on one, asks every route once
(MLflow's protocol, V2, the page, OpenAPI, /metrics, /drift, the health probes) and stops it
with SIGTERM, expecting exit 0. Any failure fails the build. Then it takes each step of following
a tracking server over HTTP against a port where nothing listens (the default target's way).

Python writes the bytecode of each module it imports on the way, so the image carries compiled
code for what the server runs and nothing else (57 MB instead of 100 MB for every module of
every package; tests/test_container.py checks that serving imports none uncompiled).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.sklearn
import orjson

from winequality import data, model, schema
from winequality.drift import PROFILE_FILE, Profile
from winequality.scoring import load_scorer


def save_models(root: Path) -> list[Path]:
    wine = data.load()
    features = wine.frame[list(schema.FEATURE_NAMES)].astype("float64")
    target = wine.frame[schema.TARGET.name]
    profile = orjson.dumps(Profile.from_features(features.to_numpy()).to_dict())
    folders = []
    for name, family in model.FAMILIES.items():
        params = {axis: values[0] for axis, values in family.grid.items()}
        estimator = family.build(params).fit(features, target)
        folder = root / name
        mlflow.sklearn.save_model(
            estimator,
            folder,
            signature=schema.model_signature(),
            input_example=schema.input_example(features),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=_trusted(estimator),
        )
        (folder / PROFILE_FILE).write_bytes(profile)
        load_scorer(str(folder))  # what the server does with each family's model
        folders.append(folder)
    return folders


def _trusted(estimator: object) -> list[str] | None:
    from winequality.logged_model import skops_trusted_types

    return skops_trusted_types(estimator) or None


def serve_once(folder: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [Path(sys.executable).with_name("winequality"), "serve", "--model", str(folder),
         "--port", str(port), "--host", "127.0.0.1", "--drain-delay", "0", "--access-log", "off"],
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base, server)
        rows = data.load().frame[list(schema.FEATURE_NAMES)].head(3).to_numpy().tolist()
        split = {"dataframe_split": {"columns": list(schema.FEATURE_NAMES), "data": rows}}
        answer = _ask(base + "/invocations", split)
        assert len(answer["predictions"]) == 3, answer
        v2 = {"inputs": [{"name": "input-0", "shape": [3, 11], "datatype": "FP64",
                          "data": [x for row in rows for x in row]}]}  # fmt: skip
        assert len(_ask(base + "/v2/models/wine-quality/infer", v2)["outputs"][0]["data"]) == 3
        for path in ("/", "/openapi.json", "/metrics", "/drift", "/health/ready", "/ping",
                     "/v2/models/wine-quality", "/v2/health/live"):  # fmt: skip
            _ask(base + path)
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(30)
    assert status == 0, f"winequality serve exited {status} after SIGTERM"


def _ask(url: str, body: object | None = None) -> dict:
    request = urllib.request.Request(url)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:
        content = answer.read()
    return json.loads(content) if content.startswith(b"{") else {}


def _wait(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"winequality serve exited {server.returncode} at start")
        try:
            _ask(base + "/health/ready")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise SystemExit("winequality serve did not answer within 60 s")


def reach_for_a_registry() -> None:
    """Import what following a tracking server over HTTP imports (the default target's way):
    each call of that path, against a port where nothing listens, so that each fails at once."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    from winequality import logged_model, tracking
    from winequality.serving.follower import served_version

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    uri_of_model = "models:/wine-quality@champion"
    attempts = (
        lambda: tracking.connect(uri, create=False),
        lambda: served_version(uri_of_model, uri, "m-0"),
        lambda: logged_model.download(uri_of_model, uri, Path(tempfile.mkdtemp())),
        lambda: tracking.client(uri).get_model_version("wine-quality", "1"),
        lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=f"mlflow-artifacts://{uri.removeprefix('http://')}/1/model",
            dst_path=tempfile.mkdtemp(),
        ),
    )
    for attempt in attempts:
        try:
            attempt()
        except Exception:  # nothing listens: each fails, having imported its path
            continue
        raise SystemExit("a call to a closed port succeeded")


def main() -> None:
    assert not sys.flags.dont_write_bytecode, "the point is the bytecode: unset it"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the server process too
    with tempfile.TemporaryDirectory() as root:
        folders = save_models(Path(root))
        serve_once(folders[0])
        reach_for_a_registry()
    print(f"warm-up: {len(folders)} families loaded, every route answered, exit 0 on SIGTERM")


if __name__ == "__main__":
    main()
