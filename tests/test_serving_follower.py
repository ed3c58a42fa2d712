"""`serve` follows a registry alias: new versions swap in under load, refused ones never serve."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from winequality.schema import FEATURE_NAMES
from winequality.scoring import load_scorer
from winequality.serving import create_app
from winequality.serving.metrics import SETTLE_SECONDS

from .conftest import ServerThread, close_pipes, free_port, metric, wait_for
from .conftest import split_body as body

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()
NAME = "wine-follow"


@pytest.fixture(scope="module")
def versions(trained_model) -> dict[str, str]:
    """`wine-follow` v1-v4 (the trained model), v5 a model winequality refuses (pickle)."""
    from sklearn.linear_model import ElasticNet

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    for _ in range(4):
        mlflow.register_model(trained_model.model_uri, NAME)
    with mlflow.start_run():
        unsafe = mlflow.sklearn.log_model(
            ElasticNet().fit(np.ones((3, 11)), [5, 6, 7]),
            name="unsafe",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    broken = mlflow.register_model(unsafe.model_uri, NAME).version
    client.set_registered_model_alias(NAME, "champion", "1")
    return {"broken": str(broken)}


@pytest.fixture
def alias(trained_model, versions) -> Iterator[mlflow.MlflowClient]:
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    client.set_registered_model_alias(NAME, "champion", "1")
    yield client
    client.set_registered_model_alias(NAME, "champion", "1")


def follower_app(trained_model, refresh: float, **options):
    uri = f"models:/{NAME}@champion"
    scorer = load_scorer(uri, trained_model.tracking_uri)
    return create_app(
        scorer, model_uri=uri, refresh=refresh, tracking_uri=trained_model.tracking_uri, **options
    )


# --- following the registry ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_alias_moves_three_times_under_load_without_a_failed_request(
    trained_model, versions, alias, red
) -> None:
    refresh = 0.5
    one_row = body(red.head(1))
    answers: list[tuple[float, float, int, str | None]] = []
    moves: list[tuple[float, str]] = [(0.0, "1")]
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                answer = http.post("/invocations", json=one_row)
                answers.append(
                    (
                        start,
                        time.monotonic(),
                        answer.status_code,
                        answer.headers.get("x-model-version"),
                    )
                )

    with ServerThread(follower_app(trained_model, refresh)) as url:
        threads = [threading.Thread(target=client_loop, args=(url,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        delays = []
        for version in ("2", "3", "4"):
            time.sleep(1.0)
            moved = time.monotonic()
            alias.set_registered_model_alias(NAME, "champion", version)
            moves.append((moved, version))
            while httpx.get(f"{url}/health").json()["model_version"] != version:
                assert time.monotonic() - moved < 30, f"version {version} never served"
                time.sleep(0.05)
            delays.append(time.monotonic() - moved)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert len(answers) > 200
    assert {status for _, _, status, _ in answers} == {200}  # zero failed requests
    for start, end, _, version in answers:
        # the versions the alias named from one refresh (plus loading) before the request
        # started until it ended
        allowed = {v for t, v in moves if t <= end}
        recent = [v for t, v in moves if t <= start - refresh - 1.0]
        if recent:
            allowed -= set(recent[:-1])
        assert version in allowed, (start, end, version, moves)
    assert {v for *_, v in answers} == {"1", "2", "3", "4"}
    # each swap came within one refresh period, plus the time to load the version
    assert max(delays) < refresh + 2.0, delays
    assert metric(metrics, "winequality_model_reloads_total", outcome="ok") == 3
    assert metric(metrics, "winequality_model_version") == 4


@pytest.mark.slow
def test_a_version_that_cannot_be_served_is_refused_and_the_old_one_keeps_serving(
    trained_model, versions, alias, red, caplog
) -> None:
    with ServerThread(follower_app(trained_model, 0.2)) as url, httpx.Client(base_url=url) as http:
        alias.set_registered_model_alias(NAME, "champion", versions["broken"])
        deadline = time.monotonic() + 30
        while http.get("/health").json()["last_reload_failure"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = http.get("/health").json()
        answer = http.post("/invocations", json=body(red.head(2)))
        metrics = http.get("/metrics").text
    assert health["model_version"] == "1"
    failure = health["last_reload_failure"]
    assert failure["version"] == versions["broken"]
    assert "winequality only loads the safe 'skops' format" in failure["message"]
    assert answer.status_code == 200
    assert answer.headers["x-model-version"] == "1"
    assert metric(metrics, "winequality_model_reloads_total", outcome="failed") == 1  # not retried
    assert "registry follow-up failed" in caplog.text


@pytest.mark.slow
def test_every_worker_follows_and_metrics_add_up_across_workers(
    trained_model, versions, alias, red, tmp_path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "winequality.cli", "serve", "--model", f"models:/{NAME}@champion",
        "--port", str(port), "--workers", "2", "--refresh", "0.5",
        "--tracking-uri", trained_model.tracking_uri, "--access-log", "off",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(url, server)
        # a new connection per request, so that the kernel spreads them over both workers
        close = {"Connection": "close"}
        for _ in range(60):
            answer = httpx.post(f"{url}/invocations", json=body(red.head(3)), headers=close)
            assert answer.status_code == 200
        time.sleep(2 * SETTLE_SECONDS)  # each worker folds what it counted every SETTLE_SECONDS
        scrapes = [httpx.get(f"{url}/metrics", headers=close).text for _ in range(10)]
        pids = {httpx.get(f"{url}/health", headers=close).json()["pid"] for _ in range(40)}
        assert len(pids) == 2  # both workers answer
        alias.set_registered_model_alias(NAME, "champion", "2")
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 or set(seen.values()) != {"2"}:
            assert time.monotonic() < deadline, seen
            health = httpx.get(f"{url}/health", headers=close).json()
            seen[health["pid"]] = health["model_version"]
    finally:
        server.terminate()
        server.wait(timeout=60)
        close_pipes(server)
    for text in scrapes:  # whichever worker answered, the whole server's counts
        assert metric(text, "winequality_requests_total", route="/invocations", status="200") == 60
        assert metric(text, "winequality_rows_scored_total") == 180


def test_an_alias_moved_while_the_server_started_names_the_version_it_loaded(
    trained_model, scorer, red
) -> None:
    """Loaded from the alias's version 1; the alias moves to version 2 (another logged model)
    before the server resolves it: the answers say 1, the version that scores them."""
    from winequality.logged_model import log_model

    name = "wine-startup-race"
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    first = mlflow.register_model(trained_model.model_uri, name).version
    with mlflow.start_run():
        other = log_model(scorer.model.estimator, red[COLUMNS].head(1), scorer.model.profile)
    second = mlflow.register_model(other.model_uri, name).version
    client.set_registered_model_alias(name, "champion", str(first))
    uri = f"models:/{name}@champion"
    loaded = load_scorer(uri, trained_model.tracking_uri)
    client.set_registered_model_alias(name, "champion", str(second))
    app = create_app(loaded, model_uri=uri, refresh=0, tracking_uri=trained_model.tracking_uri)
    with ServerThread(app) as url, httpx.Client(base_url=url) as http:
        answer = http.post("/invocations", json=body(red.head(1)))
        metadata = http.get("/metadata").json()
    assert answer.headers["x-model-version"] == str(first)
    assert metadata["version"] == str(first)
