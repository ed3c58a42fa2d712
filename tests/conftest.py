"""Shared fixtures and helpers.

Data: UCI's files as shipped inside the package (no test reads anything beside the clone),
written out in UCI's layout and in the tutorial's; synthetic frames; temp MLflow stores; one
trained model per session. Servers: a uvicorn server in a thread, a free port, a readiness
wait. Tiers that need a system part (Chromium, PostgreSQL) skip with one line saying what is
missing and how to get it, unless WINEQUALITY_REQUIRE_TIERS=1 (set by .ci/run), which turns
that skip into a failure: CI never skips a tier silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from winequality.data import embedded_bytes, read_table
from winequality.schema import FEATURE_NAMES, FEATURES, TARGET

REQUIRE_TIERS = "WINEQUALITY_REQUIRE_TIERS"
# As the CLI does: no download progress bars from MLflow on every local model copy.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _serve_settings_from_the_environment() -> list[str]:
    from typer.main import get_command

    from winequality.cli import TOKEN_ENV, app

    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return [p.envvar for p in serve.params if isinstance(p.envvar, str)] + [TOKEN_ENV]


# `winequality serve` takes settings from the environment (the image sets them): a stray
# WINEQUALITY_PORT in a developer's shell must not change what the tests run, in process or in
# the processes they start.
for _name in _serve_settings_from_the_environment():
    os.environ.pop(_name, None)


def tier_unavailable(tier: str, missing: str, how: str) -> None:
    """Skip (or, where tiers are required, fail) in one line: what is missing, how to get it."""
    message = f"{tier} tier: {missing}; {how}"
    if os.environ.get(REQUIRE_TIERS) == "1":
        pytest.fail(f"{message} ({REQUIRE_TIERS}=1: this tier must run here)")
    pytest.skip(message)


# --- data --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def red_csv(data_dir: Path) -> Path:
    """UCI's winequality-red.csv, byte for byte (`;`-separated, quoted header)."""
    path = data_dir / "winequality-red.csv"
    path.write_bytes(embedded_bytes("red"))
    return path


@pytest.fixture(scope="session")
def white_csv(data_dir: Path) -> Path:
    path = data_dir / "winequality-white.csv"
    path.write_bytes(embedded_bytes("white"))
    return path


@pytest.fixture(scope="session")
def tutorial_csv(data_dir: Path) -> Path:
    """The tutorial's copy of the red data: ','-separated, plain header, features as floats."""
    frame = read_table(embedded_bytes("red"), "red").frame
    frame = frame.astype({c: float for c in frame.columns if c != TARGET.name})
    path = data_dir / "red-wine-quality.csv"
    frame.to_csv(path, index=False)
    return path


def synthetic_wines(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    """Plausible wines: each feature drawn around its typical value, quality an int 3..8."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {f.name: np.abs(rng.normal(f.typical, f.typical * 0.2, rows)) for f in FEATURES}
    )
    frame["total sulfur dioxide"] = frame["free sulfur dioxide"] * 3
    frame["density"] = rng.uniform(0.99, 1.0, rows)
    frame["pH"] = rng.uniform(2.9, 3.8, rows)
    frame[TARGET.name] = rng.integers(3, 9, rows)
    return frame


@pytest.fixture
def wines() -> pd.DataFrame:
    return synthetic_wines()


# --- MLflow stores and a trained model ---------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run inside a temp folder: mlflow.db, mlruns/ and data/ land there, not in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WINEQUALITY_DATA", raising=False)
    monkeypatch.setenv("WINEQUALITY_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


class TrainedModel:
    """One model trained on the red data in a temp store, registered as `wine-test` v1."""

    def __init__(self, result, tracking_uri: str, folder: Path) -> None:
        self.result, self.tracking_uri, self.folder = result, tracking_uri, folder
        self.model_uri = result.model_uri


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    import mlflow

    from winequality.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("model")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("WINEQUALITY_DATA", raising=False)
        result = train(TrainConfig(tracking_uri=uri, output_dir=None))
    from winequality import registry

    version = registry.register(result.model_uri, "wine-test", tracking_uri=uri)
    mlflow.MlflowClient(uri).set_registered_model_alias("wine-test", "champion", version)
    return TrainedModel(result, uri, folder)


@pytest.fixture(scope="session")
def scorer(trained_model: TrainedModel):
    from winequality.scoring import load_scorer

    return load_scorer(trained_model.model_uri, trained_model.tracking_uri)


@pytest.fixture(scope="session")
def mlflow_pyfunc(trained_model: TrainedModel):
    """MLflow's own loaded model: the oracle for parity tests (loaded as users load it)."""
    import mlflow

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    return mlflow.pyfunc.load_model(trained_model.model_uri)


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """An ASGI app served by uvicorn in a thread of the test process, on a free port."""

    def __init__(self, app) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_for(
    url: str, process: subprocess.Popen, timeout: float = 120, path: str = "/ping"
) -> None:
    """Until `url + path` answers 200; fails at once if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # (a 503 while the model loads, too)
    raise AssertionError("server did not start")


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """MLflow's own tracking server (SQLite store, artifacts proxied as `mlflow-artifacts:/`) on
    a free loopback port, stopped with its workers when the block ends (its log in a file: a
    pipe nobody reads could fill and hang it)."""
    port = free_port()
    log = open(folder / "mlflow-server.log", "w")  # noqa: SIM115 (closed with the server)
    server = subprocess.Popen(
        [Path(sys.executable).with_name("mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(url, server, path="/health")
        except AssertionError as failed:
            written = (folder / "mlflow-server.log").read_text()
            raise AssertionError(f"{failed}: {written}") from None
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def close_pipes(process: subprocess.Popen) -> None:
    """Close what the test opened to talk to a process (no ResourceWarning at exit)."""
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


# --- processes (from /proc: Linux, as CI is) ------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: Linux, as CI is)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --- the wines, as bodies, and what a scrape says -----------------------------------------------


@pytest.fixture(scope="session")
def red() -> pd.DataFrame:
    """The shipped red data, checked (features and quality)."""
    from winequality.data import load

    return load().frame


@pytest.fixture(scope="session")
def white() -> pd.DataFrame:
    from winequality.data import load

    return load(wine="white").frame


def split_body(frame: pd.DataFrame) -> dict[str, Any]:
    """MLflow's `dataframe_split` body of a frame's features."""
    columns = list(FEATURE_NAMES)
    return {"dataframe_split": {"columns": columns, "data": frame[columns].to_numpy().tolist()}}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus's text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0
