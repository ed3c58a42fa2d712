"""Sweeps on real SQLite stores: nested runs, the champion gate, resuming, a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from typer.testing import CliRunner

from winequality import registry
from winequality.cli import app
from winequality.errors import SweepError
from winequality.sweeping import SweepConfig, run_sweep

runner = CliRunner()
pytestmark = pytest.mark.slow  # every test here runs at least one sweep


def config(red_csv, workdir, **overrides) -> SweepConfig:
    base = {
        "data": str(red_csv),
        "trials": 6,
        "folds": 3,
        "storage": f"sqlite:///{workdir / 'optuna.db'}",
        "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    return SweepConfig(**{**base, **overrides})


def trial_runs(cfg: SweepConfig, study: str) -> list:
    client = mlflow.MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`winequality.study` = '{study}' and tags.`winequality.role` = 'trial'"
        ),
    )


def test_a_sweep_logs_every_trial_and_registers_a_champion(red_csv, workdir) -> None:
    cfg = config(red_csv, workdir)
    seen = []
    result = run_sweep(cfg, on_trial=seen.append)
    assert result.complete == 6
    assert result.ran_here == 6
    assert len(seen) == 6
    assert seen[-1].best_value == pytest.approx(min(e.value for e in seen))
    runs = trial_runs(cfg, result.study)
    assert sorted(int(r.data.tags["winequality.trial"]) for r in runs) == list(range(6))
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {result.parent_run_id}
    assert all(
        {"cv_rmse", "cv_rmse_std", "cv_accuracy_within_0.5", "fold_rmse"} <= set(r.data.metrics)
        and {"alpha", "l1_ratio"} == set(r.data.params)
        for r in runs
    )
    client = mlflow.MlflowClient(cfg.tracking_uri)
    folds = client.get_metric_history(runs[0].info.run_id, "fold_rmse")  # one value per fold
    assert sorted(m.step for m in folds) == [0, 1, 2]
    assert runs[0].data.metrics["cv_rmse"] == pytest.approx(sum(m.value for m in folds) / 3)
    final = client.get_run(result.final.run_id)
    assert final.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert final.data.metrics["test_rmse"] == pytest.approx(result.final.test_metrics["rmse"])
    assert final.data.params["holdout"] == "grouped"
    artifacts = {a.path for a in client.list_artifacts(result.final.run_id, "evaluation")}
    report = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.final.run_id,
            artifact_path="evaluation/report.md",
            tracking_uri=cfg.tracking_uri,
        )
    ).read_text()
    assert f"| rmse | {result.best_cv['rmse']:.4f} ± " in report
    assert artifacts == {
        "evaluation/predicted_vs_actual.png",
        "evaluation/importance.png",
        "evaluation/search.png",
        "evaluation/report.md",
    }
    mlflow.set_tracking_uri(cfg.tracking_uri)  # MLflow resolves `models:/m-…` through it
    info = mlflow.models.get_model_info(result.final.model_uri)
    assert info.signature.inputs.input_names()[0] == "fixed acidity"  # train's logging path
    assert result.final.decision.alias == "champion"
    assert result.final.decision.version == "1"


@pytest.fixture
def awful_family(monkeypatch):
    """A family whose only model predicts about the mean: every real model beats it."""
    from winequality import model

    awful = model.Family(
        "awful",
        lambda p: model.elasticnet(p["alpha"], 1.0, scale=True),
        lambda t: {"alpha": t.suggest_float("alpha", 50.0, 100.0)},
        {"alpha": [100.0]},
        ("alpha", "alpha"),
    )
    monkeypatch.setitem(model.FAMILIES, "awful", awful)
    return "awful"


def test_the_champion_moves_only_to_a_better_model(red_csv, workdir, awful_family) -> None:
    def sweep(**overrides):
        return run_sweep(config(red_csv, workdir, **overrides)).final.decision

    # a constant's residuals take a few values: its 0.9 intervals cannot cover 90 %, and the
    # gate keeps even a first version out for that, unless forced
    kept_out = sweep(family=awful_family, study="awful-0", grid=True, trials=1)
    assert (kept_out.alias, kept_out.version) == ("challenger", "1")
    assert kept_out.reason.startswith("intervals keep their promise: its 0.9 intervals covered")
    first = sweep(family=awful_family, study="awful-1", grid=True, trials=1, force=True)
    assert (first.alias, first.version) == ("champion", "2")
    better = sweep(study="good", trials=8)  # a tuned ElasticNet beats the mean
    assert (better.alias, better.previous_version) == ("champion", "2")
    assert better.score < better.previous_score
    assert "beats champion v2" in better.reason
    worse = sweep(family=awful_family, study="awful-2", grid=True, trials=1)
    assert (worse.alias, worse.previous_version) == ("challenger", "3")  # the current champion
    assert worse.score > worse.previous_score
    assert worse.previous_score == pytest.approx(better.score)  # re-scored on the same rows
    forced = sweep(family=awful_family, study="awful-3", grid=True, trials=1, force=True)
    assert forced.alias == "champion"
    assert "--force: replaces v3" in forced.reason
    client = mlflow.MlflowClient(config(red_csv, workdir).tracking_uri)
    assert str(client.get_model_version_by_alias("wine-quality", "champion").version) == "5"
    assert str(client.get_model_version_by_alias("wine-quality", "challenger").version) == "4"


def test_rerunning_a_study_continues_it_without_duplicates(red_csv, workdir) -> None:
    first = run_sweep(config(red_csv, workdir, trials=4))
    again = run_sweep(config(red_csv, workdir, trials=4))
    assert again.ran_here == 0
    assert not again.finalized
    assert again.finalized_before["version"] == first.final.decision.version == "1"
    assert again.finalized_before["run_id"] == first.final.run_id
    more = run_sweep(config(red_csv, workdir, trials=7))
    assert more.ran_here == 3
    assert more.complete == 7
    assert more.parent_run_id == first.parent_run_id
    runs = trial_runs(config(red_csv, workdir), more.study)
    assert sorted(int(r.data.tags["winequality.trial"]) for r in runs) == list(range(7))


def test_resuming_with_other_settings_is_refused(red_csv, workdir) -> None:
    run_sweep(config(red_csv, workdir, trials=2))
    with pytest.raises(SweepError, match="folds differ"):
        run_sweep(config(red_csv, workdir, trials=3, folds=4))


def test_parallel_jobs_share_one_study(red_csv, workdir) -> None:
    result = run_sweep(config(red_csv, workdir, trials=10, jobs=2))
    assert result.complete == 10
    assert result.ran_here == 10
    numbers = sorted(
        int(r.data.tags["winequality.trial"])
        for r in trial_runs(config(red_csv, workdir), result.study)
    )
    assert numbers == list(range(10))


def test_a_killed_worker_loses_no_trial_and_logs_none_twice(red_csv, workdir) -> None:
    cfg = config(red_csv, workdir, trials=40, study="killed")
    command = [
        str(Path(sys.executable).with_name("winequality")),
        "sweep",
        "--data",
        str(red_csv),
        "--trials",
        "40",
        "--folds",
        "3",
        "--study",
        "killed",
        "--storage",
        cfg.storage,
        "--tracking-uri",
        cfg.tracking_uri,
    ]
    worker = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    storage = optuna.storages.RDBStorage(cfg.storage)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it in the middle of the sweep
        try:
            done = [
                t
                for t in optuna.load_study(study_name="killed", storage=storage).trials
                if t.state.is_finished()
            ]
        except KeyError:
            done = []
        if len(done) >= 5:
            break
        time.sleep(0.05)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    finished_before = {
        t.number
        for t in optuna.load_study(study_name="killed", storage=storage).trials
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert 5 <= len(finished_before) < 40
    result = run_sweep(cfg)  # the restart
    study = optuna.load_study(study_name="killed", storage=storage)
    complete = {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert finished_before <= complete
    assert len(complete) == 40 == result.complete
    logged = [int(r.data.tags["winequality.trial"]) for r in trial_runs(cfg, "killed")]
    assert sorted(logged) == sorted(complete)  # one run per finished trial, none twice


def test_cli_sweep_and_models(red_csv, workdir) -> None:
    cfg = config(red_csv, workdir)
    arguments = ["sweep", "--data", str(red_csv), "--trials", "3", "--folds", "3"]
    arguments += ["--storage", cfg.storage, "--tracking-uri", cfg.tracking_uri]
    answer = runner.invoke(app, arguments)
    assert answer.exit_code == 0, answer.output
    assert "Registered wine-quality v1 as champion" in answer.output
    listing = runner.invoke(app, ["models", "--tracking-uri", cfg.tracking_uri])  # piped
    assert listing.exit_code == 0
    row = next(line for line in listing.stdout.splitlines() if "champion" in line)
    assert "elasticnet-grouped" in row  # nothing cut, even past 80 columns
    again = runner.invoke(app, [*arguments])  # the same, finished study: says so
    assert again.exit_code == 0
    assert "The study is complete; its best trial was registered as wine-quality v1" in (
        again.stdout
    )
    assert "study elasticnet-grouped" not in again.stderr  # no bar: nothing ran
    # the alias moved since: a re-run says where it is now, and a --force it cannot apply
    registry.register(_model_uri(cfg), "wine-quality", tracking_uri=cfg.tracking_uri)
    mlflow.MlflowClient(cfg.tracking_uri).set_registered_model_alias(
        "wine-quality", "champion", "2"
    )
    moved = runner.invoke(app, [*arguments, "--force"])
    assert moved.exit_code == 0, moved.output
    assert "registered as wine-quality v1 (now: no alias; champion is v2)" in moved.stdout
    assert "--force is not applied to a finished study" in moved.stderr
    assert "winequality promote wine-quality 1" in moved.stderr
    fewer = runner.invoke(app, [*arguments[:4], "2", *arguments[5:]])  # --trials 2 < 3 done
    assert fewer.exit_code == 0, fewer.output
    assert "3 trials finished (2 asked)" in fewer.stdout
    assert "3 of 2" not in fewer.stdout
    timed = ["--study", "short", "--trials", "1000", "--timeout", "1"]
    early = runner.invoke(app, [*arguments, *timed])
    assert early.exit_code == 0
    warning = next(line for line in early.stderr.splitlines() if line.startswith("warning:"))
    assert warning.startswith("warning: stopped early (--timeout 1 s): ")
    assert "of 1000 trials; the best so far is below. Resume with: winequality sweep" in warning
    assert "--trials 1000" in warning
    assert "--study short" in warning
    assert "--timeout" not in warning.split("Resume with:")[1]
    bad = runner.invoke(
        app,
        [
            "sweep",
            "--data",
            str(red_csv),
            "--storage",
            "nosuch://x",
            "--tracking-uri",
            cfg.tracking_uri,
        ],
    )
    assert bad.exit_code == 2
    assert "cannot open the Optuna storage" in bad.output


def test_a_failing_trial_is_failed_at_once_and_stops_the_workers(
    red_csv, workdir, monkeypatch
) -> None:
    from winequality import model

    def broken(params):
        raise RuntimeError("cannot fit")

    family = model.FAMILIES["elasticnet"]
    monkeypatch.setitem(
        model.FAMILIES,
        "elasticnet",
        model.Family("elasticnet", broken, family.suggest, family.grid, family.axes),
    )
    cfg = config(red_csv, workdir, trials=5, jobs=2, study="broken")
    with pytest.raises(RuntimeError, match="cannot fit"):
        run_sweep(cfg)
    study = optuna.load_study(study_name="broken", storage=cfg.storage)
    states = {t.state for t in study.trials}
    assert states == {optuna.trial.TrialState.FAIL}  # none left RUNNING, none completed
    assert not trial_runs(cfg, "broken")


MLFLOW_RUN_ARGS = ("-P", "trials=3", "--env-manager", "local")


def test_mlflow_run_runs_the_projects_sweep_entry_point(workdir) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    storage = ("-P", f"storage={workdir / 'optuna.journal'}")  # not in the project's folder
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(root),
            "-e",
            "sweep",
            *MLFLOW_RUN_ARGS,
            *storage,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    store = env["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    (project,) = client.search_runs(
        [client.get_experiment_by_name("Default").experiment_id],
        filter_string="tags.`mlflow.project.entryPoint` = 'sweep'",
    )
    assert project.info.status == "FINISHED"
    parent = client.get_run(project.data.tags["winequality.sweep_parent_run"])
    assert parent.data.tags["winequality.study"] == "elasticnet-grouped"
    assert str(client.get_model_version_by_alias("wine-quality", "champion").version) == "1"


def test_workers_forked_after_a_boosting_sweep_in_the_same_process_do_not_hang(
    red_csv, workdir
) -> None:
    """GNU OpenMP cannot survive a fork once its thread pool exists; a library user who
    sweeps hist-gradient-boosting and then sweeps again with workers must not hang."""
    script = f"""
import sys
from winequality.sweeping import SweepConfig, run_sweep
base = dict(data={str(red_csv)!r}, family="hist-gradient-boosting", folds=2, register=False,
            tracking_uri="sqlite:///mlflow.db", storage="optuna.journal")
run_sweep(SweepConfig(**base, trials=2, jobs=1, study="first"))
result = run_sweep(SweepConfig(**base, trials=4, jobs=2, study="second"))
print(result.complete)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "4"


def _model_uri(cfg) -> str:
    """The logged model of the sweep's final run (to register it a second time)."""
    client = mlflow.MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name("winequality-sweep").experiment_id
    return f"models:/{client.search_logged_models([experiment])[0].model_id}"
