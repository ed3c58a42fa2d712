"""One tracked training run: the seed's flow, end to end, with its mistakes fixed.

`train(TrainConfig(...)) -> TrainResult` checks the data before anything is written, splits it
as the seed does, logs tags, autologged params, test metrics, datasets, the raw data file and a
skops-format model whose signature and input example come from the feature schema, then proves
the logged model loads through `mlflow.pyfunc` and serves its own example. A failure after the
run starts marks the run FAILED and deletes any model it logged. Prints nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import data as wine_data
from winequality import schema, tracking
from winequality.evaluate import regression_metrics
from winequality.model import elasticnet, untrusted_types

DEFAULT_EXPERIMENT = "experiment_signature"
DEFAULT_TAGS: Mapping[str, str] = {
    "engineering": "ML platform",
    "release.candidate": "RC1",
    "release.version": "2.0",
}
MODEL_NAME = "model"  # the seed's artifact name: runs:/<run_id>/model


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run depends on; the defaults are the seed's."""

    data: str | None = None  # path or URL; None: $WINEQUALITY_DATA, else the UCI archive
    wine: wine_data.Wine = "red"  # which UCI file to fetch when no data is given
    alpha: float = 0.7
    l1_ratio: float = 0.7
    scale: bool = False  # the seed fits raw features; True standardises inside the pipeline
    test_size: float = 0.25
    seed: int = 40  # the seed's np.random.seed(40): same split as the tutorial
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    tags: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))
    output_dir: Path | None = Path("data")  # copy of the data and the split; None: skip
    run_name: str | None = None


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
    run_model_uri: str  # runs:/<run_id>/model, the seed's way to name it
    artifact_uri: str
    data_path: Path
    rows: int
    duplicate_rows: int
    train_rows: int
    test_rows: int
    written: tuple[Path, ...]
    coefficients: dict[str, float]
    intercept: float


class ModelCheckError(RuntimeError):
    """The logged model did not load or did not reproduce its own predictions."""


def pip_requirements() -> list[str]:
    """Pinned by hand: MLflow's requirement inference starts a subprocess and takes seconds."""
    return [
        f"{name}=={version(name)}"
        for name in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
    ]


def train(config: TrainConfig) -> TrainResult:
    """Run the seed's flow once; raise SchemaError/DataError/TrackingError for bad input."""
    if not 0.0 < config.test_size < 1.0:
        raise ValueError(f"test_size must be within (0, 1), got {config.test_size}")
    estimator = elasticnet(config.alpha, config.l1_ratio, scale=config.scale)
    # Check everything that can be wrong with the input before writing or logging anything.
    wine = wine_data.load(config.data, config.wine)
    train_frame, test_frame = wine_data.split(wine.frame, config.test_size, config.seed)
    uri = tracking.connect(config.tracking_uri)

    import mlflow
    import mlflow.sklearn

    experiment = mlflow.set_experiment(config.experiment)
    written = _write_outputs(config.output_dir, wine, train_frame, test_frame)

    features = list(schema.FEATURE_NAMES)
    train_x, test_x = train_frame[features], test_frame[features]
    train_y, test_y = train_frame[schema.TARGET.name], test_frame[schema.TARGET.name]
    example = schema.input_example(train_x)

    with mlflow.start_run(run_name=config.run_name) as run:  # exits FAILED on any exception
        mlflow.set_tags({**config.tags, **provenance_tags()})
        log_datasets(wine, train_frame, test_frame)
        with _sklearn_autolog(mlflow):
            estimator.fit(train_x, train_y)
        predictions = estimator.predict(test_x)
        metrics = regression_metrics(test_y.to_numpy(), predictions)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(wine.path))
        model_info = log_wine_model(estimator, example)
        artifact_uri = mlflow.get_artifact_uri()

    linear = estimator[-1]
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
        run_model_uri=f"runs:/{run.info.run_id}/{MODEL_NAME}",
        artifact_uri=artifact_uri,
        data_path=wine.path,
        rows=len(wine.frame),
        duplicate_rows=wine.duplicate_rows,
        train_rows=len(train_frame),
        test_rows=len(test_frame),
        written=written,
        coefficients=dict(
            zip(features, np.asarray(linear.coef_, dtype=float).tolist(), strict=True)
        ),
        intercept=float(np.ravel(linear.intercept_)[0]),
    )


