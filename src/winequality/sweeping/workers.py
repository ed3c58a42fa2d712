"""The processes of a sweep: the ask → cross-validate → log → tell loop, run by the command
and by the helper processes it forks, which report back through a pipe in typed messages."""

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from winequality import evaluate, tracking
from winequality.errors import SweepError, WinequalityError
from winequality.processes import watch_parent
from winequality.sweeping.config import TrialEvent, Where, WorkerPlan
from winequality.sweeping.studies import join_study
from winequality.tracking import (
    FAMILY_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    WORKER_TAG,
)

if TYPE_CHECKING:
    from winequality.sweeping.studies import SharedStudy

__all__ = [
    "Failed",
    "Finished",
    "Helper",
    "StopRequest",
    "Worker",
    "single_threaded_openmp",
]


@contextlib.contextmanager
def single_threaded_openmp() -> Iterator[None]:
    """OpenMP (hist-gradient-boosting's threads) kept to one thread in a process that forks
    workers. GNU OpenMP cannot be forked once its thread pool exists: a worker forked by a
    later sweep in the same process would hang at its first fit. One thread per process is
    also what N workers on N cores want."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


class StopRequest:
    """Ctrl+C or SIGTERM ends a worker between trials: the running trial finishes (its run
    logged and its state told), so nothing is left RUNNING.

    A second signal hurries: while a trial runs (`interruptible`), it is cut short by a
    KeyboardInterrupt (the trial is failed, not left RUNNING); during the clean-up after a stop
    it only sets `hurry`, so that the clean-up skips its waits but still runs to the end
    (the parent run marked KILLED, the resume command printed)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.hurry = False
        self.interruptible = True
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            return
        self.hurry = True
        if self.interruptible:
            self.interruptible = False
            raise KeyboardInterrupt


class Worker:
    """The ask → cross-validate → log → tell loop of one process."""

    def __init__(
        self,
        plan: WorkerPlan,
        where: Where,
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
                FAMILY_TAG: self.plan.family.name,
                WORKER_TAG: self.worker_id,
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


class Helper:
    """A worker process forked by this command: it waits for the tracking details, then runs
    the same loop, and reports the trials it finished (or its error) through a pipe."""

    def __init__(self, process: Any, connection: Any) -> None:
        self.process, self.connection = process, connection

    @classmethod
    def start(cls, plan: WorkerPlan) -> Helper:
        context: Any = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_helper_main, args=(plan, child_end, os.getpid()), daemon=True
        )
        process.start()
        child_end.close()
        return cls(process, parent_end)

    def go(self, where: Where) -> None:
        self.connection.send(where)

    def cancel(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join(timeout=30)

    def interrupt(self, stop: StopRequest) -> set[int]:
        """Stop the helper as Ctrl+C does (after its running trial), or at once if the stop
        is hurried (its trial failed, not left RUNNING); the trials it finished."""
        self.process.join(timeout=0.5)  # a Ctrl+C at the terminal may have reached it already
        self._signal()
        hurried = False
        deadline = time.monotonic() + 60  # a trial is never that long: the helper is stuck
        while not self.connection.poll(0.1):
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.process.kill()
                break
            if stop.hurry and not hurried:  # a second signal: the helper's own second one
                hurried, deadline = True, time.monotonic() + 10
                self._signal()
        with contextlib.suppress(Exception):
            return self.finish()
        return set()

    def _signal(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)

    def finish(self) -> set[int]:
        """Wait for the helper; the trials it finished, or its error raised here."""
        try:
            outcome = self.connection.recv()
        except (EOFError, OSError):
            outcome = Failed(None, "a worker process died without a word")
        finally:
            self.process.join(timeout=60)
        if isinstance(outcome, Finished):
            return set(outcome.trials)
        if outcome.error is not None:  # a deliberate error, with its message
            raise SweepError(f"a worker process stopped: {outcome.text}")
        raise RuntimeError(f"a worker process failed:\n{outcome.text}")


# What a helper process says when it ends, through its pipe (pickled).
@dataclass(frozen=True)
class Finished:
    """It ran trials until the goal, the deadline or a stop request."""

    trials: list[int]  # the trials it finished
    interrupted: bool


@dataclass(frozen=True)
class Failed:
    """It stopped on an error: a deliberate one (its class name) or a bug (`error` None)."""

    error: str | None
    text: str  # the message, or the bug's traceback


def _helper_main(plan: WorkerPlan, connection: Any, parent: int) -> None:
    with StopRequest() as stop:
        watch_parent(parent, signal.SIGINT)  # the command gone (even SIGKILLed): stop too
        # While the command opens the stores, this process imports what it will need and joins
        # the study: its start-up overlaps the command's instead of following it.
        import mlflow  # noqa: F401

        shared = join_study(plan)
        where = connection.recv()
        if where is None:
            return
        worker = None
        try:
            store = tracking.client(plan.config.tracking_uri)
            worker = Worker(plan, where, shared, store, stop)
            with single_threaded_openmp():
                worker.run()
            outcome: Finished | Failed = Finished(worker.finished_here, stop.requested)
        except KeyboardInterrupt:
            outcome = Finished(worker.finished_here if worker else [], True)
        except WinequalityError as exc:
            outcome = Failed(type(exc).__name__, str(exc))
        except BaseException:
            outcome = Failed(None, traceback.format_exc())
        with contextlib.suppress(OSError):  # a parent that is gone reads nothing
            connection.send(outcome)
        connection.close()
