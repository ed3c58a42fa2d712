"""What a sweep is asked, what its workers share, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from winequality import data as wine_data
from winequality import evaluate, intervals, model, registry, tracking
from winequality.errors import WinequalityError

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_STORAGE",
    "FinalModel",
    "SweepConfig",
    "SweepInterrupted",
    "SweepResult",
    "TrialEvent",
    "Where",
    "WorkerPlan",
]

DEFAULT_STORAGE = "optuna.journal"  # Optuna's journal file: built for many local processes
DEFAULT_EXPERIMENT = tracking.SWEEP_EXPERIMENT


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
    interval_levels: tuple[float, ...] = intervals.DEFAULT_LEVELS  # calibrated with the model

    @property
    def study_name(self) -> str:
        return self.study or f"{self.family}-{self.protocol}"

    @property
    def storage_url(self) -> str:
        return self.storage or DEFAULT_STORAGE


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
class Where:
    """Where a worker logs: learnt by the first process, sent to the others."""

    experiment_id: str
    parent_run_id: str
