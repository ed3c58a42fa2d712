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

Rooms: `config` (what is asked and answered), `studies` (Optuna), `runs` (MLflow bookkeeping),
`workers` (processes and their messages), `final` (refit, log, gate), `sweep` (the steps).
"""

from winequality.sweeping.config import (
    SweepConfig,
    SweepInterrupted,
    SweepResult,
    TrialEvent,
)
from winequality.sweeping.sweep import run_sweep
from winequality.sweeping.workers import StopRequest

__all__ = [
    "StopRequest",
    "SweepConfig",
    "SweepInterrupted",
    "SweepResult",
    "TrialEvent",
    "run_sweep",
]
