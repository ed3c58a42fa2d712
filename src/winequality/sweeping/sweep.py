"""`run_sweep`: the steps of a sweep, in order; each step lives in a room of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from winequality import data as wine_data
from winequality import evaluate, model, registry, schema, tracking
from winequality.errors import ParameterError, SweepError
from winequality.sweeping import final, runs
from winequality.sweeping.config import (
    SweepConfig,
    SweepInterrupted,
    SweepResult,
    TrialEvent,
    Where,
    WorkerPlan,
)
from winequality.sweeping.studies import check_same_settings, join_study
from winequality.sweeping.workers import Helper, StopRequest, Worker, single_threaded_openmp

if TYPE_CHECKING:
    from winequality.sweeping.studies import SharedStudy

__all__ = ["FINALIZED_ATTR", "run_sweep"]

FINALIZED_ATTR = "finalized"  # the study's record of the model its best trial became


@dataclass(frozen=True)
class _Opened:
    """The stores as the command opened them."""

    shared: SharedStudy
    store: Any  # an MlflowClient bound to the tracking store
    uri: str
    where: Where


def run_sweep(
    config: SweepConfig,
    on_trial: Callable[[TrialEvent], None] | None = None,
    stop: StopRequest | None = None,
) -> SweepResult:
    """Run (or join, or resume) a sweep until the study holds `config.trials` finished trials.

    `stop` handles SIGINT and SIGTERM while trials run (a caller may keep it, to know
    afterwards that a stop was asked for)."""
    plan, holdout = _plan(config)
    # Both stores are checked before anything is written to either: the tracking store
    # answers (read only), then the Optuna storage opens, then the tracking store is used.
    tracking.preflight(tracking.resolve_uri(config.tracking_uri))
    # Helpers fork now, before any store is opened: each opens its own connections.
    helpers = [Helper.start(plan) for _ in range(config.jobs - 1)]
    try:
        opened = _open_stores(plan, holdout.wine.sha256)
    except BaseException:
        for helper in helpers:
            helper.cancel()
        raise
    for helper in helpers:
        helper.go(opened.where)
    mine = _run_trials(plan, opened, helpers, on_trial, stop or StopRequest())
    runs.delete_orphans(opened.store, opened.where.experiment_id, opened.shared)
    return _conclude(plan, opened, holdout, mine)


def _plan(config: SweepConfig) -> tuple[WorkerPlan, final.Holdout]:
    """Read the data, split it, make the folds: what every worker is given."""
    family = model.family(config.family)
    if config.trials < 1 or config.jobs < 1:
        raise ParameterError("--trials and --jobs must be at least 1")
    wine = wine_data.load(config.data, config.wine)
    wine_data.require_rows(wine, config.test_size, config.folds)
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
    return plan, final.Holdout(wine, train_frame, test_frame)


def _open_stores(plan: WorkerPlan, data_sha256: str) -> _Opened:
    """Join the study, then the tracking store: the parent run, revived if trials remain."""
    config = plan.config
    shared = join_study(plan)
    uri = tracking.connect(config.tracking_uri)
    store = tracking.client(uri)
    experiment_id = str(tracking.use_experiment(store, config.experiment).experiment_id)
    check_same_settings(shared, config, data_sha256)
    parent = runs.ensure_parent_run(store, experiment_id, shared.name, config)
    runs.link_project_run(store, shared.name, parent)
    if len(shared.trials("COMPLETE")) < plan.trial_goal:  # trials to run: the sweep is live
        store.update_run(parent, status="RUNNING")  # (after an interruption: KILLED)
    runs.delete_orphans(store, experiment_id, shared)
    return _Opened(shared, store, uri, Where(experiment_id, parent))


def _run_trials(
    plan: WorkerPlan,
    opened: _Opened,
    helpers: list[Helper],
    on_trial: Callable[[TrialEvent], None] | None,
    stop: StopRequest,
) -> set[int]:
    """This process's trials beside the helpers'; the trials finished by this command.

    Ctrl+C or SIGTERM stops every worker after its running trial (a second signal at once);
    the parent run is marked KILLED and SweepInterrupted says how many trials are kept."""
    with stop:
        if helpers:
            final.import_final_step()  # while the helpers compute: off the serial tail
        worker = Worker(plan, opened.where, opened.shared, opened.store, stop, on_trial)
        try:
            with single_threaded_openmp():
                worker.run()
        except KeyboardInterrupt:  # a second signal during a trial: cut short (and failed)
            stop.requested = True
        except BaseException:
            for helper in helpers:
                helper.interrupt(stop)
            raise
        stop.interruptible = False  # from here a further signal only hurries the clean-up
        if stop.requested:
            for helper in helpers:
                helper.interrupt(stop)
            where, shared = opened.where, opened.shared
            runs.delete_orphans(opened.store, where.experiment_id, shared)
            opened.store.update_run(where.parent_run_id, status="KILLED")  # resume revives it
            kept = len(shared.trials("COMPLETE"))
            raise SweepInterrupted(shared.name, kept, plan.trial_goal)
    mine = set(worker.finished_here)
    for helper in helpers:
        mine |= helper.finish()  # raises a helper's error here
    return mine


def _conclude(
    plan: WorkerPlan, opened: _Opened, holdout: final.Holdout, mine: set[int]
) -> SweepResult:
    """The best trial; the final step if this command finished the study's last trial."""
    shared, where = opened.shared, opened.where
    complete = shared.trials("COMPLETE")
    if not complete:
        raise SweepError("no trial finished (is --timeout too short?)")
    best = shared.study.best_trial
    store_name = tracking.redact(opened.uri)
    finalized_before = shared.study.user_attrs.get(FINALIZED_ATTR)
    if finalized_before and (
        finalized_before.get("best_trial") != best.number
        or finalized_before.get("store") != store_name
    ):
        finalized_before = None  # a better trial since, or another tracking store: register
    if finalized_before and finalized_before.get("version"):  # where its version stands now
        aliases, champion = registry.standing(
            plan.config.model_name, finalized_before["version"], plan.config.tracking_uri
        )
        finalized_before = {**finalized_before, "aliases_now": aliases, "champion_now": champion}
    done = None
    if finalized_before is None and runs.should_finalize(shared, mine):
        with single_threaded_openmp():
            done = final.finalize(plan, shared, holdout, where)
        decision = done.decision
        shared.study.set_user_attr(
            FINALIZED_ATTR,
            {
                "best_trial": best.number,
                "run_id": done.run_id,
                "model_uri": done.model_uri,
                "version": decision.version if decision else None,
                "alias": decision.alias if decision else None,
                "store": store_name,
            },
        )
        opened.store.set_terminated(where.parent_run_id, "FINISHED")
    return SweepResult(
        study=shared.name,
        parent_run_id=where.parent_run_id,
        parent_run_url=runs.run_url(opened.uri, where.experiment_id, where.parent_run_id),
        complete=len(complete),
        trial_goal=plan.trial_goal,
        ran_here=len(mine),
        best_trial=best.number,
        best_params=dict(best.params),
        best_cv=dict(best.user_attrs.get("cv", {}).get("mean", {})),
        stopped_early=len(complete) < plan.trial_goal,
        final=done,
        finalized_before=finalized_before,
    )