def log_wine_model(estimator: Any, example: pd.DataFrame, name: str = MODEL_NAME) -> Any:
    """Log a fitted pipeline under the active run, the way every winequality model is logged.

    Signature and input example come from the schema, the format is skops, requirements are
    pinned, and the logged model is reloaded and checked; on any failure it is deleted, so no
    half-logged model remains. Returns MLflow's ModelInfo.
    """
    import mlflow
    import mlflow.sklearn

    logged_model_id: str | None = None
    try:
        # MLflow validates the serving example while logging but only warns on failure;
        # verify_logged_model below is the gate that fails the run.
        with allow_model_deserialization():
            model_info = mlflow.sklearn.log_model(
                estimator,
                name=name,
                signature=schema.model_signature(),
                input_example=example,
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                pip_requirements=pip_requirements(),
                skops_trusted_types=untrusted_types(estimator) or None,
            )
        logged_model_id = model_info.model_id
        verify_logged_model(model_info.model_uri, example, estimator.predict(example))
    except BaseException:
        if logged_model_id is not None:
            with contextlib.suppress(Exception):
                mlflow.MlflowClient().delete_logged_model(logged_model_id)
        raise
    return model_info


def verify_logged_model(model_uri: str, example: pd.DataFrame, expected: np.ndarray) -> None:
    """Load the logged model back as MLflow would serve it, and score its stored example.

    Two checks: `mlflow.pyfunc` predicts the example frame exactly as the in-memory estimator
    does, and the stored serving example (serving_input_example.json), parsed by MLflow's
    scoring-server parser against the signature, scores the same.
    """
    import mlflow
    from mlflow.models import Model
    from mlflow.pyfunc.scoring_server import _parse_json_data

    local = mlflow.artifacts.download_artifacts(model_uri)
    try:
        with allow_model_deserialization():
            model = mlflow.pyfunc.load_model(local)
        direct = np.asarray(model.predict(example), dtype=float).ravel()
        meta = Model.load(local)
        serving_input = meta.get_serving_input(local)
        if serving_input is None:
            raise ModelCheckError(f"{model_uri} holds no serving input example")
        parsed = _parse_json_data(serving_input, meta, meta.get_input_schema())
        served = np.asarray(model.predict(parsed.data), dtype=float).ravel()
    except ModelCheckError:
        raise
    except Exception as exc:
        raise ModelCheckError(
            f"the logged model {model_uri} failed to load or to score its input example: {exc}"
        ) from exc
    for what, got in (("pyfunc", direct), ("serving input", served)):
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-12):
            raise ModelCheckError(
                f"the logged model {model_uri} scores its input example "
                f"differently through {what}: {got} != {expected}"
            )


@contextlib.contextmanager
def allow_model_deserialization() -> Iterator[None]:
    """MLflow refuses to load sklearn models (skops included) unless this is set.

    We only load models this package just wrote, or ones the user named explicitly.
    """
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    previous = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


@contextlib.contextmanager
def _sklearn_autolog(mlflow: Any) -> Iterator[None]:
    """The seed's autolog (params and training metrics), scoped to one fit.

    Models, signatures, input examples and datasets are logged by us, once, and post-training
    metrics are off so that our test metrics are not logged twice under other names.
    """
    mlflow.sklearn.autolog(
        log_input_examples=False,
        log_model_signatures=False,
        log_models=False,
        log_datasets=False,
        log_post_training_metrics=False,
        silent=True,
    )
    try:
        yield
    finally:
        mlflow.sklearn.autolog(disable=True, silent=True)


def log_datasets(
    wine: wine_data.WineData, train_frame: pd.DataFrame, test_frame: pd.DataFrame
) -> None:
    """Train and test frames as MLflow datasets of the active run (contexts training/testing)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    stem = Path(wine.source).stem if "://" not in wine.source else wine.path.stem
    for frame, context in ((train_frame, "training"), (test_frame, "testing")):
        with warnings.catch_warnings():
            # MLflow hints that an int column cannot hold NaN (quality is an int on purpose)
            # and that a local path matches its local-source class twice; neither is actionable.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(
                frame, source=wine.source, targets=schema.TARGET.name, name=f"{stem}-{context}"
            )
            mlflow.log_input(dataset, context=context)  # the schema is inferred here, lazily


def _write_outputs(
    folder: Path | None,
    wine: wine_data.WineData,
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
) -> tuple[Path, ...]:
    """The seed's copies: the data as read, then the split (with the original row index)."""
    if folder is None:
        return ()
    targets = (folder / wine.path.name, folder / "train.csv", folder / "test.csv")
    wine_data.write_csv_atomic(wine.frame, targets[0])
    wine_data.write_csv_atomic(train_frame, targets[1], index=True)
    wine_data.write_csv_atomic(test_frame, targets[2], index=True)
    return targets


def provenance_tags() -> dict[str, str]:
    tags = {"winequality.version": version("winequality")}
    commit = _git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["winequality.git_commit"] = commit
    return tags


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
