"""Hyperparameter sweeps: an Optuna study mirrored as nested MLflow runs, shareable by workers.

The Optuna study (SQLite by default, PostgreSQL for teams) is the source of truth; MLflow is its
record. Per study there is one parent run; every trial is one child run (params and CV metrics
in one batch) created *before* the trial is told COMPLETE, so a finished trial always has its
run. A worker killed in between leaves a RUNNING trial whose heartbeat stops: it is marked FAIL
after the grace period and its orphan run deleted, so no finished trial is lost and none is
logged twice. `--trials N` is the study's target of finished trials, whoever runs them.

When the target is reached, exactly one worker (the one that finished the last trial) refits
the best trial on the training split, evaluates it once on the held-out split, logs it as
`train` does, registers it and runs the champion gate. No training or logging code lives here
that `train`, `evaluate` or `registry` already own.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import data as wine_data
from winequality import evaluate, model, registry, schema, tracking
from winequality.errors import first_line

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_EXPERIMENT = "winequality-sweep"
HEARTBEAT_SECONDS = 2
GRACE_SECONDS = 10  # a RUNNING trial silent this long belongs to a dead worker
STUDY_TAG, TRIAL_TAG, ROLE_TAG = "winequality.study", "winequality.trial", "winequality.role"
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class SweepConfig:
    data: str | None = None
    wine: wine_data.Wine = "red"
    family: str = "elasticnet"
    trials: int = 50  # finished trials the study should hold (all workers together)
    jobs: int = 1  # parallel workers in this process
    timeout: float | None = None  # stop starting trials after this many seconds
    grid: bool = False
    study: str | None = None  # default: "<family>-<protocol>"
    storage: str | None = None  # default: sqlite:///optuna.db
    protocol: evaluate.Protocol = "grouped"
    folds: int = 5
    repeats: int = 1
    seed: int = 40  # split, folds and sampler
    test_size: float = 0.25
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    model_name: str = registry.DEFAULT_MODEL_NAME
    register: bool = True
    force: bool = False

    @property
    def study_name(self) -> str:
        return self.study or f"{self.family}-{self.protocol}"


@dataclass(frozen=True)
class TrialEvent:
    number: int
    value: float
    best_value: float
    complete: int
    target: int


@dataclass
class SweepResult:
    study: str
    parent_run_id: str
    complete: int
    ran_here: int
    best_trial: int
    best_params: dict[str, Any]
    best_cv: dict[str, float]
    finalized: bool = False  # False when another worker finalizes
    final_run_id: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    decision: registry.Decision | None = None


class SweepError(ValueError):
    """The sweep cannot run as asked (e.g. a study created with other settings)."""


def run_sweep(
    config: SweepConfig, on_trial: Callable[[TrialEvent], None] | None = None
) -> SweepResult:
    """Run (or join, or resume) a sweep until the study holds `config.trials` finished trials."""
    import optuna

    family = model.family(config.family)
    if config.trials < 1 or config.jobs < 1:
        raise ValueError("--trials and --jobs must be at least 1")
    wine = wine_data.load(config.data, config.wine)
    train_frame, test_frame = wine_data.split(wine.frame, config.test_size, config.seed)
    features = list(schema.FEATURE_NAMES)
    folds = evaluate.make_folds(
        train_frame, config.protocol, folds=config.folds, repeats=config.repeats, seed=config.seed
    )
    tracking.connect(config.tracking_uri)
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = _set_experiment(config.experiment)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage or DEFAULT_STORAGE)
    grid = family.grid if config.grid else None
    target = (
        min(config.trials, int(np.prod([len(v) for v in grid.values()]))) if grid else config.trials
    )
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=_sampler(grid, config.seed),
    )
    _check_same_settings(study, config, wine.sha256)
    parent = ensure_parent_run(client, experiment_id, study.study_name, config)
    _delete_orphans(client, experiment_id, study)

    x_train = train_frame[features]
    y_train = train_frame[schema.TARGET.name]
    worker = _Worker(
        study,
        family,
        folds,
        x_train,
        y_train,
        client,
        experiment_id,
        parent,
        target,
        config.timeout,
        on_trial,
    )
    if config.jobs == 1:
        worker.run()
    else:  # threads share the study and its sampler, as Optuna's own n_jobs does
        threads = [threading.Thread(target=worker.run) for _ in range(config.jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    _delete_orphans(client, experiment_id, study)
    if worker.errors:
        raise worker.errors[0]

    complete = _trials(study, "COMPLETE")
    if not complete:
        raise SweepError("no trial finished (timeout too short?)")
    best = study.best_trial
    result = SweepResult(
        study.study_name,
        parent,
        len(complete),
        len(worker.mine),
        best.number,
        dict(best.params),
        dict(best.user_attrs.get("cv", {})),
    )
    if _should_finalize(study, worker.mine, target):
        _finalize(result, config, family, study, wine, train_frame, test_frame, experiment_id)
        study.set_user_attr("finalized_best", best.number)
        client.set_terminated(parent, "FINISHED")
    return result


# ---------------------------------------------------------------------------------------------


def _fail_stale_trials(study: Any) -> None:
    """Mark trials of dead workers FAIL: silent heartbeats, or none ever recorded.

    Optuna only knows the first kind; a worker killed between ask() and its first heartbeat
    leaves a RUNNING trial with no heartbeat row, which would otherwise block the study forever.
    """
    import datetime

    import optuna
    from optuna.storages._rdb.models import TrialHeartbeatModel  # Optuna's own table
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # "experimental" since Optuna 2.9, and what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    running = _trials(study, "RUNNING")
    if not running:
        return
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    with storage.engine.connect() as connection:
        beating = {
            row[0]
            for row in connection.execute(
                TrialHeartbeatModel.__table__.select().with_only_columns(
                    TrialHeartbeatModel.trial_id
                )
            )
        }
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=GRACE_SECONDS)
    for trial in running:
        if trial._trial_id not in beating and trial.datetime_start < cutoff:
            with contextlib.suppress(Exception):  # another worker may have failed it first
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


def open_storage(url: str) -> Any:
    """Optuna's RDB storage with heartbeats, so trials of dead workers are failed, not stuck."""
    import optuna

    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # several threads or processes write
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                )
        except Exception as exc:
            last = exc
            # Workers starting together race to create Optuna's tables in a new database:
            # the loser sees a duplicate and simply tries again once the tables exist.
            if not _is_creation_race(exc):
                break
            time.sleep(0.5 * (attempt + 1))
    assert last is not None
    first = first_line(last)
    raise tracking.TrackingError(
        f"cannot open the Optuna storage {tracking._redact(url)}: {first}"
    ) from last


