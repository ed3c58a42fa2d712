"""One tracked training run: the tutorial's flow, end to end, with its mistakes fixed.

`train(TrainConfig(...)) -> TrainResult` checks the data before anything is written, splits it
as the tutorial does, logs its tags, the estimator's parameters and training metrics under the
names the tutorial's sklearn autolog gave them, test metrics, datasets, the raw data file and a
skops-format model whose signature and input example come from the feature schema, then proves
the logged model loads and serves its own example. A failure after the run starts marks the run
FAILED and deletes any model it logged. Prints nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import data as wine_data
from winequality import evaluate, intervals, logged_model, registry, schema, tracking
from winequality.drift import Profile
from winequality.errors import ParameterError
from winequality.intervals import Intervals
from winequality.io import files
from winequality.model import elasticnet
from winequality.schema import FeatureIssue

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_TAGS",
    "SPLIT_INDEX",
    "ExperimentInfo",
    "TrainConfig",
    "TrainResult",
    "autolog_metrics",
    "autolog_params",
    "autolog_tags",
    "train",
]

DEFAULT_EXPERIMENT = tracking.TRAIN_EXPERIMENT
SPLIT_INDEX = "row"  # train.csv and test.csv: the row's number in the data file
DEFAULT_TAGS: Mapping[str, str] = {
    "engineering": "ML platform",
    "release.candidate": "RC1",
    "release.version": "2.0",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run depends on; the defaults are the tutorial's."""

    data: str | None = None  # path, URL or "uci"; None: the shipped copy
    wine: wine_data.Wine = "red"  # which UCI file when no data is given (or with "uci")
    alpha: float = 0.7
    l1_ratio: float = 0.7
    scale: bool = False  # the tutorial fits raw features; True standardises inside the pipeline
    test_size: float = 0.25
    seed: int = 40  # the tutorial's np.random.seed(40): the same split
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    tags: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))
    output_dir: Path | None = Path("data")  # copy of the data and the split; None: skip
    run_name: str | None = None
    interval_levels: tuple[float, ...] = intervals.DEFAULT_LEVELS  # calibrated with the model


@dataclass(frozen=True)
class ExperimentInfo:
    name: str
    experiment_id: str
    artifact_location: str
    tags: dict[str, str]
    lifecycle_stage: str
    creation_time: int | None


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_name: str
    tracking_uri: str
    experiment: ExperimentInfo
    metrics: dict[str, float]
    model_uri: str  # models:/m-<id>, the logged model
    run_model_uri: str  # runs:/<run_id>/model, the tutorial's way to name it
    artifact_uri: str
    data: str  # where the rows came from, for messages
    rows: int
    duplicate_rows: int
    train_rows: int
    test_rows: int
    test_twins: int  # test rows with an exact twin among the training rows
    unseen_metrics: dict[str, float]  # the test metrics on the other test rows only
    written: tuple[Path, ...]
    coefficients: dict[str, float]
    intercept: float
    warnings: tuple[FeatureIssue, ...] = ()  # ignored columns of the training file
    intervals: Intervals | None = None  # the logged model's calibrated intervals
    interval_metrics: dict[str, float] = field(default_factory=dict)  # held-out coverage, width

    @property
    def constant(self) -> bool:
        """Every coefficient zero: the penalty won and the model predicts its intercept."""
        return not any(self.coefficients.values())


