"""What the sweep relies on in Optuna, checked against the installed version, on both storages.

If an Optuna release changes any of it, these tests fail first and say which part.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import optuna
import pytest

from winequality.errors import TrackingError
from winequality.sweeping import studies
from winequality.sweeping.studies import SharedStudy, make_sampler


@pytest.fixture(params=["journal", "sqlite"])
def storage_url(request, tmp_path) -> str:
    if request.param == "journal":
        return str(tmp_path / "optuna.journal")
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def space(trial) -> dict:
    return {
        "x": trial.suggest_float("x", 0.0, 1.0),
        "y": trial.suggest_float("y", 1e-3, 10, log=True),
    }


def test_storages_open_by_url_and_fail_in_one_line(storage_url, tmp_path) -> None:
    storage = studies.open_storage(storage_url)
    if studies.is_rdb(storage_url):  # a database can drop away: its storage retries
        assert isinstance(storage, studies.RetryingStorage)
        assert isinstance(storage.inner, optuna.storages.RDBStorage)
    else:
        assert isinstance(storage, optuna.storages.JournalStorage)
    with pytest.raises(TrackingError, match="cannot open the Optuna storage"):
        studies.open_storage("nosuch://x")
    with pytest.raises(TrackingError, match=r"postgresql://u:\*\*\*@127"):
        studies.open_storage("postgresql://u:secret@127.0.0.1:9/x")


def _hold_lock_forever(path: str, held) -> None:
    lock = studies.FlockLock(path)
    lock.acquire()
    held.set()
    time.sleep(600)


def test_journal_lock_is_released_when_its_holder_is_killed(tmp_path) -> None:
    """Optuna's default journal lock would block every other worker for its 30-s grace
    period after a SIGKILL; the kernel lock is free the moment its holder dies."""
    journal = str(tmp_path / "optuna.journal")
    storage = studies.open_storage(journal)
    assert isinstance(storage._backend._lock, studies.FlockLock)  # type: ignore[attr-defined]  # noqa: SLF001
    context = multiprocessing.get_context("fork")
    held = context.Event()
    holder = context.Process(target=_hold_lock_forever, args=(journal, held), daemon=True)
    holder.start()
    assert held.wait(10)
    waiter = studies.FlockLock(journal)
    blocked = context.Process(target=waiter.acquire, daemon=True)  # the lock is held: waits
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()
    blocked.kill()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    start = time.monotonic()
    SharedStudy.join(studies.open_storage(journal), "after-kill", make_sampler(1, None))
    assert time.monotonic() - start < 2.0


def test_trial_ids_heartbeats_and_stale_trials(storage_url) -> None:
    shared = SharedStudy.join(studies.open_storage(storage_url), "s", make_sampler(1, None))
    alive, dead = shared.study.ask(), shared.study.ask()
    assert shared.trial_id(alive.number) != shared.trial_id(dead.number)
    shared.beat(shared.trial_id(alive.number))
    assert shared.trials("RUNNING")[0].user_attrs[studies.HEARTBEAT_ATTR] <= time.time()
    time.sleep(0.3)
    shared.beat(shared.trial_id(alive.number))
    # the dead one never beat: its start counts; the live one beat just now
    assert shared.fail_stale_trials(grace=0.2) == [dead.number]
    assert [t.number for t in shared.trials("FAIL")] == [dead.number]
    assert [t.number for t in shared.trials("RUNNING")] == [alive.number]
    shared.tell_fail(dead)  # already failed: no error
    shared.study.tell(alive, 1.0)
    assert [t.number for t in shared.trials("COMPLETE")] == [alive.number]


def test_a_heartbeat_keeps_beating_while_a_trial_runs(storage_url, monkeypatch) -> None:
    monkeypatch.setattr(studies, "HEARTBEAT_SECONDS", 0.05)
    shared = SharedStudy.join(studies.open_storage(storage_url), "s", make_sampler(1, None))
    trial = shared.study.ask()
    with shared.heartbeat(shared.trial_id(trial.number)):
        time.sleep(0.3)
        assert shared.fail_stale_trials(grace=0.2) == []
    assert studies.HEARTBEAT_ATTR in shared.trials("RUNNING")[0].user_attrs


def draws(seed: int, numbers: int, storage_url: str, name: str) -> list[dict]:
    shared = SharedStudy.join(studies.open_storage(storage_url), name, make_sampler(seed, None))
    out = []
    for _ in range(numbers):
        trial = shared.study.ask()
        params = space(trial)
        shared.study.tell(trial, params["x"] + params["y"])
        out.append(params)
    return out


def test_one_worker_with_a_seed_replays_the_same_sweep(tmp_path) -> None:
    first = draws(7, 15, str(tmp_path / "a.journal"), "a")  # past TPE's 10 startup trials
    again = draws(7, 15, str(tmp_path / "b.journal"), "b")
    other = draws(8, 15, str(tmp_path / "c.journal"), "c")
    assert first == again
    assert first != other


def test_workers_with_the_same_seed_never_draw_alike(tmp_path) -> None:
    url = str(tmp_path / "shared.journal")
    one = SharedStudy.join(studies.open_storage(url), "s", make_sampler(40, None))
    two = SharedStudy.join(studies.open_storage(url), "s", make_sampler(40, None))
    seen = []
    for _ in range(12):  # interleaved asks, as two machines would, both seeded 40
        for worker in (one, two):
            trial = worker.study.ask()
            seen.append(tuple(space(trial).values()))
    for worker in (one, two):
        for trial in worker.trials("RUNNING"):
            worker.storage.set_trial_state_values(
                worker.trial_id(trial.number), optuna.trial.TrialState.COMPLETE, [1.0]
            )
    assert len(set(seen)) == len(seen) == 24


def test_a_grid_is_walked_without_study_stop(tmp_path) -> None:
    grid = {"x": [0.0, 0.5, 1.0]}
    shared = SharedStudy.join(studies.open_storage(str(tmp_path / "g")), "g", make_sampler(1, grid))
    values = []
    for _ in range(3):
        trial = shared.study.ask()
        values.append(trial.suggest_float("x", 0.0, 1.0))
        shared.study.tell(trial, 1.0)  # the last one exhausts the grid: no study.stop() raised
    assert sorted(values) == [0.0, 0.5, 1.0]


def test_a_database_that_drops_away_is_waited_out(tmp_path, monkeypatch) -> None:
    import sqlalchemy.exc

    inner = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    storage = studies.RetryingStorage(inner, patience=10)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = storage.create_new_trial(study_id)
    real = inner.set_trial_state_values
    outage = {"left": 2}

    def flaky(*args, **kwargs):
        if outage["left"]:
            outage["left"] -= 1
            if outage["left"] == 0:  # the write lands, but the answer is lost
                real(*args, **kwargs)
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, ConnectionResetError())
        return real(*args, **kwargs)

    monkeypatch.setattr(inner, "set_trial_state_values", flaky)
    assert storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [1.0])
    assert inner.get_trial(trial_id).state == optuna.trial.TrialState.COMPLETE
    monkeypatch.setattr(
        inner, "get_all_trials", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug"))
    )
    with pytest.raises(ValueError, match="a bug"):  # not transient: raised at once
        storage.get_all_trials(study_id)
