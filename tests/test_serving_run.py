"""`winequality serve` as a process: readiness and the drain (SIGTERM under 50 clients, with one
and two workers; a second signal), a bad URI exits 2, worker processes share the socket and die
with their parent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from winequality.schema import FEATURE_NAMES
from winequality.serving import create_app
from winequality.serving.lifecycle import Lifecycle

from .conftest import (
    ServerThread,
    alive,
    children_of,
    close_pipes,
    cmdline,
    free_port,
    split_body,
    wait_for,
)

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
        assert process.wait(timeout=30) == 0  # drained: a clean exit, not death by SIGTERM
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
            # 16 clients may all land on one worker: these tests are about the workers, not
            # overload, so every client gets a slot (admission has tests of its own)
            "--max-inflight", "16", "--max-queue-wait-ms", "2000",
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


def worker_pids(process: subprocess.Popen, count: int, within: float = 60) -> list[int]:
    """The command's worker processes, once there are at least `count`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        workers = [pid for pid in children_of(process.pid) if "spawn_main" in cmdline(pid)]
        if len(workers) >= count:
            return workers
        time.sleep(0.01)
    raise AssertionError(f"the command did not start {count} workers")


class SleepingChild:
    """Stands for a worker process (start, pid, is_alive) as the supervisor sees one."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.exitcode: int | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def test_a_signal_before_a_worker_started_reaches_it_once_started() -> None:
    """The command's signal can come while its workers are still being started: those not yet
    started get it as they start (else they would serve on, and the command wait for good)."""
    from winequality.serving.run import FORCED, _Supervisor

    started, later = SleepingChild(), SleepingChild()
    supervisor = _Supervisor([started, later])
    try:
        supervisor.start(started)
        supervisor.forward(signal.SIGTERM, None)
        supervisor.start(later)
        codes = [child.process.wait(timeout=10) for child in (started, later)]
    finally:
        for child in (started, later):
            if child.is_alive():
                child.process.kill()
                child.process.wait()
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
    # a worker ended by that signal before it could install a handler stopped while loading
    later.exitcode = -signal.SIGTERM
    assert supervisor.exit_status(later) == FORCED


@pytest.mark.slow
def test_a_worker_killed_stops_the_command_with_exit_1(trained_model) -> None:
    """A worker gone unbidden (the OOM killer, say): the command drains the other and exits 1,
    so its orchestrator starts a whole one again, instead of serving on at half strength."""
    process, url = two_workers(trained_model)
    try:
        wait_for(url, process)
        first, second = worker_pids(process, 2)
        os.kill(first, signal.SIGKILL)
        assert process.wait(timeout=30) == 1
        deadline = time.monotonic() + 10
        while alive(second) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(second)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_sigterm_while_the_workers_start_stops_every_one_of_them(trained_model) -> None:
    """A stop asked while the workers are being started or load their model reaches each of
    them (none is left serving, the command does not hang, none dies of the signal)."""
    process, _ = two_workers(trained_model)
    try:
        workers = worker_pids(process, 1)  # the first is starting; the second maybe not yet
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers)
        # 130: stopped while loading, as the single process does; 0: it had begun to serve
        assert code in (0, 130)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- readiness and the drain --------------------------------------------------------------------

PROBES = ("/ping", "/health/ready", "/v2/health/ready")


def test_readiness_turns_503_and_answers_close_while_draining(scorer, wines) -> None:
    lifecycle = Lifecycle()
    app = create_app(scorer, lifecycle=lifecycle, token="s3cret")
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for path in (*PROBES, "/health/live", "/v2/health/live", "/health"):
            assert http.get(path).status_code == 200, path  # probes need no token
        assert http.get("/health/ready").json() == {"ready": True, "draining": False}
        lifecycle.drain()  # what the first SIGTERM does
        for path in PROBES:
            assert http.get(path).status_code == 503, path
        assert http.get("/health/ready").json() == {"ready": False, "draining": True}
        assert http.get("/v2/health/ready").json() == {"ready": False}
        assert http.get("/health/live").json() == {"live": True}  # alive all the same
        health = http.get("/health")
        assert (health.status_code, health.json()["draining"]) == (200, True)
        scored = http.post(
            "/invocations", json=split_body(wines), headers={"Authorization": "Bearer s3cret"}
        )
        assert scored.status_code == 200  # still served while draining, but
        assert scored.headers["connection"] == "close"  # keep-alive clients go elsewhere


def serve_process(trained_model, port: int, *options: str, stderr: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [
            Path(sys.executable).with_name("winequality"),
            "serve", "--model", trained_model.model_uri, "--port", str(port), *options,
        ],
        env=server_env(trained_model),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_50_clients_without_a_failed_request(trained_model, wines, workers) -> None:
    """50 closed-loop clients; SIGTERM: readiness 503 promptly, no request sent before it
    turned fails or is reset, and the command exits 0 within drain + timeout + 1 s."""
    drain, timeout = 2.0, 5
    port = free_port()
    options = ["--workers", str(workers), "--drain-delay", str(drain)]
    options += ["--shutdown-timeout", str(timeout), "--access-log", "off"]
    # the drain is under test, not overload (tests/test_serving_load.py): all 50 get a slot
    options += ["--max-inflight", "50", "--max-queue-wait-ms", "2000"]
    process = serve_process(trained_model, port, *options, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    body = split_body(wines.head(5))
    results: list[tuple[float, object]] = []  # (sent at, status code or the error)
    closing: list[tuple[float, str | None]] = []  # (sent at, the answer's Connection header)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    answer = http.post("/invocations", json=body)
                    results.append((sent, answer.status_code))
                    closing.append((sent, answer.headers.get("connection")))
                except httpx.HTTPError as exc:
                    results.append((sent, repr(exc)))
                    time.sleep(0.01)  # (refused once the socket is closed: do not spin)

    clients = [threading.Thread(target=client) for _ in range(50)]
    try:
        wait_for(url, process, path="/health/ready")
        for thread in clients:
            thread.start()
        time.sleep(2)  # under load
        signalled = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)  # (as a terminal or a container runtime does)
        turned = None
        while turned is None and time.monotonic() - signalled < 5:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 503:
                    turned = time.monotonic()
            time.sleep(0.005)
        assert turned is not None, "readiness never turned 503"
        assert turned - signalled < 1.0  # (the exact latency: bench/serve.py)
        code = process.wait(timeout=drain + timeout + 30)
        ended = time.monotonic()
        assert code == 0
        assert ended - signalled <= drain + timeout + 1
    finally:
        stop.set()
        for thread in clients:
            if thread.is_alive():
                thread.join(timeout=30)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        close_pipes(process)
    before = [outcome for sent, outcome in results if sent < turned]
    assert len(before) > 100  # (the load was real)
    failed = [outcome for outcome in before if outcome != 200]
    assert failed == [], f"{len(failed)} of {len(before)} requests failed: {failed[:3]}"
    # while draining, every answer tells its keep-alive client to go elsewhere
    draining = [header for sent, header in closing if sent > turned]
    assert len(draining) > 10
    assert set(draining) == {"close"}


@pytest.mark.slow
def test_a_second_signal_ends_at_once_with_130_and_the_access_log_written(
    trained_model, wines, tmp_path
) -> None:
    port = free_port()
    with open(tmp_path / "stderr", "wb") as stderr:
        process = serve_process(trained_model, port, "--drain-delay", "60", stderr=stderr)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(url, process, path="/health/ready")
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(7):
                    assert http.post("/invocations", json=split_body(wines)).status_code == 200
            # at once after the last answer, before the access log's next write (every 0.1 s):
            # the lines still queued are written on the way out, or this count misses them
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)  # drains for a minute...
            process.send_signal(signal.SIGINT)  # ...unless told again
            assert process.wait(timeout=10) == 130
            assert time.monotonic() - signalled < 5
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = [json.loads(line) for line in (tmp_path / "stderr").read_bytes().splitlines()
             if line.startswith(b"{")]  # fmt: skip
    assert sum(line["path"] == "/invocations" for line in lines) == 7


@pytest.mark.slow
def test_sigterm_while_the_model_loads_stops_like_ctrl_c() -> None:
    """As a container's PID 1, a signal with no handler is dropped: SIGTERM must stop a start
    that hangs (here on a tracking server that accepts and never answers) as Ctrl+C does."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(60)
        process = subprocess.Popen(
            [Path(sys.executable).with_name("winequality"), "serve",
             "--model", "models:/wine@champion", "--port", str(free_port()),
             "--tracking-uri", f"http://127.0.0.1:{silent.getsockname()[1]}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        connection, _ = silent.accept()  # the command is asking the tracking server: loading
        with connection:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
