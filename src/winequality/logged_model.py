"""A wine model's life in MLflow: how it is logged, checked, and loaded back safely.

Every model `train` and `sweep` log goes through `log_model`: the schema's signature and a real
input example, MLflow's skops format with pinned requirements, then a proof that it loads and
serves its own example (else it is deleted, so no half-logged model remains).

`load` resolves any model URI into an in-memory `LoadedModel`, checking that it is a skops
scikit-learn model whose signature is the wine schema, and deserialising it with *our*
allow-list of types, never the list stored inside the model file (which whoever wrote the file
controls). Downloads go to a temporary folder that is removed before `load` returns.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from winequality import schema, tracking
from winequality.drift import PROFILE_FILE, Profile
from winequality.errors import ModelCheckError, ModelLoadError, first_line
from winequality.intervals import (
    INTERVALS_FILE,
    Intervals,
    coverage,
    coverage_by_grade,
    level_label,
)

if TYPE_CHECKING:
    from winequality.data import WineData

__all__ = [
    "COVERAGE_TABLE",
    "HELD_OUT_ARTIFACT",
    "MODEL_NAME",
    "PICKLE_SWITCH",
    "TRUSTED_TYPES",
    "LoadedModel",
    "download",
    "load",
    "load_local",
    "loadable_source",
    "log_datasets",
    "log_interval_checks",
    "log_model",
    "parse_serving_input",
    "pip_requirements",
    "provenance_tags",
    "read_held_out",
    "skops_trusted_types",
    "verify",
]

MODEL_NAME = "model"  # the tutorial's artifact name: runs:/<run_id>/model
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
# Types our families hold that skops does not trust by default. Loading checks a model against
# this list, never against the list stored inside the model file.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",  # random forest, extra trees
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn._loss._loss.CyHalfSquaredError",  # boosting's loss (untrusted by skops < 1.9)
    }
)


@dataclass(frozen=True)
class LoadedModel:
    """A wine model read into memory: the estimator and what its MLmodel file says."""

    uri: str
    estimator: Any
    run_id: str | None
    model_id: str | None
    signature: dict[str, Any]
    input_example: pd.DataFrame | None
    profile: Profile | None = None  # the training data's reference profile, if logged
    intervals: Intervals | None = None  # calibrated prediction intervals, if logged


def skops_trusted_types(estimator: Any) -> list[str]:
    """Every type the estimator's skops file holds: the list MLflow stores and loads with.

    Not only the ones skops refuses by default under *this* scikit-learn: another version may
    trust less (1.8 does not trust the boosting loss object), and a model must load there too.
    Raises ModelCheckError if the estimator holds a type skops refuses and our allow-list
    does not name.
    """
    import skops.io

    content = skops.io.dumps(estimator)
    refused = sorted(skops.io.get_untrusted_types(data=content))
    unknown = [t for t in refused if t not in TRUSTED_TYPES]
    if unknown:
        raise ModelCheckError(f"the estimator holds types winequality does not trust: {unknown}")
    return sorted(_types_in(content))


def _types_in(content: bytes) -> set[str]:
    """The `module.Class` of every object in a skops file (its schema.json names each)."""
    import io
    import json
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        tree = json.loads(bundle.read("schema.json"))
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def pip_requirements() -> list[str]:
    """Pinned by hand: MLflow's requirement inference starts a subprocess and takes seconds."""
    return [
        f"{name}=={version(name)}"
        for name in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
    ]


def provenance_tags() -> dict[str, str]:
    """The package version, and the git commit when running from a checkout."""
    tags = {"winequality.version": version("winequality")}
    commit = _git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["winequality.git_commit"] = commit
    return tags


def _git_commit(folder: Path) -> str | None:
    if not any((parent / ".git").exists() for parent in (folder, *folder.parents)):
        return None  # an installed package: no need to start git
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


HELD_OUT_ARTIFACT = "held_out/test.csv"  # the rows the run's test metrics come from


