"""The command line: every command's error paths, exit codes and the words people read."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

import winequality.train as train_module
from winequality.cli import app

from .conftest import alive, children_of

runner = CliRunner()
COMMANDS = ["train", "predict", "serve", "sweep", "models"]
WINEQUALITY = str(Path(sys.executable).with_name("winequality"))


def test_version_and_help_read_as_sentences() -> None:
    answer = runner.invoke(app, ["--version"])
    assert answer.exit_code == 0
    assert answer.stdout.strip() == "winequality 0.1.0"
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert "<bool>" not in top.stdout  # no type badges
    summaries = top.stdout.split("Commands:")[1].splitlines()
    assert len(summaries) > 5
    assert not [line for line in summaries if line.endswith("...")]
    for command in COMMANDS:
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}).stdout
        assert "…" not in text, command
        assert "seed's" not in text, command
    assert "--l1-ratio, --l1_ratio" in runner.invoke(app, ["train", "--help"]).stdout
    sweep = runner.invoke(app, ["sweep", "--help"]).stdout
    assert "Cross-validation folds (K)." in sweep
    assert "Repetitions of the K folds" in sweep


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--alpha", "0"], "error: alpha must be > 0, got 0.0"),
        (["train", "--test-size", "1.5"], "error: test_size must be within (0, 1)"),
        (["train", "--data", "absent.csv"], "error: no such data file"),
        (["sweep", "--storage", "nosuch://x"], "error: cannot open the Optuna storage"),
        (["predict", "--model", "models:/x@champion", "--input", "absent.csv"], "no such input"),
        (["models"], "error: no MLflow tracking store at sqlite:///mlflow.db"),
        (["serve", "--model", "models:/x@champion"], "error: no MLflow tracking store"),
    ],
)
def test_bad_input_is_one_red_block_and_exit_2(workdir, arguments, message) -> None:
    answer = runner.invoke(app, arguments)
    assert answer.exit_code == 2, answer.output
    assert message in answer.stderr
    assert "Traceback" not in answer.output
    assert not (workdir / "mlflow.db").exists()  # nothing created, not even a store
    assert "study" not in answer.stderr  # no progress bar before the error


def test_a_bug_is_a_traceback_and_exit_1(workdir, monkeypatch) -> None:
    def broken(config):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(train_module, "train", broken)
    answer = runner.invoke(app, ["train"])
    assert answer.exit_code == 1
    assert isinstance(answer.exception, ValueError)
    assert "error:" not in answer.stderr


def test_models_before_anything_is_registered_says_what_to_do(workdir, tracking_uri) -> None:
    mlflow.MlflowClient(tracking_uri).search_experiments()
    answer = runner.invoke(app, ["models"])
    assert answer.exit_code == 2
    assert "error: no registered model named 'wine-quality' in sqlite:///mlflow.db (" in (
        answer.stderr
    )
    assert "`winequality sweep`" in answer.stderr
    assert "--tracking-uri" in answer.stderr


def test_predict_from_another_folder_names_the_store_it_searched(
    workdir, tracking_uri, red_csv
) -> None:
    mlflow.MlflowClient(tracking_uri).search_experiments()  # a store, but not the one with it
    answer = runner.invoke(
        app, ["predict", "--model", "models:/wine-quality@champion", "--input", str(red_csv)]
    )
    assert answer.exit_code == 2
    assert answer.stderr.startswith("error: cannot load model models:/wine-quality@champion: ")
    assert answer.stderr.rstrip().endswith(
        f"(searched sqlite:///mlflow.db ({workdir / 'mlflow.db'}); point at another store "
        "with --tracking-uri or MLFLOW_TRACKING_URI)"
    )


def test_predict_reads_stdin_writes_stdout_and_keeps_the_id_column(
    trained_model, red_csv, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    rows = red_csv.read_text().splitlines()[:4]
    text = "\n".join(
        [f'"wine_id";{rows[0]}']
        + [f"{i};{r.replace('3.51', '15.1')}" for i, r in enumerate(rows[1:])]
    )
    answer = runner.invoke(
        app,
        [
            "predict",
            "--model",
            "models:/wine-test@champion",
            "--input",
            "-",
            "--output",
            "-",
            "--id-column",
            "wine_id",
            "--allow-out-of-range",
        ],
        input=text,
    )
    assert answer.exit_code == 0, answer.output
    lines = answer.stdout.strip().splitlines()
    assert lines[0] == "wine_id,prediction"
    assert [line.split(",")[0] for line in lines[1:]] == [
        "0",
        "1",
        "2",
    ]
    assert "wine_id" not in answer.stderr  # the id column is kept, not "ignored"
    assert "(line 2: 15.1)" in answer.stderr  # piped CSV is a file: its lines, as errors cite
    csv = tmp_path / "in.csv"
    csv.write_text(text.replace(";", ","))
    answer = runner.invoke(
        app,
        [
            "predict",
            "--model",
            "models:/wine-test@champion",
            "--input",
            str(csv),
            "--allow-out-of-range",
        ],
    )
    assert "(line 2: 15.1)" in answer.stderr  # warnings cite lines, as errors do


def test_an_unknown_output_type_is_refused_with_the_known_ones(
    trained_model, red_csv, tmp_path
) -> None:
    out = tmp_path / "scores.txt"
    answer = runner.invoke(
        app,
        [
            "predict",
            "--model",
            trained_model.model_uri,
            "--input",
            str(red_csv),
            "--output",
            str(out),
            "--tracking-uri",
            trained_model.tracking_uri,
        ],
    )
    assert answer.exit_code == 2
    assert "unknown file type '.txt'" in answer.stderr
    assert ".csv, .parquet, .pq, .json" in answer.stderr
    assert not out.exists()


def test_loading_a_model_leaves_nothing_behind(trained_model, red_csv) -> None:
    def temp_entries() -> set[str]:
        return set(os.listdir(tempfile.gettempdir()))

    before = temp_entries()
    for uri in (f"runs:/{trained_model.result.run_id}/model", "models:/wine-test@champion"):
        answer = runner.invoke(
            app,
            [
                "predict",
                "--model",
                uri,
                "--input",
                str(red_csv),
                "--tracking-uri",
                trained_model.tracking_uri,
            ],
        )
        assert answer.exit_code == 0, answer.output
    assert temp_entries() - before == set()


def test_serve_on_a_busy_port_is_one_line_and_exit_2(trained_model) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        answer = runner.invoke(
            app,
            [
                "serve",
                "--model",
                trained_model.model_uri,
                "--port",
                str(port),
                "--tracking-uri",
                trained_model.tracking_uri,
            ],
        )
    assert answer.exit_code == 2
    assert time.monotonic() - started < 5
    assert answer.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: the address is in use; choose another "
        "port with --port"
    )


@pytest.mark.slow
def test_piped_output_never_wraps_ids(workdir) -> None:
    answer = subprocess.run(
        [WINEQUALITY, "train", "--output-dir", str(workdir / "copies")],
        capture_output=True,
        text=True,
        cwd=workdir,
        env={**os.environ, "COLUMNS": "80"},
        timeout=300,
        check=True,
    )
    model_line = next(line for line in answer.stdout.splitlines() if line.startswith("Model: "))
    assert "(also runs:/" in model_line
    assert model_line.endswith("/model)")


def journal(path: str):
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def wait_for_trials(storage: str, count: int) -> None:
    import optuna

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="elasticnet-grouped", storage=journal(storage))
            if sum(t.state.is_finished() for t in study.trials) >= count:
                return
        except (KeyError, FileNotFoundError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} trials finished in 120 s")


def start_sweep(workdir: Path, trials: int, output: int) -> tuple[subprocess.Popen, str, str]:
    """`winequality sweep --jobs 2` in its own process group (as a terminal's foreground job);
    the process, its Optuna storage and its tracking store."""
    storage, store = str(workdir / "optuna.journal"), f"sqlite:///{workdir / 'mlflow.db'}"
    command = [WINEQUALITY, "sweep", "--trials", str(trials), "--folds", "3", "--jobs", "2"]
    command += ["--storage", storage, "--tracking-uri", store]
    sweep = subprocess.Popen(
        command, cwd=workdir, stdout=output, stderr=output, text=True, start_new_session=True
    )
    return sweep, storage, store


def interrupt(sweep: subprocess.Popen, how: str) -> None:
    if how == "ctrl-c":  # what Ctrl+C does: every process of the job
        os.killpg(sweep.pid, signal.SIGINT)
    elif how == "ctrl-c twice":  # the second one 0.3 s later, while the first is handled
        os.killpg(sweep.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(sweep.pid, signal.SIGINT)
    elif how == "sigterm":  # a supervisor stopping the command, and only it
        sweep.send_signal(signal.SIGTERM)
    else:
        sweep.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sweep.send_signal(signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-c twice", "sigterm", "sigterm twice"])
def test_stopping_a_sweep_keeps_the_trials_and_says_how_to_resume(workdir, how) -> None:
    sweep, storage, store = start_sweep(workdir, 400, subprocess.PIPE)
    wait_for_trials(storage, 10)
    helpers = children_of(sweep.pid)
    assert helpers  # the worker process (and multiprocessing's own helpers, if any)
    interrupt(sweep, how)
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, stderr
    assert "error: interrupted: " in stderr
    assert "are kept in study 'elasticnet-grouped'" in stderr
    assert f"resume with: winequality sweep --trials 400 --jobs 2 --storage {storage}" in stderr
    assert not [pid for pid in helpers if alive(pid)], "a worker outlived the command"
    import optuna

    study = optuna.load_study(study_name="elasticnet-grouped", storage=journal(storage))
    states = {t.state.name for t in study.trials}
    assert "RUNNING" not in states
    assert "COMPLETE" in states
    client = mlflow.MlflowClient(store)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("winequality-sweep").experiment_id],
        filter_string="tags.`winequality.role` = 'sweep'",
    )
    assert parent.info.status == "KILLED"
    complete = {t.number for t in study.trials if t.state.name == "COMPLETE"}
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string="tags.`winequality.role` = 'trial'"
    )
    assert {int(r.data.tags["winequality.trial"]) for r in trials} == complete


@pytest.mark.slow
def test_sweep_workers_stop_when_the_command_is_killed(workdir) -> None:
    """SIGKILL to the command (no handler runs): its worker processes notice and stop."""
    # more trials than the worker could finish alone before the deadline below
    sweep, storage, _ = start_sweep(workdir, 100_000, subprocess.DEVNULL)
    try:
        wait_for_trials(storage, 5)
        helpers = children_of(sweep.pid)
        assert helpers
        sweep.kill()
        sweep.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in helpers if alive(pid)], "a worker outlived the command"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
