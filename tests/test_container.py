"""The container image, for real, with Podman (the `container` tier).

Built from the repository's Containerfile on the base `deploy/image/base.sh` makes from Debian's
packages (or the image named by WINEQUALITY_CONTAINER_BASE, such as python:3.11-slim where a
registry is reachable). Both ways of getting a model in: baked into the image by `winequality
export` and served with no tracking server, and followed through a tracking server's registry
alias as it moves. Each runs as the non-root user, with a read-only root filesystem, as PID 1,
and exits 0 on SIGTERM after its drain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import free_port, metric, mlflow_server, tier_unavailable
from winequality.schema import FEATURE_NAMES

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BASE_ENV = "WINEQUALITY_CONTAINER_BASE"
DEFAULT_BASE = "localhost/winequality-base:bookworm"
DRAIN_DELAY = 5  # the image's WINEQUALITY_DRAIN_DELAY
# What the image must not hold (the serving set leaves it out); the size guards the same thing.
LEFT_OUT = ("optuna", "matplotlib", "pyarrow", "sqlalchemy", "alembic", "psycopg", "flask",
            "pooch", "pyspark", "pytest", "httpx", "gunicorn", "graphene")  # fmt: skip
MAX_ADDED_MB = 350  # over the base; measured 337 MB (README: the image)
COLUMNS = list(FEATURE_NAMES)


# Run inside a container: load a model and build the server as `serve` does, then list every
# third-party module imported whose bytecode is missing or stale (Python would compile it in
# memory at every start: the root filesystem is read-only).
UNCOMPILED = """
import importlib.util, os, struct, sys
from winequality.scoring import load_scorer
from winequality.serving.app import create_app
import winequality.cli, winequality.serving.run, uvicorn.protocols.http.httptools_impl
import uvicorn.loops.uvloop
create_app(load_scorer(sys.argv[1]), model_uri=sys.argv[1])
stale = []
for module in list(sys.modules.values()):
    source = getattr(module, "__file__", None) or ""
    if not (source.endswith(".py") and "site-packages" in source):
        continue
    try:
        with open(importlib.util.cache_from_source(source), "rb") as cached:
            flags, mtime, size = struct.unpack("<4xIII", cached.read(16))
    except OSError:
        stale.append(module.__name__)
        continue
    info = os.stat(source)
    if flags == 0 and (mtime, size) != (int(info.st_mtime) & 0xFFFFFFFF, info.st_size & 0xFFFFFFFF):
        stale.append(module.__name__)