def log_datasets(wine: WineData, train_frame: pd.DataFrame, test_frame: pd.DataFrame) -> None:
    """Train and held-out rows as the active run's dataset inputs (contexts train and test).

    The training rows are named by the data's source. The held-out rows are logged as an
    artifact of the run and their dataset names where that artifact landed, in a form MLflow's
    dataset sources can load, so that coverage or `mlflow.models.evaluate` can be rerun from the
    run alone (`read_held_out`) without rebuilding the split.
    """
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    folder, file_name = HELD_OUT_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="winequality-held-out-") as scratch:
        path = Path(scratch) / file_name
        # pandas writes each float's shortest exact form: read back, the rows are the same bits
        test_frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=folder)
    held_out_source = loadable_source(
        mlflow.get_artifact_uri(HELD_OUT_ARTIFACT), mlflow.get_tracking_uri()
    )
    stem = Path(wine.name).stem
    frames = {
        "train": (train_frame, wine.source),
        "test": (test_frame, held_out_source or wine.source),
    }
    for context, (frame, source) in frames.items():
        with warnings.catch_warnings():
            # MLflow hints that an int column cannot hold NaN (quality is an int on purpose)
            # and that a local path matches its local-source class twice; neither is actionable.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(
                frame, source=source, targets=schema.TARGET.name, name=f"{stem}-{context}"
            )
            mlflow.log_input(dataset, context=context)


def loadable_source(artifact_uri: str, tracking_uri: str) -> str | None:
    """Where a logged artifact can be loaded from by MLflow's dataset sources, or None.

    A local store's artifact URI is a file path they load. They do not resolve `runs:/` or a
    tracking server's `mlflow-artifacts:/`; the latter is the server's artifact proxy, which
    answers plain HTTP, so its URL is what they can load (without credentials: a user and
    password in the tracking URI are left out, as the source is stored in the run for all its
    readers to see).
    """
    from urllib.parse import urlparse

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    candidate = artifact_uri
    if urlparse(artifact_uri).scheme == "mlflow-artifacts":
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        try:
            candidate = MlflowArtifactsRepository.resolve_uri(  # type: ignore[no-untyped-call]
                artifact_uri, tracking_uri
            )
            parsed = urlparse(candidate)
            if parsed.username or parsed.password:
                candidate = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
        except MlflowException:
            return None
    try:
        with warnings.catch_warnings():
            # a local path matches MLflow's local-source class twice: not actionable
            warnings.simplefilter("ignore", UserWarning)
            resolve_dataset_source(candidate)
    except MlflowException:
        return None
    return candidate


