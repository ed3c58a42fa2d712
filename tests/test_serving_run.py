"""`winequality serve` as a process: SIGTERM drains, a bad URI exits 2, worker processes share
the socket and die with their parent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from winequality.schema import FEATURE_NAMES

from .conftest import alive, children_of, close_pipes, cmdline, free_port, wait_for

COLUMNS = list(FEATURE_NAMES)


@pytest.fixture(scope="module")
def wines(red_csv: Path) -> pd.DataFrame:
    return pd.read_csv(red_csv, sep=";")[COLUMNS].head(25)


def server_env(trained_model) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": trained_model.tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.mark.slow
def test_cli_serve_finishes_in_flight_requests_on_sigterm(trained_model, wines) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            Path(sys.executable).with_name("winequality"),
            "serve",
            "--model",
            "models:/wine-test@champion",
            "--port",
            str(port),
        ],
        env=server_env(trained_model),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, process)
        body = json.dumps(
            {"dataframe_split": {"columns": COLUMNS, "data": wines.to_numpy().tolist()}}
        ).encode()
        sent_half = threading.Event()

        def slow_body():
            yield body[: len(body) // 2]
            sent_half.set()
            time.sleep(1.0)  # SIGTERM arrives while this request is in flight
            yield body[len(body) // 2 :]

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{url}/invocations",
                content=slow_body(),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            sent_half.wait(10)
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            answer = pending.result()
        assert answer.status_code == 200
        assert len(answer.json()["predictions"]) == 25
        # uvicorn re-raises SIGTERM once drained, so supervisors see why it stopped
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        close_pipes(process)


def test_cli_serve_refuses_a_bad_model_uri_with_exit_2(trained_model) -> None:
    from typer.testing import CliRunner

    from winequality.cli import app

    answer = CliRunner().invoke(
        app,
        [
            "serve",
            "--model",
            "models:/absent@champion",
            "--tracking-uri",
            trained_model.tracking_uri,
        ],
    )
    assert answer.exit_code == 2
    assert "cannot load model" in answer.output


def two_workers(trained_model) -> tuple[subprocess.Popen, str]:
    """`winequality serve --workers 2` in a session of its own; the process and its URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            Path(sys.executable).with_name("winequality"),
            "serve", "--model", trained_model.model_uri, "--port", str(port),
            "--workers", "2",
            "--access-log", "off",  # hundreds of lines would fill a pipe nobody reads
        ],
        env=server_env(trained_model),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_cli_serve_with_two_workers(trained_model, wines, mlflow_pyfunc) -> None:
    process, url = two_workers(trained_model)
    try:
        wait_for(url, process)
        expected = mlflow_pyfunc.predict(wines.astype("float64"))
        body = {"dataframe_split": {"columns": COLUMNS, "data": wines.to_numpy().tolist()}}

        def ask(_: int) -> tuple[int, list[float]]:
            with httpx.Client(base_url=url, timeout=30) as fresh:  # a new connection each
                pid = fresh.get("/health").json()["pid"]
                return pid, fresh.post("/invocations", json=body).json()["predictions"]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(160)))
        assert len({pid for pid, _ in answers}) == 2  # both worker processes answered
        for _, predictions in answers:  # and alike
            np.testing.assert_allclose(predictions, expected, atol=1e-9)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        close_pipes(process)


@pytest.mark.slow
def test_workers_stop_when_the_serving_command_is_killed(trained_model) -> None:
    """SIGKILL to the command itself (no handler runs): its workers notice and stop."""
    process, url = two_workers(trained_model)
    try:
        wait_for(url, process)
        workers = [pid for pid in children_of(process.pid) if "spawn_main" in cmdline(pid)]
        assert len(workers) == 2
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "a worker outlived the command"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