def train(config: TrainConfig) -> TrainResult:
    """Run the tutorial's flow once; raise SchemaError/DataError/TrackingError for bad input."""
    if not 0.0 < config.test_size < 1.0:
        raise ParameterError(f"test_size must be within (0, 1), got {config.test_size}")
    estimator = elasticnet(config.alpha, config.l1_ratio, scale=config.scale)
    # Check everything that can be wrong with the input before writing or logging anything.
    wine = wine_data.load(config.data, config.wine)
    wine_data.require_rows(wine, config.test_size)
    train_frame, test_frame = wine_data.split(wine.frame, config.test_size, config.seed)
    levels = intervals.parse_levels(config.interval_levels, len(train_frame))
    uri = tracking.connect(config.tracking_uri)

    import mlflow

    experiment = tracking.use_experiment(tracking.client(uri), config.experiment)
    written = _write_outputs(config.output_dir, wine, train_frame, test_frame)

    features = list(schema.FEATURE_NAMES)
    train_x, test_x = train_frame[features], test_frame[features]
    train_y, test_y = train_frame[schema.TARGET.name], test_frame[schema.TARGET.name]
    example = schema.input_example(train_x)

    with (
        tracking.activated(uri),
        mlflow.start_run(  # ends FAILED on any exception
            # inside `mlflow run`, the run it started (named here, so MLflow leaves its
            # variable in place); else a new run
            run_id=tracking.project_run_id(),
            experiment_id=None if tracking.project_run_id() else experiment.experiment_id,
            run_name=config.run_name,
        ) as run,
    ):
        estimator.fit(train_x, train_y)
        final = estimator[-1]
        mlflow.set_tags(
            {
                **config.tags,
                **logged_model.provenance_tags(),
                **autolog_tags(final),
                # the tutorial's shuffled split: what `register` records on a version
                **registry.evaluation_tags(wine.sha256, "random", config.seed, config.test_size),
            }
        )
        mlflow.log_params({**autolog_params(final), "scale": config.scale})
        logged_model.log_datasets(wine, train_frame, test_frame)
        predicted = estimator.predict(test_x)
        metrics = evaluate.regression_metrics(test_y.to_numpy(), predicted)
        # The tutorial's random split puts twins of some test wines in training; the same
        # metrics on the unseen rows say what a new wine would get.
        twins = evaluate.twins_in(train_frame, test_frame)
        unseen = evaluate.regression_metrics(test_y.to_numpy()[~twins], predicted[~twins])
        mlflow.log_metrics(
            {
                **autolog_metrics(estimator, train_x, train_y),
                **metrics,
                **{f"unseen_{k}": v for k, v in unseen.items()},
                "test_twins": float(twins.sum()),
            }
        )
        _log_data_file(wine)
        calibrated = intervals.calibrate(
            lambda: elasticnet(config.alpha, config.l1_ratio, scale=config.scale),
            train_x,
            train_y,
            levels,
            seed=config.seed + intervals.CALIBRATION_SEED_OFFSET,
        )
        interval_metrics = logged_model.log_interval_checks(
            calibrated, test_y.to_numpy(), predicted
        )
        profile = Profile.from_features(train_x.to_numpy(dtype=np.float64))
        model_info = logged_model.log_model(estimator, example, profile, intervals=calibrated)
        artifact_uri = mlflow.get_artifact_uri()

    return TrainResult(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        tracking_uri=uri,
        experiment=ExperimentInfo(
            name=experiment.name,
            experiment_id=experiment.experiment_id,
            artifact_location=experiment.artifact_location,
            tags=dict(experiment.tags),
            lifecycle_stage=experiment.lifecycle_stage,
            creation_time=experiment.creation_time,
        ),
        metrics=metrics,
        model_uri=model_info.model_uri,
        run_model_uri=f"runs:/{run.info.run_id}/{logged_model.MODEL_NAME}",
        artifact_uri=artifact_uri,
        data=wine.description,
        rows=len(wine.frame),
        duplicate_rows=wine.duplicate_rows,
        train_rows=len(train_frame),
        test_rows=len(test_frame),
        test_twins=int(twins.sum()),
        unseen_metrics=unseen,
        written=written,
        coefficients=dict(
            zip(features, np.asarray(final.coef_, dtype=float).tolist(), strict=True)
        ),
        intercept=float(np.ravel(final.intercept_)[0]),
        warnings=wine.warnings,
        intervals=calibrated,
        interval_metrics=interval_metrics,
    )


# The tutorial turned on sklearn autolog around a bare ElasticNet, so its runs carry the
# estimator's parameters under their plain names, `training_*` metrics and two estimator tags,
# and MLflow's tutorials compare runs by them (`params.alpha = '0.7'`). Autolog patches every
# estimator class at start (about a second per process); logging the same keys directly is
# exact and costs nothing. tests/test_train.py checks them against a real autolog run.


def autolog_params(estimator: Any) -> dict[str, str]:
    """The estimator's parameters as autolog names and writes them."""
    return {name: str(value) for name, value in estimator.get_params(deep=True).items()}


def autolog_tags(estimator: Any) -> dict[str, str]:
    cls = type(estimator)
    return {"estimator_name": cls.__name__, "estimator_class": f"{cls.__module__}.{cls.__name__}"}


def autolog_metrics(estimator: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """autolog's training metrics for a regressor: scored on the training rows."""
    predicted = estimator.predict(x)
    error = np.asarray(y, dtype=float) - predicted
    mse = float(np.mean(error**2))
    r2 = float(estimator.score(x, y))
    return {
        "training_mean_squared_error": mse,
        "training_mean_absolute_error": float(np.mean(np.abs(error))),
        "training_r2_score": r2,
        "training_root_mean_squared_error": float(np.sqrt(mse)),
        "training_score": r2,
    }


def _log_data_file(wine: wine_data.WineData) -> None:
    """The raw data file as an artifact, as the tutorial logs it (uncompressed, by its name)."""
    import mlflow

    if wine.path.name == wine.name:
        mlflow.log_artifact(str(wine.path))
        return
    with tempfile.TemporaryDirectory(prefix="winequality-data-") as folder:
        copy = Path(folder) / wine.name
        copy.write_bytes(files.read_bytes(wine.path))
        mlflow.log_artifact(str(copy))


def _write_outputs(
    folder: Path | None,
    wine: wine_data.WineData,
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
) -> tuple[Path, ...]:
    """The tutorial's copies: the data as read, then the split (with the original row index)."""
    if folder is None:
        return ()
    targets = (folder / wine.name, folder / "train.csv", folder / "test.csv")
    wine_data.write_csv_atomic(wine.frame, targets[0])
    # the tutorial writes the original row numbers; named, so that readers see a column name
    wine_data.write_csv_atomic(train_frame.rename_axis(SPLIT_INDEX), targets[1], index=True)
    wine_data.write_csv_atomic(test_frame.rename_axis(SPLIT_INDEX), targets[2], index=True)
    return targets
