"""Hyperparameter sweeps: an Optuna study mirrored as nested MLflow runs, shared by workers.

The Optuna study (a local journal file by default, PostgreSQL for teams) is the source of truth;
MLflow is its record. Per study there is one parent run; every trial is one child run (params
and CV metrics in one batch) created *before* the trial is told COMPLETE, so a finished trial
always has its run. A worker killed in between leaves a RUNNING trial whose heartbeat stops: it
is failed after the grace period and its orphan run deleted, so no finished trial is lost and
none is logged twice. `--trials N` is the number of finished trials the study should hold,
whoever runs them.

`--jobs N` runs N worker processes (forked before any store is opened, so each has its own
connections), which share the study exactly as workers on other machines do. Each trial's
sampler is seeded from (seed, trial number): workers never draw alike, and one worker replays
the same sweep from the same seed.

When that number is reached, exactly one worker (the one that finished the last trial) refits
the best trial on the training split, tests it once on held-out rows that share no wine with
the training rows, logs it as `train` does, registers it and runs the champion gate.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from winequality import data as wine_data
from winequality import evaluate, logged_model, model, registry, schema, tracking
from winequality.drift import Profile
from winequality.errors import ParameterError, SweepError, WinequalityError

if TYPE_CHECKING:
    import pandas as pd

    from winequality.studies import SharedStudy

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_STORAGE",
    "FinalModel",
    "Holdout",
    "Refit",
    "StopRequest",
    "SweepConfig",
    "SweepInterrupted",
    "SweepResult",
    "Tracking",
    "TrialEvent",
    "WorkerPlan",
    "delete_orphans",
    "ensure_parent_run",
    "evaluation_artifacts",
    "finalize",
    "log_final_run",
    "refit_and_test",
    "register_and_gate",
    "run_sweep",
    "single_threaded_openmp",
    "trial_runs",
]

DEFAULT_STORAGE = "optuna.journal"  # Optuna's journal file: built for many local processes
DEFAULT_EXPERIMENT = tracking.SWEEP_EXPERIMENT
STUDY_TAG, TRIAL_TAG, ROLE_TAG = "winequality.study", "winequality.trial", "winequality.role"
PARENT_TAG = "mlflow.parentRunId"
FINALIZED_ATTR = "finalized"


@dataclass(frozen=True)
class SweepConfig:
    data: str | None = None
    wine: wine_data.Wine = "red"
    family: str = "elasticnet"
    trials: int = 50  # finished trials the study should hold (all workers together)
    jobs: int = 1  # worker processes started by this command
    timeout: float | None = None  # stop starting trials after this many seconds
    grid: bool = False
    study: str | None = None  # default: "<family>-<protocol>"
    storage: str | None = None  # default: the journal file optuna.journal
    protocol: evaluate.Protocol = "grouped"
    folds: int = 5
    repeats: int = 1
    seed: int = 40  # held-out split, folds and sampler
    test_size: float = 0.25
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    model_name: str = registry.DEFAULT_MODEL_NAME
    register: bool = True
    force: bool = False

    @property
    def study_name(self) -> str:
        return self.study or f"{self.family}-{self.protocol}"

    @property
    def storage_url(self) -> str:
        return self.storage or os.environ.get("WINEQUALITY_STORAGE") or DEFAULT_STORAGE


@dataclass(frozen=True)
class TrialEvent:
    number: int
    value: float
    best_value: float
    complete: int
    trial_goal: int


@dataclass(frozen=True)
class FinalModel:
    """The best trial refit on the training rows and tested once on the held-out rows."""

    run_id: str
    model_uri: str
    test_metrics: dict[str, float]
    decision: registry.Decision | None


@dataclass(frozen=True)
class SweepResult:
    study: str
    parent_run_id: str
    parent_run_url: str | None  # a link for HTTP tracking servers
    complete: int
    trial_goal: int
    ran_here: int
    best_trial: int
    best_params: dict[str, Any]
    best_cv: dict[str, float]
    stopped_early: bool  # --timeout ended the sweep before the trial goal
    final: FinalModel | None  # None when another worker finalizes, or it was done before
    finalized_before: dict[str, Any] | None  # what an earlier run of this study registered

    @property
    def finalized(self) -> bool:
        return self.final is not None


class SweepInterrupted(WinequalityError):
    """Ctrl+C: the finished trials are kept; running the same command resumes the study."""

    exit_code = 130

    def __init__(self, study: str, complete: int, trial_goal: int) -> None:
        super().__init__(
            f"interrupted: {complete} of {trial_goal} trials finished and are kept in study "
            f"{study!r}"
        )
        self.study, self.complete, self.trial_goal = study, complete, trial_goal


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker process needs: one bundle, built once by the command."""

    config: SweepConfig
    family: model.Family
    folds: evaluate.Folds
    x_train: np.ndarray
    y_train: np.ndarray
    trial_goal: int  # finished trials the study should hold
    deadline: float | None  # time.time() after which no trial starts