def _is_creation_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return "duplicate key" in text or "already exists" in text or "unique constraint" in text


def _set_experiment(name: str) -> str:
    """Get or create the experiment; two workers creating it at once both end up using it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for _ in range(5):
        try:
            return str(mlflow.set_experiment(name).experiment_id)
        except MlflowException as exc:
            if not _is_creation_race(exc):
                raise
            time.sleep(0.5)
    return str(mlflow.set_experiment(name).experiment_id)


def _sampler(grid: dict[str, list[Any]] | None, seed: int | None) -> Any:
    import optuna

    if grid is not None:
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, multivariate=True)


def _check_same_settings(study: Any, config: SweepConfig, data_sha: str) -> None:
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
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise SweepError(
            f"study {study.study_name!r} was created with other settings "
            f"({', '.join(changed)} differ); resume it with the same ones or "
            f"choose another --study"
        )


def _trials(study: Any, *states: str) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states))


def ensure_parent_run(client: Any, experiment_id: str, study: str, config: SweepConfig) -> str:
    """One parent run per study, even when workers start at the same moment.

    Each worker looks for the study's parent; if there is none it creates one, then looks
    again and adopts the oldest, deleting its own if it lost the race.
    """

    def parents() -> list[Any]:
        runs = client.search_runs(
            [experiment_id],
            filter_string=(f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'sweep'"),
            max_results=50,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = parents()
    if found:
        return str(found[0].info.run_id)
    from winequality.train import provenance_tags

    mine = client.create_run(
        experiment_id,
        run_name=f"sweep {study}",
        tags={STUDY_TAG: study, ROLE_TAG: "sweep", **provenance_tags()},
    )
    settings = {
        k: v for k, v in asdict(config).items() if k not in ("tracking_uri", "data", "storage")
    }
    from mlflow.entities import Param

    client.log_batch(mine.info.run_id, params=[Param(k, str(v)) for k, v in settings.items()])
    winner = parents()[0].info.run_id
    if winner != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return str(winner)


def _children(client: Any, experiment_id: str, study: str) -> dict[int, list[str]]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'trial'"),
        max_results=50_000,
    )
    by_trial: dict[int, list[str]] = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags[TRIAL_TAG]), []).append(run.info.run_id)
    return by_trial


def _delete_orphans(client: Any, experiment_id: str, study: Any) -> None:
    """Runs of trials that never finished (their worker died) are removed."""

    _fail_stale_trials(study)
    failed = {t.number for t in _trials(study, "FAIL")}
    if not failed:
        return
    for number, run_ids in _children(client, experiment_id, study.study_name).items():
        if number in failed:
            for run_id in run_ids:
                client.delete_run(run_id)


@contextlib.contextmanager
def _heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while it runs (Optuna only does this inside optimize())."""
    storage = study._storage
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class _Worker:
    """The ask → cross-validate → log → tell loop; several may run in threads."""

    def __init__(
        self,
        study: Any,
        family: model.Family,
        folds: evaluate.Folds,
        x_train: pd.DataFrame,
        y_train: pd.Series,
        client: Any,
        experiment_id: str,
        parent: str,
        target: int,
        timeout: float | None,
        on_trial: Callable[[TrialEvent], None] | None,
    ) -> None:
        self.study, self.family, self.folds = study, family, folds
        self.x_train, self.y_train = x_train, y_train
        self.client, self.experiment_id, self.parent = client, experiment_id, parent
        self.target, self.on_trial = target, on_trial
        self.deadline = time.monotonic() + timeout if timeout else None
        self.mine: set[int] = set()
        self.errors: list[BaseException] = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.worker_id = uuid.uuid4().hex[:8]

    def run(self) -> None:
        """Loop until done; an error stops every thread of this worker and is kept for later."""
        try:
            while not self.stopped.is_set() and self._step():
                pass
        except BaseException as exc:
            self.errors.append(exc)
            self.stopped.set()

    def _step(self) -> bool:
        from optuna.trial import TrialState

        if self.deadline is not None and time.monotonic() > self.deadline:
            return False
        complete = len(_trials(self.study, "COMPLETE"))
        if complete >= self.target:
            return False
        if complete + len(_trials(self.study, "RUNNING")) >= self.target:
            time.sleep(0.5)  # others are finishing the last trials; stale ones get failed
            _fail_stale_trials(self.study)
            return True
        with warnings.catch_warnings():  # we record heartbeats ourselves, see _heartbeat
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        self.study._storage.record_heartbeat(trial._trial_id)  # at once: see _fail_stale_trials
        active = sorted(t.number for t in _trials(self.study, "COMPLETE", "RUNNING"))
        if trial.number not in active[: self.target]:  # another worker took the last slot
            trial.set_user_attr("overflow", True)
            self.study.tell(trial, state=TrialState.FAIL)
            return True
        try:
            with _heartbeat(self.study, trial):
                params = self.family.suggest(trial)
                cv = evaluate.cross_validate(
                    lambda: self.family.build(params), self.x_train, self.y_train, self.folds
                )
                trial.set_user_attr("cv", cv.mean)
                trial.set_user_attr("cv_folds", cv.per_fold)
                self._log_child(trial.number, params, cv)
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)  # its run, if any, is an orphan now
            raise
        self.study.tell(trial, cv.mean["rmse"])
        with self.lock:
            self.mine.add(trial.number)
        if self.on_trial is not None:
            self.on_trial(
                TrialEvent(
                    trial.number,
                    cv.mean["rmse"],
                    self.study.best_value,
                    len(_trials(self.study, "COMPLETE")),
                    self.target,
                )
            )
        return True

    def _log_child(self, number: int, params: dict[str, Any], cv: evaluate.CVResult) -> None:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={
                PARENT_TAG: self.parent,
                STUDY_TAG: self.study.study_name,
                TRIAL_TAG: str(number),
                ROLE_TAG: "trial",
                "winequality.family": self.family.name,
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


def _should_finalize(study: Any, mine: set[int], target: int) -> bool:
    """Exactly one worker finalizes: the one that finished the study's last trial."""
    if _trials(study, "RUNNING"):
        return False
    if study.user_attrs.get("finalized_best") == study.best_trial.number:
        return False  # already registered by an earlier run of this study
    complete = _trials(study, "COMPLETE")
    if not mine:
        return True  # a rerun of a finished study that was never finalized
    last = max(complete, key=lambda t: (t.datetime_complete, t.number))
    return last.number in mine


def _finalize(
    result: SweepResult,
    config: SweepConfig,
    family: model.Family,
    study: Any,
    wine: wine_data.WineData,
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    experiment_id: str,
) -> None:
    """Refit the best trial, evaluate it once on held-out rows, log, register, gate."""
    import tempfile

    import mlflow

    from winequality.train import log_datasets, log_wine_model, provenance_tags

    features = list(schema.FEATURE_NAMES)
    x_train, y_train = train_frame[features], train_frame[schema.TARGET.name].to_numpy()
    x_test, y_test = test_frame[features], test_frame[schema.TARGET.name].to_numpy()
    estimator = family.build(result.best_params).fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    test_metrics = evaluate.regression_metrics(y_test, predicted)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"best of {result.study} (trial {result.best_trial})",
        tags={
            PARENT_TAG: result.parent_run_id,
            STUDY_TAG: result.study,
            ROLE_TAG: "final",
            **provenance_tags(),
        },
    ) as run:
        mlflow.log_params(
            {
                "family": family.name,
                **result.best_params,
                "best_trial": result.best_trial,
                "protocol": config.protocol,
            }
        )
        mlflow.log_metrics(
            {
                **{f"test_{k}": v for k, v in test_metrics.items()},
                **{f"cv_{k}": v for k, v in result.best_cv.items()},
            }
        )
        log_datasets(wine, train_frame, test_frame)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            importance, label = evaluate.feature_importance(estimator, x_test, y_test)
            plots = [
                evaluate.plot_predictions(y_test, predicted, out / "predicted_vs_actual.png"),
                evaluate.plot_importance(importance, label, out / "importance.png"),
            ]
            done = [(t.params, float(t.value)) for t in _trials(study, "COMPLETE")]
            if done:
                plots.append(
                    evaluate.plot_search(
                        [p for p, _ in done], [v for _, v in done], *family.axes, out / "search.png"
                    )
                )
            report = evaluate.write_report(
                out / "report.md",
                title=f"{family.name}: best of study {result.study}",
                protocol=f"{config.protocol}: {evaluate.PROTOCOLS[config.protocol]}, "
                f"{config.folds} folds x {config.repeats} on the training split; "
                f"test = held-out {config.test_size:.0%}",
                cv=evaluate.CVResult(study.best_trial.user_attrs["cv_folds"]),
                test=test_metrics,
                params=result.best_params,
                plots=plots,
            )
            for path in [*plots, report]:
                mlflow.log_artifact(str(path), artifact_path="evaluation")
        info = log_wine_model(estimator, schema.input_example(x_train))
        result.final_run_id = run.info.run_id
    result.test_metrics = test_metrics
    result.model_uri = info.model_uri
    result.finalized = True
    if config.register:
        version = registry.register(
            info.model_uri,
            config.model_name,
            tags={
                STUDY_TAG: result.study,
                "winequality.family": family.name,
                "winequality.protocol": config.protocol,
                **{f"test_{k}": f"{v:.6f}" for k, v in test_metrics.items()},
                **{f"cv_{k}": f"{v:.6f}" for k, v in result.best_cv.items()},
            },
        )
        result.decision = registry.gate(
            config.model_name,
            version,
            test_metrics["rmse"],
            x_test.to_numpy(),
            y_test,
            force=config.force,
            tracking_uri=config.tracking_uri,
        )
