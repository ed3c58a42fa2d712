"""Optuna, as the sweep uses it: storages, liveness of trials and samplers, on public API only.

- `open_storage(url)`: PostgreSQL/MySQL/SQLite URLs open Optuna's RDB storage (the team
  choice); anything else is a file path for Optuna's journal storage, built for many local
  processes (the local default). Workers that start together and race to create the tables
  retry.
- `SharedStudy`: one study as seen by one worker. Liveness is ours: a worker records a
  heartbeat as a trial user attribute every few seconds while a trial runs, and a RUNNING trial
  whose last heartbeat (or start, if it has none) is older than the grace period belongs to a
  dead worker and is failed. Optuna's own heartbeats exist only for RDB storages and only
  inside `study.optimize`; ours work with every storage and with an ask/tell loop, and also
  catch a worker killed between `ask()` and its first beat.
- `TrialSeededSampler`: each trial's randomness comes from (seed, trial number). Trial numbers
  are unique across workers, so two workers never draw alike, while one worker with a seed
  replays the same sweep.

`tests/test_studies.py` checks what this relies on against the installed Optuna.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from winequality.errors import SweepError, TrackingError, first_line

if TYPE_CHECKING:
    from winequality.sweeping.config import SweepConfig, WorkerPlan

__all__ = [
    "GRACE_SECONDS",
    "HEARTBEAT_ATTR",
    "HEARTBEAT_SECONDS",
    "OUTAGE_SECONDS",
    "FlockLock",
    "GridWalk",
    "RetryingStorage",
    "SharedStudy",
    "TrialSeededSampler",
    "check_same_settings",
    "is_rdb",
    "is_transient",
    "join_study",
    "make_sampler",
    "open_storage",
    "trial_seed",
]

OUTAGE_SECONDS = 120.0  # how long a worker waits out a database that dropped away
HEARTBEAT_SECONDS = 2.0
GRACE_SECONDS = 10.0  # a RUNNING trial silent this long belongs to a dead worker
HEARTBEAT_ATTR = "winequality.heartbeat"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "oracle")


def is_rdb(url: str) -> bool:
    return url.split(":", 1)[0].split("+")[0].lower() in RDB_SCHEMES


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; one line (TrackingError) if it cannot be opened."""
    from winequality.tracking import is_creation_race, redact

    last: Exception | None = None
    for attempt in range(5):
        try:
            if not is_rdb(url):
                if "://" in url:
                    raise ValueError(
                        "use postgresql://…, mysql://…, sqlite:///FILE or a journal file path"
                    )
                from optuna.storages.journal import JournalFileBackend

                lock = FlockLock(url) if FlockLock.available() else None
                return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=lock))
            engine: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                engine["connect_args"] = {"timeout": 60}  # several processes write
            elif url.startswith("postgresql"):
                engine["connect_args"] = {"connect_timeout": 5}
            return RetryingStorage(optuna.storages.RDBStorage(url, engine_kwargs=engine))
        except Exception as exc:
            last = exc
            # Workers starting together race to create Optuna's tables in a new database:
            # the loser sees a duplicate and simply tries again once the tables exist.
            if not is_creation_race(exc):
                break
            time.sleep(0.5 * (attempt + 1))
    assert last is not None
    raise TrackingError(
        f"cannot open the Optuna storage {redact(url)}: {first_line(last)}"
    ) from last


class FlockLock(JournalFileOpenLock):
    """The journal file's lock as a kernel lock (`flock`) on a side file.

    Optuna's default lock (a symlink) is polled with sleeps that double up to a second, so
    local workers writing often wait far longer than the write takes; and a worker killed while
    holding it blocks the others for the lock's 30-s grace period. A kernel lock wakes the next
    waiter at once and is released by the kernel when its holder dies. Local file systems
    only: on NFS, use Optuna's own locks (or PostgreSQL).
    """

    # A subclass of Optuna's public lock type, so JournalFileBackend takes it as one of its own.
    def __init__(self, journal_path: str) -> None:  # no super().__init__: nothing of it is used
        self.path = journal_path + ".flock"
        self._fd: int | None = None

    @staticmethod
    def available() -> bool:
        return hasattr(os, "O_CREAT") and _fcntl() is not None

    def acquire(self) -> bool:
        fcntl = _fcntl()
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    return fcntl


def is_transient(exc: BaseException) -> bool:
    """A lost or refused database connection (worth waiting out), not a wrong request."""
    import sqlalchemy.exc

    if isinstance(exc, optuna.exceptions.StorageInternalError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
        )
    return isinstance(exc, ConnectionError)