def read_held_out(run_id: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The held-out rows a run's test metrics were computed on, from the run alone.

    Fetched with `MlflowClient.download_artifacts`, which reaches every store (a tracking
    server's proxy included, with its credentials). A run logged before the held-out rows
    travelled with it is a ModelLoadError naming what is missing.
    """
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    folder = HELD_OUT_ARTIFACT.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory(prefix="winequality-held-out-") as scratch:
        try:
            listed = {entry.path for entry in client.list_artifacts(run_id, folder)}
            if HELD_OUT_ARTIFACT not in listed:
                raise ModelLoadError(
                    f"run {run_id} has no held-out rows ({HELD_OUT_ARTIFACT}): it was logged "
                    "before they travelled with the run, or by something else than winequality"
                )
            path = client.download_artifacts(run_id, HELD_OUT_ARTIFACT, scratch)
        except (MlflowException, OSError) as error:  # an unknown run, the store away, access
            raise ModelLoadError(
                f"cannot fetch the held-out rows of run {run_id}: {first_line(error)}"
            ) from error
        return pd.read_csv(path)


COVERAGE_TABLE = "interval_coverage_by_grade.json"


def log_interval_checks(
    calibrated: Intervals, actual: np.ndarray, predicted: np.ndarray
) -> dict[str, float]:
    """Held-out coverage and mean width per level (metrics), the levels (a param) and
    coverage by grade (a table artifact) for the active run; the metrics, returned."""
    import mlflow

    metrics: dict[str, float] = {}
    for level in calibrated.levels:
        lower, upper = calibrated.bounds(predicted, level)
        label = level_label(level)
        metrics[f"test_coverage_{label}"] = coverage(actual, lower, upper)
        metrics[f"test_interval_width_{label}"] = float(np.mean(upper - lower))
    mlflow.log_metrics(metrics)
    mlflow.log_params({"interval_levels": ",".join(level_label(v) for v in calibrated.levels)})
    table = coverage_by_grade(actual, predicted, calibrated)
    mlflow.log_table(pd.DataFrame(table), artifact_file=COVERAGE_TABLE)
    return metrics


def log_model(
    estimator: Any,
    example: pd.DataFrame,
    profile: Profile | None,
    name: str = MODEL_NAME,
    intervals: Intervals | None = None,
) -> Any:
    """Log a fitted pipeline under the active run, the way every winequality model is logged.

    Signature and input example come from the schema, the format is skops, requirements are
    pinned, and the logged model is reloaded and checked; on any failure it is deleted, so no
    half-logged model remains. Returns MLflow's ModelInfo.
    """
    import mlflow
    import mlflow.sklearn
    import orjson

    trusted = skops_trusted_types(estimator)
    logged_model_id: str | None = None
    try:
        # MLflow validates the serving example while logging but only warns on failure;
        # verify below is the gate that fails the run.
        model_info = mlflow.sklearn.log_model(
            estimator,
            name=name,
            signature=schema.model_signature(),
            input_example=example,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            pip_requirements=pip_requirements(),
            skops_trusted_types=trusted or None,
        )
        logged_model_id = model_info.model_id
        # inside the model's folder: they travel with the model
        travelling = {PROFILE_FILE: profile, INTERVALS_FILE: intervals}
        for file_name, content in travelling.items():
            if content is None:
                continue
            with tempfile.TemporaryDirectory(prefix="winequality-model-") as folder:
                path = Path(folder) / file_name
                path.write_bytes(orjson.dumps(content.to_dict()))
                mlflow.MlflowClient().log_model_artifact(logged_model_id, str(path))
        verify(model_info.model_uri, example, estimator.predict(example))
    except BaseException:
        if logged_model_id is not None:
            with contextlib.suppress(Exception):
                mlflow.MlflowClient().delete_logged_model(logged_model_id)
        raise
    return model_info


def verify(model_uri: str, example: pd.DataFrame, expected: np.ndarray) -> None:
    """Load the logged model back as MLflow would serve it, and score its stored example.

    Two checks: the loaded model predicts the example frame exactly as the in-memory estimator
    does, and the stored serving example (serving_input_example.json), parsed by MLflow's
    scoring-server parser against the signature, scores the same. The model is loaded through
    `mlflow.pyfunc`, as users load it, unless the user forbade MLflow to deserialise models
    (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false); then through our own safe loader.
    """
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="winequality-verify-") as folder:
        try:
            local = mlflow.artifacts.download_artifacts(model_uri, dst_path=folder)
            meta = Model.load(local)
            if os.environ.get(PICKLE_SWITCH, "").strip().lower() == "false":
                predict = load_local(Path(local), model_uri).estimator.predict
            else:
                # suppress_warnings: no requirements check; they were pinned from this very
                # environment a moment ago (the check scans every installed package).
                predict = mlflow.pyfunc.load_model(local, suppress_warnings=True).predict
            direct = np.asarray(predict(example), dtype=float).ravel()
            serving_input = meta.get_serving_input(local)
            if serving_input is None:
                raise ModelCheckError(f"{model_uri} holds no serving input example")
            served = np.asarray(predict(parse_serving_input(serving_input, meta)), dtype=float)
            served = served.ravel()
        except ModelCheckError:
            raise
        except Exception as exc:
            raise ModelCheckError(
                f"the logged model {model_uri} failed to load or to score its input example: {exc}"
            ) from exc
    for what, got in (("the loaded model", direct), ("its serving input", served)):
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-12):
            raise ModelCheckError(
                f"the logged model {model_uri} scores its input example "
                f"differently through {what}: {got} != {expected}"
            )


def parse_serving_input(serving_input: str, meta: Any) -> Any:
    """A serving input example parsed exactly as `mlflow models serve` parses a request body.

    The one use of MLflow's private API here: its scoring server's own parser
    (`mlflow.pyfunc.scoring_server._parse_json_data`) has no public equivalent that parses a
    body against a model's signature without starting a server. `tests/test_logged_model.py`
    pins what this relies on.
    """
    from mlflow.pyfunc.scoring_server import _parse_json_data

    schema_ = meta.get_input_schema()
    return _parse_json_data(serving_input, meta, schema_).data  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load(model_uri: str, store: str | None = None) -> LoadedModel:
    """Resolve `runs:/…`, `models:/name@alias`, `models:/name/N`, `models:/m-…` or a folder.

    Registry and run URIs are resolved in the store `store` (a tracking URI, see
    `tracking.connect`), which is named when the model is not found there.
    """
    local = Path(model_uri).expanduser()
    if local.is_dir():
        return load_local(local, model_uri)
    with tempfile.TemporaryDirectory(prefix="winequality-model-") as folder:
        return load_local(download(model_uri, store, Path(folder)), model_uri)


def download(model_uri: str, store: str | None, into: Path) -> Path:
    """Download a model's folder under `into`; the folder holding its MLmodel file."""
    import mlflow

    try:
        # MLflow resolves `models:/` through the process-wide URI, not an argument
        with tracking.activated(store) if store else contextlib.nullcontext():
            path = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into))
            )
    except Exception as exc:
        why, where = first_line(exc), ""
        if store is not None:
            with contextlib.suppress(Exception):  # the store itself failing: MLflow's words
                why = tracking.missing_model(model_uri, store) or why
            where = (
                f" (searched {tracking.describe(store)}; point at another store with "
                f"--tracking-uri or MLFLOW_TRACKING_URI)"
            )
        raise ModelLoadError(f"cannot load model {model_uri}: {why}{where}") from exc
    if not (path / "MLmodel").is_file():
        # a version registered from `runs:/<id>/model` (the tutorial's URI): MLflow 3 fetches
        # the logged model it names into a folder of that name below the destination
        found = [p.parent for p in path.glob("*/MLmodel")]
        if len(found) == 1:
            return found[0]
    return path


