"""The sweep's final step: refit the best trial, test it once on the held-out rows, log it as
`train` logs a model, register it and let the champion gate decide its alias."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from winequality import data as wine_data
from winequality import evaluate, intervals, logged_model, model, registry, schema, tracking
from winequality.drift import Profile
from winequality.sweeping.config import FinalModel, SweepConfig, Where, WorkerPlan
from winequality.tracking import FAMILY_TAG, PARENT_TAG, PROTOCOL_TAG, ROLE_TAG, STUDY_TAG

if TYPE_CHECKING:
    import pandas as pd

    from winequality.sweeping.studies import SharedStudy

__all__ = [
    "Holdout",
    "Refit",
    "evaluation_artifacts",
    "finalize",
    "import_final_step",
    "log_final_run",
    "refit_and_test",
    "register_and_gate",
]


def import_final_step() -> None:
    """Import what the final step uses (plots, skops, MLflow's sklearn flavour): about a
    second of imports that, done while other workers run trials, no longer delays the end."""
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401

    evaluate.warm_up_plots()


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
    y_train: np.ndarray
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
    return Refit(estimator, x_train, y_train, x_test, y_test, predicted, metrics)


def finalize(plan: WorkerPlan, shared: SharedStudy, holdout: Holdout, where: Where) -> FinalModel:
    """Refit the best trial, test it once, log it with its evaluation, register and gate."""
    config, family = plan.config, plan.family
    best = shared.study.best_trial
    refit = refit_and_test(family, dict(best.params), holdout.train, holdout.test)
    run_id, model_uri, interval_metrics = log_final_run(plan, shared, holdout, where, refit)
    decision = None
    if config.register:
        decision = register_and_gate(
            config, family, shared.name, model_uri, best, refit, holdout.wine.sha256,
            coverage=interval_metrics.get(registry.COVERAGE_TAG),
        )  # fmt: skip
    return FinalModel(run_id, model_uri, refit.test_metrics, decision)


def log_final_run(
    plan: WorkerPlan, shared: SharedStudy, holdout: Holdout, where: Where, refit: Refit
) -> tuple[str, str, dict[str, float]]:
    """The final run: params, test and CV metrics, datasets, plots, report, the model with its
    intervals (calibrated on fresh grouped folds of the training rows, never the folds the
    trial was chosen on: their residuals are optimistic); the run, the model and the held-out
    coverage and width of the intervals."""
    import tempfile

    import mlflow

    config, family = plan.config, plan.family
    best = shared.study.best_trial
    cv = best.user_attrs["cv"]
    # Created by id, then activated: `start_run` would adopt the run `mlflow run` started.
    created = tracking.client(config.tracking_uri).create_run(
        where.experiment_id,
        run_name=f"best of {shared.name} (trial {best.number})",
        tags={
            PARENT_TAG: where.parent_run_id,
            STUDY_TAG: shared.name,
            ROLE_TAG: "final",
            **logged_model.provenance_tags(),
        },
    )
    with (
        tracking.activated(tracking.resolve_uri(config.tracking_uri)),
        mlflow.start_run(run_id=created.info.run_id) as run,
    ):
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
        calibrated = intervals.calibrate(
            lambda: family.build(dict(best.params)),
            refit.x_train,
            refit.y_train,
            config.interval_levels,
            seed=config.seed + intervals.CALIBRATION_SEED_OFFSET,
        )
        interval_metrics = logged_model.log_interval_checks(
            calibrated, refit.y_test, refit.predicted
        )
        profile = Profile.from_features(refit.x_train.to_numpy(dtype=np.float64))
        info = logged_model.log_model(
            refit.estimator, schema.input_example(refit.x_train), profile, intervals=calibrated
        )
    return run.info.run_id, info.model_uri, interval_metrics


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
    data_sha256: str,
    *,
    coverage: float | None = None,
) -> registry.Decision:
    """Register the final model and let the gate decide its alias on the same held-out rows
    (and on the held-out `coverage` of its 0.9 intervals)."""
    cv = best.user_attrs["cv"]["mean"]
    version = registry.register(
        model_uri,
        config.model_name,
        tags={
            STUDY_TAG: study,
            FAMILY_TAG: family.name,
            PROTOCOL_TAG: config.protocol,
            **registry.evaluation_tags(data_sha256, "grouped", config.seed, config.test_size),
            **{f"test_{k}": f"{v:.6f}" for k, v in refit.test_metrics.items()},
            **{f"cv_{k}": f"{v:.6f}" for k, v in cv.items()},
            **({registry.COVERAGE_TAG: f"{coverage:.6f}"} if coverage is not None else {}),
        },
        tracking_uri=config.tracking_uri,
    )
    return registry.gate(
        config.model_name,
        version,
        refit.test_metrics["rmse"],
        refit.x_test.to_numpy(),
        refit.y_test,
        force=config.force,
        tracking_uri=config.tracking_uri,
        coverage=coverage,
    )