@dataclass(frozen=True)
class Tracking:
    """Where a worker logs: learnt by the first process, sent to the others."""

    experiment_id: str
    parent_run_id: str


def run_sweep(
    config: SweepConfig, on_trial: Callable[[TrialEvent], None] | None = None
) -> SweepResult:
    """Run (or join, or resume) a sweep until the study holds `config.trials` finished trials."""
    family = model.family(config.family)
    if config.trials < 1 or config.jobs < 1:
        raise ParameterError("--trials and --jobs must be at least 1")
    wine = wine_data.load(config.data, config.wine)
    train_frame, test_frame = evaluate.holdout_split(wine.frame, config.test_size, config.seed)
    folds = evaluate.make_folds(
        train_frame, config.protocol, folds=config.folds, repeats=config.repeats, seed=config.seed
    )
    grid = family.grid if config.grid else None
    trial_goal = (
        min(config.trials, int(np.prod([len(v) for v in grid.values()]))) if grid else config.trials
    )
    features = list(schema.FEATURE_NAMES)
    plan = WorkerPlan(
        config,
        family,
        folds,
        train_frame[features].to_numpy(dtype=np.float64),
        train_frame[schema.TARGET.name].to_numpy(dtype=np.float64),
        trial_goal,
        time.time() + config.timeout if config.timeout else None,
    )
    # Both stores are checked before anything is written to either: the tracking store
    # answers (read only), then the Optuna storage opens, then the tracking store is used.
    tracking.preflight(tracking.resolve_uri(config.tracking_uri))
    # Helpers fork now, before any store is opened: each opens its own connections.
    helpers = [_Helper.start(plan) for _ in range(config.jobs - 1)]
    try:
        shared = _join_study(plan)
        uri = tracking.connect(config.tracking_uri)
        import mlflow

        client = mlflow.MlflowClient()
        experiment_id = str(tracking.use_experiment(config.experiment).experiment_id)
        _check_same_settings(shared, config, wine.sha256)
        parent = ensure_parent_run(client, experiment_id, shared.name, config)
        _link_project_run(client, shared.name, parent)
        if len(shared.trials("COMPLETE")) < trial_goal:  # trials to run: the sweep is live
            client.update_run(parent, status="RUNNING")  # (after an interruption: KILLED)
        delete_orphans(client, experiment_id, shared)
    except BaseException:
        for helper in helpers:
            helper.cancel()
        raise
    where = Tracking(experiment_id, parent)
    for helper in helpers:
        helper.go(where)
    with StopRequest() as stop:
        if helpers:
            _import_final_step()  # while the helpers compute: off the serial tail of the sweep
        worker = _Worker(plan, where, shared, client, stop, on_trial)
        try:
            with single_threaded_openmp():
                worker.run()
        except KeyboardInterrupt:  # a second Ctrl+C: at once
            stop.requested = True
        except BaseException:
            for helper in helpers:
                helper.interrupt()
            raise
        if stop.requested:
            for helper in helpers:
                helper.interrupt()
            delete_orphans(client, experiment_id, shared)
            client.update_run(parent, status="KILLED")  # the UI shows it stopped; resume revives
            kept = len(shared.trials("COMPLETE"))
            raise SweepInterrupted(shared.name, kept, trial_goal)
    mine = set(worker.finished_here)
    for helper in helpers:
        mine |= helper.finish()  # raises a helper's error here
    delete_orphans(client, experiment_id, shared)

    complete = shared.trials("COMPLETE")
    if not complete:
        raise SweepError("no trial finished (is --timeout too short?)")
    best = shared.study.best_trial
    cv = best.user_attrs.get("cv", {})
    final = None
    finalized_before = shared.study.user_attrs.get(FINALIZED_ATTR)
    if finalized_before and (
        finalized_before.get("best_trial") != best.number
        or finalized_before.get("store") != tracking.redact(uri)
    ):
        finalized_before = None  # a better trial since, or another tracking store: register
    if finalized_before is None and _should_finalize(shared, mine):
        with single_threaded_openmp():
            final = finalize(plan, shared, Holdout(wine, train_frame, test_frame), where)
        shared.study.set_user_attr(
            FINALIZED_ATTR,
            {
                "best_trial": best.number,
                "run_id": final.run_id,
                "model_uri": final.model_uri,
                "version": final.decision.version if final.decision else None,
                "alias": final.decision.alias if final.decision else None,
                "store": tracking.redact(uri),
            },
        )
        client.set_terminated(parent, "FINISHED")
    return SweepResult(
        study=shared.name,
        parent_run_id=parent,
        parent_run_url=_run_url(uri, experiment_id, parent),
        complete=len(complete),
        trial_goal=trial_goal,
        ran_here=len(mine),
        best_trial=best.number,
        best_params=dict(best.params),
        best_cv=dict(cv.get("mean", {})),
        stopped_early=len(complete) < trial_goal,
        final=final,
        finalized_before=finalized_before,
    )