def load_local(local: Path, model_uri: str) -> LoadedModel:
    """Read a model folder into memory, with every check `load` promises."""
    from mlflow.models import Model

    try:
        meta = Model.load(str(local))
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {model_uri}: {first_line(exc)}") from exc
    flavor = meta.flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(
            f"{model_uri} is not a scikit-learn model (flavors: {', '.join(meta.flavors)})"
        )
    if flavor.get("serialization_format") != "skops":
        raise ModelLoadError(
            f"{model_uri} is stored as {flavor.get('serialization_format')!r}; "
            "winequality only loads the safe 'skops' format "
            "(retrain it with `winequality train`)"
        )
    _check_signature(model_uri, meta.signature)
    estimator = _load_skops(local / flavor["pickled_model"], model_uri)
    example = meta.load_input_example(str(local))
    try:
        profile = Profile.read(local)
    except Exception as exc:
        raise ModelLoadError(f"{model_uri}: unreadable {PROFILE_FILE}: {first_line(exc)}") from exc
    intervals = Intervals.read(local)
    return LoadedModel(
        uri=model_uri,
        estimator=estimator,
        run_id=meta.run_id,
        model_id=getattr(meta, "model_id", None),
        signature=meta.signature.to_dict() if meta.signature else {},
        input_example=pd.DataFrame(example) if example is not None else None,
        profile=profile,
        intervals=intervals,
    )


def _check_signature(model_uri: str, signature: Any) -> None:
    if signature is None:
        raise ModelLoadError(
            f"{model_uri} has no signature; winequality serves only models "
            "whose inputs are the wine feature schema"
        )
    names = signature.inputs.input_names()
    types = {spec["type"] for spec in signature.inputs.to_dict()}
    if list(names) != list(schema.FEATURE_NAMES) or types != {"double"}:
        raise ModelLoadError(
            f"{model_uri} has a signature that is not the wine feature schema (inputs {names})"
        )


def _load_skops(path: Path, model_uri: str) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    unknown = sorted(set(untrusted) - TRUSTED_TYPES)  # our list, not the one in the file
    if unknown:
        raise ModelLoadError(
            f"{model_uri} contains types winequality does not trust: {', '.join(unknown)}"
        )
    return skops.io.load(path, trusted=untrusted)