class _Retrying(BaseStorage):
    """Delegates every storage call, retrying with backoff while the database is away.

    A team's database or network drops away for a while; workers wait (up to OUTAGE_SECONDS)
    instead of dying. A state change retried after it had in fact been applied is recognised
    as done.
    """

    def __init__(self, inner: BaseStorage, patience: float = OUTAGE_SECONDS) -> None:
        self.inner, self.patience = inner, patience

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.patience
        delay, retried = 0.5, False
        while True:
            try:
                return getattr(self.inner, name)(*args, **kwargs)
            except Exception as exc:
                if retried and name == "set_trial_state_values" and self._already(args, kwargs):
                    return True
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay, retried = min(delay * 2, 8.0), True

    def _already(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        trial_id = kwargs.get("trial_id", args[0] if args else None)
        state = kwargs.get("state", args[1] if len(args) > 1 else None)
        if trial_id is None:
            return False
        with contextlib.suppress(Exception):
            return bool(self.inner.get_trial(int(trial_id)).state == state)
        return False


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: _Retrying, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    return method


# Every public storage method, delegated with retries (the class is built from the list so
# that a method Optuna adds is delegated too).
RetryingStorage: type[_Retrying] = type(
    "RetryingStorage",
    (_Retrying,),
    {
        name: _delegate(name)
        for name in dir(BaseStorage)
        if not name.startswith("_") and callable(getattr(BaseStorage, name))
    },
)


@dataclass(frozen=True)
class SharedStudy:
    """One study, shared by every worker, as this worker sees it."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    study_id: int

    @classmethod
    def join(
        cls, storage: optuna.storages.BaseStorage, name: str, sampler: BaseSampler
    ) -> SharedStudy:
        """Create the study `name` (minimising) or join it."""
        from winequality.tracking import is_creation_race

        for attempt in range(5):
            try:
                study = optuna.create_study(
                    study_name=name,
                    storage=storage,
                    direction="minimize",
                    load_if_exists=True,
                    sampler=sampler,
                )
                return cls(study, storage, storage.get_study_id_from_name(name))
            except Exception as exc:
                if not is_creation_race(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    @property
    def name(self) -> str:
        return self.study.study_name

    def trials(self, *states: str) -> list[FrozenTrial]:
        """The trials in these states (all of them with none), without copying."""
        chosen = tuple(TrialState[s] for s in states) if states else None
        return list(self.study.get_trials(deepcopy=False, states=chosen))

    def trial_id(self, number: int) -> int:
        """The storage's id of trial `number` (Optuna keeps it private on trial objects)."""
        return int(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number))

    def beat(self, trial_id: int) -> None:
        self.storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int) -> Iterator[None]:
        """Beat for a trial every few seconds while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(Exception):  # a missed beat is retried; grace is 5
                    self.beat(trial_id)

        thread = threading.Thread(target=loop, daemon=True, name=f"heartbeat-{trial_id}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_stale_trials(self, grace: float = GRACE_SECONDS) -> list[int]:
        """Fail RUNNING trials whose worker stopped beating; returns their numbers."""
        now = time.time()
        failed = []
        for trial in self.trials("RUNNING"):
            last = trial.user_attrs.get(HEARTBEAT_ATTR)
            if last is None and trial.datetime_start is not None:
                last = trial.datetime_start.timestamp()  # local time, as Optuna records it
            if last is not None and now - float(last) > grace:
                with contextlib.suppress(Exception):  # another worker may have ended it
                    self.storage.set_trial_state_values(
                        self.trial_id(trial.number), state=TrialState.FAIL
                    )
                    failed.append(trial.number)
        return failed

    def tell_fail(self, trial: optuna.Trial) -> None:
        """Mark a trial this worker owns FAIL, unless it has already ended."""
        with contextlib.suppress(Exception):
            self.study.tell(trial, state=TrialState.FAIL)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number * 7_919) % (2**32)


class TrialSeededSampler(BaseSampler):
    """A sampler whose randomness is a function of (seed, trial number).

    It delegates to a fresh inner sampler per trial (`make(seed)`, e.g. a TPESampler), seeded
    from the trial's number: workers sharing a study draw different points, and one worker
    replays the same sweep from the same seed.
    """

    def __init__(self, seed: int, make: Callable[[int], BaseSampler]) -> None:
        self._seed, self._make = seed, make
        self._current: tuple[int, BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._make(trial_seed(self._seed, trial.number)))
        return self._current[1]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return dict(self._for(trial).infer_relative_search_space(study, trial))

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return dict(self._for(trial).sample_relative(study, trial, search_space))

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        # TPE keeps nothing here (no constraints): nothing to delegate.
        pass

    def reseed_rng(self) -> None:  # each trial carries its own seed
        pass


class GridWalk(optuna.samplers.GridSampler):
    """Optuna's grid sampler for an ask/tell loop.

    GridSampler stops the study once the grid is exhausted, through `study.stop()`, which only
    works inside `study.optimize`; the sweep counts its own trials instead.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        pass


def make_sampler(seed: int, grid: dict[str, list[Any]] | None) -> BaseSampler:
    """TPE whose draws depend only on the seed and the trial number, or a grid.

    A grid is walked by one GridSampler seeded with `seed`: its grid ids mean the same points
    to every worker (the seed shuffles the grid), and it skips points other workers are
    running.
    """
    if grid is not None:
        return GridWalk(grid, seed=seed)

    def build(seed_of_trial: int) -> BaseSampler:
        with warnings.catch_warnings():  # constant_liar is "experimental"; it is what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed_of_trial, n_startup_trials=10, multivariate=True, constant_liar=True
            )

    return TrialSeededSampler(seed, build)


def join_study(plan: WorkerPlan) -> SharedStudy:
    """This process's view of the sweep's study (created by whoever comes first)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = plan.family.grid if plan.config.grid else None
    storage = open_storage(plan.config.storage_url)
    return SharedStudy.join(storage, plan.config.study_name, make_sampler(plan.config.seed, grid))


def check_same_settings(shared: SharedStudy, config: SweepConfig, data_sha: str) -> None:
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