@contextlib.contextmanager
def single_threaded_openmp() -> Iterator[None]:
    """OpenMP (hist-gradient-boosting's threads) kept to one thread in a process that forks
    workers. GNU OpenMP cannot be forked once its thread pool exists: a worker forked by a
    later sweep in the same process would hang at its first fit. One thread per process is
    also what N workers on N cores want."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _import_final_step() -> None:
    """Import what the final step uses (plots, skops, MLflow's sklearn flavour): about a
    second of imports that, done while other workers run trials, no longer delays the end."""
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401

    evaluate.warm_up_plots()


def _join_study(plan: WorkerPlan) -> SharedStudy:
    import optuna

    from winequality.studies import SharedStudy, make_sampler, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = plan.family.grid if plan.config.grid else None
    storage = open_storage(plan.config.storage_url)
    return SharedStudy.join(storage, plan.config.study_name, make_sampler(plan.config.seed, grid))


def _run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


# ---------------------------------------------------------------------------------------------
# Study bookkeeping
# ---------------------------------------------------------------------------------------------


def _check_same_settings(shared: SharedStudy, config: SweepConfig, data_sha: str) -> None:
    """A study resumed with other data, model or folds would compare apples with pears."""
    settings = {
        "family": config.family,
        "protocol": config.protocol,
        "folds": config.folds,
        "repeats": config.repeats,
        "seed": config.seed,
        "test_size": config.test_size,
        "grid": config.grid,
        "data_sha256": data_sha,
    }
    stored = shared.study.user_attrs.get("settings")
    if stored is None:
        shared.study.set_user_attr("settings", settings)
    elif stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise SweepError(
            f"study {shared.name!r} was created with other settings "
            f"({', '.join(changed)} differ); resume it with the same ones or "
            f"choose another --study"
        )


def ensure_parent_run(client: Any, experiment_id: str, study: str, config: SweepConfig) -> str:
    """One parent run per study, even when workers start at the same moment.

    Each worker looks for the study's parent; if there is none it creates one, then looks
    again and adopts the oldest, deleting its own if it lost the race.
    """

    def parents() -> list[Any]:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'sweep'",
            max_results=50,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = parents()
    if found:
        return str(found[0].info.run_id)
    from mlflow.entities import Param

    mine = client.create_run(
        experiment_id,
        run_name=f"sweep {study}",
        tags={STUDY_TAG: study, ROLE_TAG: "sweep", **logged_model.provenance_tags()},
    )
    settings = {
        k: v for k, v in asdict(config).items() if k not in ("tracking_uri", "data", "storage")
    }
    client.log_batch(mine.info.run_id, params=[Param(k, str(v)) for k, v in settings.items()])
    winner = parents()[0].info.run_id
    if winner != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return str(winner)


def _link_project_run(client: Any, study: str, parent: str) -> None:
    """Inside `mlflow run`, the run MLflow started records which sweep it ran.

    The sweep's own runs (one parent per study, shared by every worker and resume) are created
    as usual, so MLFLOW_RUN_ID is taken out of the environment: the final run must not adopt it.
    """
    from mlflow.environment_variables import MLFLOW_RUN_ID

    project_run = os.environ.get(MLFLOW_RUN_ID.name)
    if not project_run:
        return
    os.environ.pop(MLFLOW_RUN_ID.name, None)
    client.set_tag(project_run, STUDY_TAG, study)
    client.set_tag(project_run, "winequality.sweep_parent_run", parent)


def trial_runs(client: Any, experiment_id: str, study: str) -> dict[int, list[str]]:
    """Run ids of the study's trial runs, by trial number."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'trial'",
        max_results=50_000,
    )
    by_trial: dict[int, list[str]] = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags[TRIAL_TAG]), []).append(run.info.run_id)
    return by_trial


