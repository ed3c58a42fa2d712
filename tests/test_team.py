"""Team scale: an MLflow tracking server on PostgreSQL and two sweep workers sharing a study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest

from .conftest import free_port, tier_unavailable, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two throwaway databases (MLflow's and Optuna's), dropped afterwards."""
    import psycopg

    names = [f"wq_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")]
    try:
        admin = psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        tier_unavailable(
            "postgres",
            f"no PostgreSQL server at 127.0.0.1:5432 ({str(exc).strip().splitlines()[0]})",
            "start one with trust auth for user postgres (Debian: apt-get install postgresql)",
        )
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f'CREATE DATABASE "{name}"')
    yield f"{SERVER}/{names[0]}", f"{SERVER}/{names[1]}"
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def tracking_server(databases, tmp_path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            databases[0],
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
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
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, process, timeout=180, path="/health")
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def test_two_workers_share_one_study_and_one_tracking_server(
    databases, tracking_server, red_csv, tmp_path
) -> None:
    trials, study = 12, "team"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server}
    command = [
        str(Path(sys.executable).with_name("winequality")),
        "sweep",
        "--data",
        str(red_csv),
        "--trials",
        str(trials),
        "--folds",
        "3",
        "--study",
        study,
        "--storage",
        databases[1],
    ]
    workers = [
        subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    assert sum("Registered wine-quality" in out for out, _ in outputs) == 1  # one finalizer

    loaded = optuna.load_study(study_name=study, storage=databases[1])
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials

    client = mlflow.MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("winequality-sweep")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`winequality.study` = '{study}' and tags.`winequality.role` = 'trial'"
        ),
    )
    numbers = sorted(int(r.data.tags["winequality.trial"]) for r in children)
    assert numbers == sorted(t.number for t in complete)  # N runs, no duplicates
    assert len({r.data.tags["winequality.worker"] for r in children}) == 2  # both worked
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`winequality.study` = '{study}' and tags.`winequality.role` = 'sweep'"
        ),
    )
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    versions = client.search_model_versions("name = 'wine-quality'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("wine-quality", "champion").version == "1"