print(len(sys.modules), sorted(stale))
"""


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


@pytest.fixture(scope="module")
def base() -> str:
    name = os.environ.get(BASE_ENV, DEFAULT_BASE)
    if shutil.which("podman") is None:
        tier_unavailable(
            "container", "Podman is missing", "apt install podman runc, then deploy/image/base.sh"
        )
    if podman("image", "exists", name, check=False).returncode != 0:
        tier_unavailable(
            "container",
            f"the base image {name} is missing",
            f"build it with deploy/image/base.sh (or set {BASE_ENV}=python:3.11-slim)",
        )
    return name


def build(base: str, tag: str, *extra: str) -> str:
    done = podman("build", "--build-arg", f"BASE={base}", "-f", str(ROOT / "Containerfile"),
                  "-t", tag, *extra, str(ROOT), check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tag


@pytest.fixture(scope="module")
def image(base: str) -> str:
    """The default target: `winequality serve`, following WINEQUALITY_MODEL."""
    return build(base, "localhost/winequality-test:serve")


class Container:
    """One `podman run -d` of an image, removed at the end."""

    def __init__(self, image: str, *args: str, env: dict[str, str], network_host: bool) -> None:
        self.name = f"winequality-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        options = ["--read-only", "--name", self.name]
        env = {**env, "WINEQUALITY_PORT": str(self.port)} if network_host else env
        options += ["--network=host"] if network_host else ["-p", f"127.0.0.1:{self.port}:8080"]
        for key, value in env.items():
            options += ["-e", f"{key}={value}"]
        podman("run", "-d", *options, image, *args)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state("Running") != "true":
                raise AssertionError(f"the container stopped: {self.logs()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {timeout} s: {self.logs()}")

    def state(self, field: str) -> str:
        return podman("inspect", "--format", f"{{{{.State.{field}}}}}", self.name).stdout.strip()

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def terminate(self) -> tuple[int, float]:
        """SIGTERM to PID 1; the exit code and the seconds until it exited."""
        started = time.monotonic()
        podman("kill", "--signal", "TERM", self.name)
        podman("wait", self.name, timeout=60)
        return int(self.state("ExitCode")), time.monotonic() - started

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def export(model_uri: str, tracking_uri: str, out: Path) -> None:
    done = subprocess.run(
        [Path(sys.executable).with_name("winequality"), "export", "--model", model_uri,
         "--tracking-uri", tracking_uri, "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)


def score(url: str, frame: pd.DataFrame) -> list[float]:
    body = {"dataframe_split": {"columns": COLUMNS, "data": frame[COLUMNS].to_numpy().tolist()}}
    answer = httpx.post(url + "/invocations", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "model"
    export("models:/wine-test@champion", trained_model.tracking_uri, folder)
    return folder


@pytest.fixture(scope="module")
def baked(base, image, exported) -> str:
    """The `baked` target with the exported model: serves with no tracking server."""
    return build(base, "localhost/winequality-test:baked", "--target", "baked",
                 "--build-context", f"model={exported}")  # fmt: skip


def test_a_baked_model_serves_with_no_tracking_server(baked, exported, red_csv, containers) -> None:
    from winequality.scoring import load_scorer

    folder = exported
    container = Container(baked, env={}, network_host=False)  # no MLFLOW_TRACKING_URI at all
    containers.append(container)
    container.wait_ready()

    wines = pd.read_csv(red_csv, sep=";").head(25)
    expected = load_scorer(str(folder)).predict(wines[COLUMNS].to_numpy(np.float64))
    np.testing.assert_allclose(score(container.url, wines), expected, rtol=0, atol=1e-12)
    health = httpx.get(container.url + "/health").json()
    assert health["model_version"] == "1"  # the registry version it was exported from
    assert health["pid"] == 1  # the server is PID 1: SIGTERM reaches it
    assert httpx.get(container.url + "/v2/models/wine-test").status_code == 200  # its name
    page = httpx.get(container.url + "/")
    assert page.status_code == 200
    assert "fixed acidity" in page.text
    metrics = httpx.get(container.url + "/metrics").text
    assert metric(metrics, "winequality_requests_total", route="/invocations", status="200") == 1
    csv = httpx.post(container.url + "/invocations", content=b"x\n1\n",
                     headers={"Content-Type": "text/csv"})  # fmt: skip
    assert csv.status_code == 415
    assert "winequality[files]" in csv.json()["message"]

    modules, stale = podman(
        "exec", container.name, "python", "-c", UNCOMPILED, "/opt/model"
    ).stdout.split(" ", 1)
    assert int(modules) > 1000
    assert stale.strip() == "[]"  # the build's warm-up compiled everything serving imports
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    wrote = podman("exec", container.name, "touch", "/opt/model/x", check=False)
    assert wrote.returncode != 0
    assert "Read-only file system" in wrote.stderr
    status, seconds = container.terminate()
    assert status == 0, container.logs()
    assert DRAIN_DELAY <= seconds < DRAIN_DELAY + 3, seconds
    assert "Traceback" not in container.logs()


def test_two_workers_under_pid_1_serve_and_stop_together(baked, containers) -> None:
    container = Container(baked, "--workers", "2", env={}, network_host=False)
    containers.append(container)
    container.wait_ready()
    pids = set()
    for _ in range(40):  # new connections spread over both workers
        with httpx.Client(base_url=container.url) as fresh:
            pids.add(fresh.get("/health").json()["pid"])
    assert len(pids) == 2, pids
    assert 1 not in pids  # PID 1 supervises; its workers answer
    status, seconds = container.terminate()
    assert status == 0, container.logs()
    assert DRAIN_DELAY <= seconds < DRAIN_DELAY + 3, seconds
    assert "Traceback" not in container.logs()


def test_the_image_follows_a_registry_alias_through_a_tracking_server(
    image, tmp_path, red_csv, containers
) -> None:
    import mlflow

    from winequality import registry
    from winequality.train import TrainConfig, train

    with mlflow_server(tmp_path) as tracking:
        versions = []
        for alpha in (0.7, 0.05):  # two models that answer differently
            result = train(TrainConfig(alpha=alpha, tracking_uri=tracking, output_dir=None))
            versions.append(registry.register(result.model_uri, "wine-box", tracking_uri=tracking))
        client = mlflow.MlflowClient(tracking)
        client.set_registered_model_alias("wine-box", "champion", versions[0])

        container = Container(
            image,
            "--refresh", "1",
            env={"MLFLOW_TRACKING_URI": tracking,
                 "WINEQUALITY_MODEL": "models:/wine-box@champion"},
            network_host=True,  # the tracking server listens on the host's loopback
        )  # fmt: skip
        containers.append(container)
        container.wait_ready()
        uri = "models:/wine-box@champion"  # loaded through the tracking server, as it does
        stale = podman("exec", container.name, "python", "-c", UNCOMPILED, uri).stdout
        assert stale.split(" ", 1)[1].strip() == "[]", stale
        wines = pd.read_csv(red_csv, sep=";").head(5)
        first = score(container.url, wines)
        assert httpx.get(container.url + "/health").json()["model_version"] == versions[0]

        client.set_registered_model_alias("wine-box", "champion", versions[1])
        deadline = time.monotonic() + 30
        while httpx.get(container.url + "/health").json()["model_version"] != versions[1]:
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.2)
        assert score(container.url, wines) != first
        status, _ = container.terminate()
        assert status == 0, container.logs()


def test_the_image_holds_the_serving_set_only(base, image) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    done = podman("run", "--rm", "--read-only", "--entrypoint", "python", image, "-c", probe,
                  *LEFT_OUT)  # fmt: skip
    assert done.stdout.strip() == "[]", done.stdout + done.stderr

    def size(name: str) -> int:
        return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout)

    added = (size(image) - size(base)) / 1e6
    assert added <= MAX_ADDED_MB, f"the image adds {added:.0f} MB to its base"
