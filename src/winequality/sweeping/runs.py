"""The sweep's record in MLflow: one parent run per study, one child run per finished trial,
and the clean-up of runs whose trial never finished."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from winequality import logged_model, tracking
from winequality.tracking import ROLE_TAG, STUDY_TAG, SWEEP_PARENT_TAG, TRIAL_TAG

if TYPE_CHECKING:
    from winequality.sweeping.config import SweepConfig
    from winequality.sweeping.studies import SharedStudy

__all__ = [
    "delete_orphans",
    "ensure_parent_run",
    "link_project_run",
    "run_url",
    "should_finalize",
    "trial_runs",
]


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


def link_project_run(client: Any, study: str, parent: str) -> None:
    """Inside `mlflow run`, the run MLflow started records which sweep it ran.

    The sweep's own runs (one parent per study, shared by every worker and resume) are its
    own: the final run is created by id (`final.log_final_run`), never by adopting the run
    MLFLOW_RUN_ID names.
    """
    project_run = tracking.project_run_id()
    if not project_run:
        return
    client.set_tag(project_run, STUDY_TAG, study)
    client.set_tag(project_run, SWEEP_PARENT_TAG, parent)


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


def should_finalize(shared: SharedStudy, mine: set[int]) -> bool:
    """Exactly one worker finalizes: the one that finished the study's last trial."""
    if shared.trials("RUNNING"):
        return False
    if not mine:
        return True  # a rerun of a study whose best was never registered
    complete = shared.trials("COMPLETE")
    last = max(complete, key=lambda t: (t.datetime_complete, t.number))
    return last.number in mine


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None
