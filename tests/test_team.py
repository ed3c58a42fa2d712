"""Team scale: an MLflow tracking server on PostgreSQL and two sweep workers sharing a study,
with and without the database dropping away in the middle of the sweep."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest

from .conftest import close_pipes, free_port, tier_unavailable, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
HOST, PORT = "127.0.0.1", 5432


class Proxy:
    """A TCP proxy the test owns, in front of PostgreSQL; `cut()` drops every connection and
    refuses new ones for a while, as a network or database outage would."""

    def __init__(self, port: int) -> None:
        self.target = (HOST, port)
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.down_until = 0.0
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # connections idle in a pool for as long as they like
            with self.lock:
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self.lock:
            self.open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        self.cuts += 1
        with self.lock:
            doomed = list(self.open)
        for s in doomed:
            self._close(s)

    def close(self) -> None:
        self.listener.close()
        self.cut(0)


@pytest.fixture
def server() -> str:
    """PostgreSQL as a URL prefix (user postgres, trust auth), or the tier is unavailable."""
    import psycopg

    try:
        psycopg.connect(f"postgresql://postgres@{HOST}:{PORT}/postgres", connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        tier_unavailable(
            "postgres",
            f"no PostgreSQL server at {HOST}:{PORT} ({str(exc).strip().splitlines()[0]})",
            "start one with trust auth for user postgres (Debian: apt-get install postgresql)",
        )
    return f"postgresql://postgres@{HOST}:{PORT}"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    owned = Proxy(PORT)
    yield owned
    owned.close()


@pytest.fixture
def databases(server: str) -> Iterator[tuple[str, str]]:
    """Two throwaway databases (MLflow's and Optuna's) by name, dropped afterwards."""
    import psycopg

    names = [f"wq_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")]
    admin = psycopg.connect(f"{server}/postgres", autocommit=True)
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f'CREATE DATABASE "{name}"')
    yield names[0], names[1]
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def start_tracking_server(database_url: str, artifacts: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            database_url,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    wait_for(url, process, timeout=180, path="/health")
    return url, process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # its uvicorn may wait on a dead pool: end it
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
    close_pipes(process)


def run_team(
    tracking: str, storage: str, study: str, trials: int, cwd: Path, during=None
) -> list[tuple[str, str]]:
    """Two `winequality sweep` processes on one study; `during(study_storage)` runs meanwhile."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    command = [str(Path(sys.executable).with_name("winequality")), "sweep"]
    command += ["--trials", str(trials), "--folds", "3", "--study", study, "--storage", storage]
    workers = [
        subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    if during is not None:
        during()
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    return outputs


def unpooled(url: str) -> optuna.storages.RDBStorage:
    """The test's own view of a study: no pool, so no connection outlives its use."""
    from sqlalchemy.pool import NullPool

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})


def check_study(tracking: str, storage: str, study: str, trials: int, outputs) -> None:
    """Exactly N finished trials, N trial runs, no parameter set twice, one champion."""
    assert sum("Registered wine-quality" in out for out, _ in outputs) == 1  # one finalizer
    for out, _ in outputs:
        assert "View run" not in out  # one link to the parent, not one per trial
        assert "View the sweep at http://" in out
    rdb = unpooled(storage)
    loaded = optuna.load_study(study_name=study, storage=rdb)
    rdb.remove_session()
    rdb.engine.dispose()
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials
    assert not [t for t in loaded.trials if t.state == optuna.trial.TrialState.RUNNING]

    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("winequality-sweep")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`winequality.study` = '{study}' and tags.`winequality.role` = 'trial'",
    )
    numbers = sorted(int(r.data.tags["winequality.trial"]) for r in children)
    assert numbers == sorted(t.number for t in complete)  # N runs, none twice
    drawn = [tuple(sorted(r.data.params.items())) for r in children]
    assert len(set(drawn)) == len(drawn) == trials  # no parameter set drawn twice
    assert len({r.data.tags["winequality.worker"] for r in children}) == 2  # both worked
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`winequality.study` = '{study}' and tags.`winequality.role` = 'sweep'",
    )
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    versions = client.search_model_versions("name = 'wine-quality'")
    assert len(versions) == 1
    assert str(client.get_model_version_by_alias("wine-quality", "champion").version) == "1"


def test_two_workers_share_one_study_and_one_tracking_server(server, databases, tmp_path) -> None:
    trials, study = 30, "team"
    tracking, process = start_tracking_server(f"{server}/{databases[0]}", tmp_path / "a")
    try:
        storage = f"{server}/{databases[1]}"
        outputs = run_team(tracking, storage, study, trials, tmp_path)
        check_study(tracking, storage, study, trials, outputs)
    finally:
        stop(process)


def test_the_team_waits_out_a_database_outage(server, databases, proxy, tmp_path) -> None:
    trials, study = 40, "outage"
    via_proxy = f"postgresql://postgres@{HOST}:{proxy.port}"
    tracking, process = start_tracking_server(f"{via_proxy}/{databases[0]}", tmp_path / "a")
    storage = f"{via_proxy}/{databases[1]}"
    direct = f"{server}/{databases[1]}"

    watcher = unpooled(direct)  # the test's own view, not through the proxy

    def outage() -> None:  # in the middle of the sweep, every connection drops for 10 s
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                done = optuna.load_study(study_name=study, storage=watcher).trials
            except KeyError:
                done = []
            if sum(t.state == optuna.trial.TrialState.COMPLETE for t in done) >= 8:
                break
            time.sleep(0.2)
        proxy.cut(10)

    try:
        outputs = run_team(tracking, storage, study, trials, tmp_path, during=outage)
        assert proxy.cuts == 1
        check_study(tracking, direct, study, trials, outputs)
    finally:
        stop(process)
        watcher.remove_session()
        watcher.engine.dispose()
