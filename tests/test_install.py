"""The base install is the serving set: `serve` needs nothing from the extras, and a command
that does says which extra to install.

The container image installs the base dependencies only (pyproject.toml). Here the same set is
installed from uv.lock into an environment of its own (`uv sync --no-dev --no-editable`, from
uv's cache: no network), and the real command serves, scores and stops there; `train`,
`sweep`, `predict`, and `serve` on a SQL store fail in one line naming their extra.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from winequality.export import export_model
from winequality.schema import FEATURE_NAMES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = ("optuna", "matplotlib", "pyarrow", "sqlalchemy", "alembic", "psycopg", "flask",
            "pooch", "pyspark", "pytest", "httpx", "gunicorn", "graphene")  # fmt: skip


@pytest.fixture(scope="session")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the base install only, as the image does."""
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in UV
    assert uv, "uv is the project's installer: pip install uv"
    folder = tmp_path_factory.mktemp("base-env")
    done = subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--no-editable", "--offline", "--quiet",
         "--reinstall-package", "winequality"],
        cwd=ROOT, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(folder)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder


def run_base(base_env: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [base_env / "bin" / "winequality", *args],
        capture_output=True, text=True, check=False, **options,
    )  # fmt: skip


def test_the_base_install_leaves_out_what_the_image_must_not_carry(base_env) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    done = subprocess.run([base_env / "bin" / "python", "-c", probe, *LEFT_OUT],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_the_server_runs_on_the_base_install_alone(
    base_env, trained_model, tmp_path, red_csv
) -> None:
    folder = tmp_path / "model"
    export_model("models:/wine-test@champion", folder, tracking_uri=trained_model.tracking_uri)
    port = free_port()
    process = subprocess.Popen(
        [base_env / "bin" / "winequality", "serve", "--model", str(folder), "--port", str(port),
         "--access-log", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, process)
        rows = [[7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4]]
        split = {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": rows}}
        scored = httpx.post(url + "/invocations", json=split)
        assert scored.status_code == 200, scored.text
        v2 = {"inputs": [{"name": "wines", "shape": [1, 11], "datatype": "FP64",
                          "data": rows[0]}]}  # fmt: skip
        infer = httpx.post(url + "/v2/models/wine-test/infer", json=v2)  # its registered name
        assert infer.json()["outputs"][0]["data"] == scored.json()["predictions"]
        for path in ("/", "/metrics", "/drift", "/openapi.json", "/health"):
            assert httpx.get(url + path).status_code == 200, path
        csv = httpx.post(url + "/invocations", content=red_csv.read_bytes(),
                         headers={"Content-Type": "text/csv"})  # fmt: skip
        assert csv.status_code == 415
        assert csv.json()["message"].startswith("a text/csv body needs the 'files' extra")
        assert "pip install 'winequality[files]'" in csv.json()["message"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("arguments", "extra", "needed_for"),
    [
        (["train"], "train", "the tracking store sqlite:///mlflow.db"),
        (["sweep", "--trials", "2"], "train", "`winequality sweep`"),
        (["predict", "--model", "MODEL", "--input", "CSV"], "files", "`winequality predict`"),
        (["serve", "--model", "models:/wine-test@champion"], "train", "the tracking store"),
    ],
)
def test_a_command_that_needs_an_extra_names_it(
    base_env, trained_model, red_csv, tmp_path, arguments, extra, needed_for
) -> None:
    folder = tmp_path / "model"
    export_model(trained_model.model_uri, folder, tracking_uri=trained_model.tracking_uri)
    arguments = [{"MODEL": str(folder), "CSV": str(red_csv)}.get(a, a) for a in arguments]
    where = trained_model.folder if arguments[0] == "serve" else tmp_path  # (its mlflow.db)
    before = sorted(where.iterdir())
    done = run_base(base_env, *arguments, cwd=where, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {needed_for}")
    assert f"needs the '{extra}' extra, which this installation lacks" in done.stderr
    assert f"pip install 'winequality[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(where.iterdir()) == before  # nothing created on the way (no mlflow.db)