def delete_orphans(client: Any, experiment_id: str, shared: SharedStudy) -> None:
    """Fail the trials of dead workers, delete the runs of trials that never finished, and
    keep one run per finished trial (a request retried through an outage can create two)."""
    shared.fail_stale_trials()
    failed = {t.number for t in shared.trials("FAIL")}
    for number, run_ids in trial_runs(client, experiment_id, shared.name).items():
        doomed = run_ids if number in failed else sorted(run_ids)[1:]
        for run_id in doomed:
            with contextlib.suppress(Exception):  # another worker deleted it first
                client.delete_run(run_id)


def _should_finalize(shared: SharedStudy, mine: set[int]) -> bool:
    """Exactly one worker finalizes: the one that finished the study's last trial."""
    if shared.trials("RUNNING"):
        return False
    if not mine:
        return True  # a rerun of a study whose best was never registered
    complete = shared.trials("COMPLETE")
    last = max(complete, key=lambda t: (t.datetime_complete, t.number))
    return last.number in mine


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


class StopRequest:
    """Ctrl+C ends a worker between trials: the running trial finishes (its run logged and its
    state told), so nothing is left RUNNING. A second Ctrl+C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class _Worker:
    """The ask → cross-validate → log → tell loop of one process."""

    def __init__(
        self,
        plan: WorkerPlan,
        where: Tracking,
        shared: SharedStudy,
        client: Any,
        stop: StopRequest,
        on_trial: Callable[[TrialEvent], None] | None = None,
    ) -> None:
        self.plan, self.where, self.shared, self.client = plan, where, shared, client
        self.stop, self.on_trial = stop, on_trial
        self.finished_here: list[int] = []
        self.worker_id = uuid.uuid4().hex[:8]

    def run(self) -> None:
        while not self.stop.requested and self._step():
            pass

    def _step(self) -> bool:
        plan = self.plan
        if plan.deadline is not None and time.time() > plan.deadline:
            return False
        states = [t.state.name for t in self.shared.trials("COMPLETE", "RUNNING")]
        complete = states.count("COMPLETE")
        if complete >= plan.trial_goal:
            return False
        if len(states) >= plan.trial_goal:
            time.sleep(0.5)  # others are finishing the last trials; stale ones get failed
            self.shared.fail_stale_trials()
            return True
        trial = self.shared.study.ask()
        trial_id = self.shared.trial_id(trial.number)
        active = sorted(t.number for t in self.shared.trials("COMPLETE", "RUNNING"))
        if trial.number not in active[: plan.trial_goal]:  # another worker took the last slot
            trial.set_user_attr("overflow", True)
            self.shared.tell_fail(trial)
            return True
        try:
            with self.shared.heartbeat(trial_id):
                params = plan.family.suggest(trial)
                cv = evaluate.cross_validate(
                    lambda: plan.family.build(params), plan.x_train, plan.y_train, plan.folds
                )
                trial.set_user_attr("cv", {"mean": cv.mean, "folds": cv.per_fold})
                self._log_child(trial.number, params, cv)
        except BaseException:
            self.shared.tell_fail(trial)  # its run, if any, is an orphan now
            raise
        self.shared.study.tell(trial, cv.mean["rmse"])
        self.finished_here.append(trial.number)
        if self.on_trial is not None:
            self.on_trial(
                TrialEvent(
                    trial.number,
                    cv.mean["rmse"],
                    self.shared.study.best_value,
                    complete + 1,
                    plan.trial_goal,
                )
            )
        return True

    def _log_child(self, number: int, params: dict[str, Any], cv: evaluate.CVResult) -> None:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(
            self.where.experiment_id,
            run_name=f"trial-{number}",
            tags={
                PARENT_TAG: self.where.parent_run_id,
                STUDY_TAG: self.shared.name,
                TRIAL_TAG: str(number),
                ROLE_TAG: "trial",
                "winequality.family": self.plan.family.name,
                "winequality.worker": self.worker_id,
            },
        )
        now = int(time.time() * 1000)
        self.client.log_batch(
            run.info.run_id,
            # mean and std, plus every fold's value as the metric `fold_<name>` at step = fold
            metrics=[Metric(k, v, now, 0) for k, v in cv.flat().items()]
            + [
                Metric(f"fold_{k}", v, now, step)
                for step, fold in enumerate(cv.per_fold)
                for k, v in fold.items()
            ],
            params=[
                Param(k, repr(v) if isinstance(v, float) else str(v)) for k, v in params.items()
            ],
        )
        self.client.set_terminated(run.info.run_id, "FINISHED")


class _Helper:
    """A worker process forked by this command: it waits for the tracking details, then runs
    the same loop, and reports the trials it finished (or its error) through a pipe."""

    def __init__(self, process: Any, connection: Any) -> None:
        self.process, self.connection = process, connection

    @classmethod
    def start(cls, plan: WorkerPlan) -> _Helper:
        context: Any = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_helper_main, args=(plan, child_end), daemon=True)
        process.start()
        child_end.close()
        return cls(process, parent_end)

    def go(self, where: Tracking) -> None:
        self.connection.send(where)

    def cancel(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join(timeout=30)

    def interrupt(self) -> set[int]:
        """Stop the helper as Ctrl+C does (after its running trial); the trials it finished."""
        self.process.join(timeout=0.5)  # a Ctrl+C at the terminal may have reached it already
        if self.process.is_alive() and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)
        if not self.connection.poll(60):  # a trial is never that long: the helper is stuck
            self.process.kill()
        with contextlib.suppress(Exception):
            return self.finish()
        return set()

    def finish(self) -> set[int]:
        """Wait for the helper; the trials it finished, or its error raised here."""
        try:
            outcome = self.connection.recv()
        except (EOFError, OSError):
            outcome = ("error", None, "a worker process died without a word", 1)
        finally:
            self.process.join(timeout=60)
        if outcome[0] in ("done", "interrupted"):
            return set(outcome[1])
        _, kind, text, _exit_code = outcome
        if kind is not None:  # a deliberate error, with its message
            raise SweepError(f"a worker process stopped: {text}")
        raise RuntimeError(f"a worker process failed:\n{text}")


def _helper_main(plan: WorkerPlan, connection: Any) -> None:
    with StopRequest() as stop:
        # While the command opens the stores, this process imports what it will need and joins
        # the study: its start-up overlaps the command's instead of following it.
        import mlflow
        from mlflow.store.tracking import sqlalchemy_store  # noqa: F401  (the SQLite/SQL store)

        shared = _join_study(plan)
        where = connection.recv()
        if where is None:
            return
        worker = None
        try:
            tracking.connect(plan.config.tracking_uri)
            worker = _Worker(plan, where, shared, mlflow.MlflowClient(), stop)
            with single_threaded_openmp():
                worker.run()
            outcome = "interrupted" if stop.requested else "done"
            connection.send((outcome, worker.finished_here))
        except KeyboardInterrupt:
            connection.send(("interrupted", worker.finished_here if worker else []))
        except WinequalityError as exc:
            connection.send(("error", type(exc).__name__, str(exc), exc.exit_code))
        except BaseException:
            connection.send(("error", None, traceback.format_exc(), 1))
        finally:
            connection.close()


# ---------------------------------------------------------------------------------------------
# The final step: refit, test once, log, register, gate
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holdout:
    """The data and its split: CV runs on `train`, the final model is tested once on `test`."""

    wine: wine_data.WineData
    train: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class Refit:
    estimator: Any
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_test: np.ndarray
    predicted: np.ndarray
    test_metrics: dict[str, float]


def refit_and_test(
    family: model.Family,
    params: dict[str, Any],
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
) -> Refit:
    """Fit on the training rows, score once on the held-out rows."""
    features = list(schema.FEATURE_NAMES)
    x_train, y_train = train_frame[features], train_frame[schema.TARGET.name].to_numpy()
    x_test, y_test = test_frame[features], test_frame[schema.TARGET.name].to_numpy()
    estimator = family.build(params).fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    metrics = evaluate.regression_metrics(y_test, predicted)
    return Refit(estimator, x_train, x_test, y_test, predicted, metrics)


def finalize(
    plan: WorkerPlan, shared: SharedStudy, holdout: Holdout, where: Tracking
) -> FinalModel:
    """Refit the best trial, test it once, log it with its evaluation, register and gate."""
    config, family = plan.config, plan.family
    best = shared.study.best_trial
    refit = refit_and_test(family, dict(best.params), holdout.train, holdout.test)
    run_id, model_uri = log_final_run(plan, shared, holdout, where, refit)
    decision = None
    if config.register:
        decision = register_and_gate(config, family, shared.name, model_uri, best, refit)
    return FinalModel(run_id, model_uri, refit.test_metrics, decision)


def log_final_run(
    plan: WorkerPlan, shared: SharedStudy, holdout: Holdout, where: Tracking, refit: Refit
) -> tuple[str, str]:
    """The final run: params, test and CV metrics, datasets, plots, report and the model."""
    import tempfile

    import mlflow

    config, family = plan.config, plan.family
    best = shared.study.best_trial
    cv = best.user_attrs["cv"]
    with mlflow.start_run(
        experiment_id=where.experiment_id,
        run_name=f"best of {shared.name} (trial {best.number})",
        tags={
            PARENT_TAG: where.parent_run_id,
            STUDY_TAG: shared.name,
            ROLE_TAG: "final",
            **logged_model.provenance_tags(),
        },
    ) as run:
        mlflow.log_params(
            {
                "family": family.name,
                **best.params,
                "best_trial": best.number,
                "protocol": config.protocol,
                "holdout": "grouped",
                "holdout_seed": config.seed,
            }
        )
        mlflow.log_metrics(
            {
                **{f"test_{k}": v for k, v in refit.test_metrics.items()},
                **{f"cv_{k}": v for k, v in cv["mean"].items()},
            }
        )
        logged_model.log_datasets(holdout.wine, holdout.train, holdout.test)
        with tempfile.TemporaryDirectory() as folder:
            for path in evaluation_artifacts(Path(folder), plan, shared, refit):
                mlflow.log_artifact(str(path), artifact_path="evaluation")
        profile = Profile.from_features(refit.x_train.to_numpy(dtype=np.float64))
        info = logged_model.log_model(refit.estimator, schema.input_example(refit.x_train), profile)
    return run.info.run_id, info.model_uri


def evaluation_artifacts(
    folder: Path, plan: WorkerPlan, shared: SharedStudy, refit: Refit
) -> list[Path]:
    """Plots (predicted vs actual, importance, the search) and a Markdown report."""
    config, family = plan.config, plan.family
    best = shared.study.best_trial
    importance, label = evaluate.feature_importance(refit.estimator, refit.x_test, refit.y_test)
    plots = [
        evaluate.plot_predictions(
            refit.y_test, refit.predicted, folder / "predicted_vs_actual.png"
        ),
        evaluate.plot_importance(importance, label, folder / "importance.png"),
    ]
    done = [(t.params, float(t.value)) for t in shared.trials("COMPLETE") if t.value is not None]
    plots.append(
        evaluate.plot_search(
            [p for p, _ in done], [v for _, v in done], *family.axes, folder / "search.png"
        )
    )
    report = evaluate.write_report(
        folder / "report.md",
        title=f"{family.name}: best of study {shared.name}",
        protocol=f"{config.protocol}: {evaluate.PROTOCOLS[config.protocol]}, "
        f"{config.folds} folds x {config.repeats} on the training split; test = held-out "
        f"{config.test_size:.0%}, no wine on both sides (seed {config.seed})",
        cv=evaluate.CVResult(best.user_attrs["cv"]["folds"]),
        test=refit.test_metrics,
        params=dict(best.params),
        plots=plots,
    )
    return [*plots, report]


def register_and_gate(
    config: SweepConfig,
    family: model.Family,
    study: str,
    model_uri: str,
    best: Any,
    refit: Refit,
) -> registry.Decision:
    """Register the final model and let the gate decide its alias on the same held-out rows."""
    cv = best.user_attrs["cv"]["mean"]
    version = registry.register(
        model_uri,
        config.model_name,
        tags={
            STUDY_TAG: study,
            "winequality.family": family.name,
            "winequality.protocol": config.protocol,
            **{f"test_{k}": f"{v:.6f}" for k, v in refit.test_metrics.items()},
            **{f"cv_{k}": f"{v:.6f}" for k, v in cv.items()},
        },
    )
    return registry.gate(
        config.model_name,
        version,
        refit.test_metrics["rmse"],
        refit.x_test.to_numpy(),
        refit.y_test,
        force=config.force,
        tracking_uri=config.tracking_uri,
    )
