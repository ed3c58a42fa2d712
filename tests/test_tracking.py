"""Tracking stores: resolved once, checked fast, described truthfully, never created by reads."""

from __future__ import annotations

import os

import pytest

from winequality import tracking
from winequality.errors import TrackingError


def test_the_uri_comes_from_the_flag_then_the_variable_then_the_default(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking.resolve_uri() == "http://team:5000"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_descriptions_hide_passwords_and_show_where_a_relative_file_is(workdir) -> None:
    assert tracking.describe("postgresql://ml:secret@db/mlflow") == "postgresql://ml:***@db/mlflow"
    assert tracking.describe("sqlite:///mlflow.db") == (
        f"sqlite:///mlflow.db ({workdir / 'mlflow.db'})"
    )
    assert tracking.describe("http://team:5000") == "http://team:5000"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://127.0.0.1:9", "cannot reach the MLflow tracking server"),
        ("nosuch://x", "unsupported tracking URI"),
        ("sqlite:////no/such/folder/m.db", "does not exist"),
        ("postgresql://nobody@127.0.0.1:9/x", "cannot connect to the tracking database"),
    ],
)
def test_an_unusable_store_is_one_line(uri, message) -> None:
    with pytest.raises(TrackingError, match=message) as caught:
        tracking.preflight(uri, timeout=2)
    assert "\n" not in str(caught.value)


def test_reading_commands_never_create_a_store(workdir) -> None:
    for uri in ("sqlite:///mlflow.db", str(workdir / "mlruns")):
        with pytest.raises(TrackingError, match="run `winequality train` or `winequality sweep`"):
            tracking.connect(uri, create=False)
    assert os.listdir(workdir) == []
    absolute = f"sqlite:///{workdir / 'mlflow.db'}"  # MLflow caches stores by URI text
    assert tracking.connect(absolute) == absolute  # writers create it
    assert (workdir / "mlflow.db").is_file()
    assert tracking.connect(absolute, create=False) == absolute


def test_inside_mlflow_run_the_projects_experiment_wins(workdir, tracking_uri, monkeypatch) -> None:
    client = tracking.client(tracking.connect(tracking_uri))
    chosen = client.create_experiment("chosen by mlflow run")
    run = client.create_run(chosen)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    assert tracking.use_experiment(client, "experiment_signature").experiment_id == chosen
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert tracking.use_experiment(client, "experiment_signature").name == "experiment_signature"
