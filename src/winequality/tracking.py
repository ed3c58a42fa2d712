"""Connecting to an MLflow tracking store, failing fast with one line when it is unusable.

MLflow itself retries an unreachable server or database for minutes; a preflight with a short
timeout turns that into an immediate, actionable error.

Every call that a client can make goes through `client(uri)`, an `MlflowClient` bound to the
store. MLflow's fluent API (`start_run`, `log_model`, `log_input`) only reads the process-wide
tracking URI: `activated(uri)` sets it for one block and puts back what was there, so no
library call leaves the process pointed somewhere else. `MLFLOW_TRACKING_URI` is MLflow's own
variable: `resolve_uri` reads it, and nothing else here does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winequality.errors import TrackingError, first_line
from winequality.extras import require

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_TRACKING_URI",
    "FAMILY_TAG",
    "PARENT_TAG",
    "PROJECT_RUN_ENV",
    "PROTOCOL_TAG",
    "ROLE_TAG",
    "STUDY_TAG",
    "SWEEP_EXPERIMENT",
    "SWEEP_PARENT_TAG",
    "TRACKING_ENV",
    "TRAIN_EXPERIMENT",
    "TRIAL_TAG",
    "WORKER_TAG",
    "RegistryUri",
    "activated",
    "alias_version",
    "client",
    "connect",
    "describe",
    "is_creation_race",
    "missing_model",
    "preflight",
    "project_run_id",
    "redact",
    "resolve_uri",
    "use_experiment",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRAIN_EXPERIMENT = "experiment_signature"  # the tutorial's
SWEEP_EXPERIMENT = "winequality-sweep"
# Tags winequality writes on runs and model versions (one spelling, read back by `models`).
STUDY_TAG, TRIAL_TAG, ROLE_TAG = "winequality.study", "winequality.trial", "winequality.role"
FAMILY_TAG, PROTOCOL_TAG = "winequality.family", "winequality.protocol"
WORKER_TAG, SWEEP_PARENT_TAG = "winequality.worker", "winequality.sweep_parent_run"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under another in the UI
CHAMPION, CHALLENGER = "champion", "challenger"  # the registry aliases the gate sets
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable, which its users set
PROJECT_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the run it started


def resolve_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the local SQLite file mlflow.db."""
    return explicit or os.environ.get(TRACKING_ENV) or DEFAULT_TRACKING_URI


def project_run_id() -> str | None:
    """The run `mlflow run` started for this process, if any (it names it in MLFLOW_RUN_ID)."""
    return os.environ.get(PROJECT_RUN_ENV) or None


def client(uri: str | None = None) -> Any:
    """An `MlflowClient` bound to the store (tracking and registry), whatever the process-wide
    URI says."""
    import mlflow

    bound = _absolute(resolve_uri(uri))
    return mlflow.MlflowClient(tracking_uri=bound, registry_uri=bound)


@contextlib.contextmanager
def activated(uri: str) -> Iterator[None]:
    """The process-wide tracking URI set to `uri` for the block, then put back as it was.

    MLflow's fluent functions (`start_run`, `log_*`, `sklearn.log_model`, `log_input`) have no
    client form; this is the one place that sets what they read. `set_tracking_uri` also
    writes MLFLOW_TRACKING_URI for child processes, so that variable is put back too.
    """
    import mlflow

    was_set = mlflow.tracking.is_tracking_uri_set()  # type: ignore[no-untyped-call]
    previous = mlflow.get_tracking_uri() if was_set else None
    variable = os.environ.get(TRACKING_ENV)
    mlflow.set_tracking_uri(_absolute(uri))
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: unset again
        if variable is None:
            os.environ.pop(TRACKING_ENV, None)
        else:
            os.environ[TRACKING_ENV] = variable


def describe(uri: str) -> str:
    """The URI as a message shows it: password hidden, a relative SQLite file made absolute."""
    local = _local_path(uri)
    if local is not None and not Path(local).is_absolute():
        return f"{uri} ({Path(local).resolve()})"
    return redact(uri)


def _local_path(uri: str) -> str | None:
    """The file or folder a local store lives in (SQLite file, file: URI or bare path)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "sqlite":
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        return path if path and path != ":memory:" else None
    if scheme == "file":
        return uri.removeprefix("file://") or None
    if scheme == "" or len(scheme) == 1:  # a bare folder path (or a Windows drive letter)
        return uri
    return None


def preflight(uri: str, timeout: float = 5.0, *, create: bool = True) -> None:
    """Check that the store answers, quickly; raise TrackingError otherwise.

    With `create=False` (commands that only read), a local store that does not exist yet is
    an error rather than something to create.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        # MLflow's SQL stores come with its server package (the `train` extra); the base
        # install (the container image) reaches a tracking server over HTTP instead
        require("sqlalchemy", f"the tracking store {redact(uri)}")
    if scheme in ("http", "https"):
        import requests

        try:
            answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as exc:
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} "
                f"({type(exc).__name__}); is `mlflow server` running?"
            ) from exc
        if answer.status_code >= 400:
            raise TrackingError(
                f"the MLflow tracking server at {uri} answered /health with "
                f"HTTP {answer.status_code}"
            )
    elif scheme == "sqlite":
        path = _local_path(uri)
        if path and not Path(path).expanduser().parent.is_dir():
            raise TrackingError(f"the folder for the SQLite tracking store {uri} does not exist")
        if path and not create and not Path(path).expanduser().is_file():
            raise TrackingError(_no_store(uri))
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        args = (
            {"connect_timeout": int(timeout)} if scheme.startswith(("postgresql", "mysql")) else {}
        )
        try:
            engine = sqlalchemy.create_engine(uri, connect_args=args)
            with engine.connect():
                pass
            engine.dispose()
        except Exception as exc:
            first = first_line(exc)
            raise TrackingError(
                f"cannot connect to the tracking database {redact(uri)}: {first}"
            ) from exc
    elif scheme in ("file", "") or len(scheme) == 1:
        path = _local_path(uri)
        if path and not create and not Path(path).expanduser().is_dir():
            raise TrackingError(_no_store(uri))
    elif scheme == "databricks":
        return  # hosted: MLflow's own client reports problems
    else:
        raise TrackingError(
            f"unsupported tracking URI {uri!r}: use sqlite:///FILE, "
            f"postgresql://…, http(s)://SERVER or a folder path"
        )


def _absolute(uri: str) -> str:
    """A relative SQLite file pinned to the current folder: MLflow caches stores by URI text,
    so `sqlite:///mlflow.db` must not mean another folder's file later in the process."""
    path = _local_path(uri) if uri.lower().startswith("sqlite:") else None
    if path and not Path(path).is_absolute():
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    return uri


def _no_store(uri: str) -> str:
    return (
        f"no MLflow tracking store at {describe(uri)}; run `winequality train` or "
        f"`winequality sweep` there first, or point at your store with --tracking-uri "
        f"(or MLFLOW_TRACKING_URI)"
    )


def connect(explicit: str | None = None, *, create: bool = True) -> str:
    """Resolve and preflight the tracking URI, and check that the store answers; return it.

    Commands that only read (predict, serve, models) pass `create=False`, so that running one
    in the wrong folder says so instead of leaving an empty mlflow.db behind.
    """
    uri = resolve_uri(explicit)
    preflight(uri, create=create)
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as exc:
        first = first_line(exc)
        raise TrackingError(f"the tracking store {redact(uri)} is not usable: {first}") from exc
    return uri


def use_experiment(store: Any, name: str) -> Any:
    """The experiment `name` in the store of the client `store` (created if absent).

    Inside `mlflow run`, MLflow has already started a run (MLFLOW_RUN_ID) in the experiment the
    user chose there; that experiment wins, so the run is adopted rather than refused. Two
    workers creating the same experiment at once both end up using it.
    """
    from mlflow.exceptions import MlflowException

    project_run = project_run_id()
    if project_run:
        return store.get_experiment(store.get_run(project_run).info.experiment_id)
    for _ in range(5):
        try:
            found = store.get_experiment_by_name(name)
            if found is not None and found.lifecycle_stage == "active":
                return found
            if found is not None:
                raise TrackingError(
                    f"the experiment {name!r} was deleted; restore it (mlflow experiments "
                    f"restore --experiment-id {found.experiment_id}) or choose another"
                )
            return store.get_experiment(store.create_experiment(name))
        except MlflowException as exc:
            if not is_creation_race(exc):
                raise
            time.sleep(0.5)
    return store.get_experiment_by_name(name)


def is_creation_race(exc: Exception) -> bool:
    """Two processes created the same table or row at once; the loser may simply retry."""
    text = str(exc).lower()
    return "duplicate key" in text or "already exists" in text or "unique constraint" in text


def redact(uri: str) -> str:
    """Hide a password in a database URI before it reaches a message or a log."""
    if "@" in uri and "://" in uri:
        head, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in creds else uri
    return uri


# ---------------------------------------------------------------------------------------------
# Registered models: their URIs, and what a URI that names none should have said
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryUri:
    """`models:/name@alias` or `models:/name/version`, taken apart."""

    name: str
    alias: str | None
    version: str | None

    @classmethod
    def parse(cls, uri: str) -> RegistryUri | None:
        """None for URIs that name no registered model (runs:/, models:/m-…, folders)."""
        if not uri.startswith("models:/"):
            return None
        rest = uri[len("models:/") :].rstrip("/")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            return cls(name, alias, None)
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return cls(name, None, version)
        return None


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points to, or None if the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def missing_model(uri: str, store: str) -> str | None:
    """Why `uri` names no model in `store`, saying what exists there; None when the registry
    holds what it names (the failure was something else)."""
    from mlflow.exceptions import MlflowException

    registry = client(store)
    if ":/" not in uri:  # a bare word: neither a folder (that was checked) nor a URI
        names = _registered_names(registry)
        if uri in names:
            return (
                f"{uri!r} is a registered model's name, not a model URI: use "
                f"models:/{uri}@{CHAMPION} (an alias) or models:/{uri}/<version>"
            )
        return (
            f"{uri!r} is neither a folder nor a model URI; use runs:/<run_id>/model, "
            f"models:/<name>@<alias>, models:/<name>/<version>, models:/m-<id> or a folder"
        )
    parts = RegistryUri.parse(uri)
    if parts is None:
        return None
    try:
        model = registry.get_registered_model(parts.name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            return None
        listed = ", ".join(_registered_names(registry)) or "none"
        return (
            f"no registered model named {parts.name!r} (registered there: {listed}); "
            f"`winequality train` logs a model but does not register it: "
            f"register it with `winequality register --model models:/m-…` (the URI train "
            f"printed), or run `winequality sweep`, which registers and gates its best"
        )
    if parts.alias is not None and parts.alias not in model.aliases:
        have = ", ".join(f"{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
        return f"{parts.name!r} has no alias {parts.alias!r}; its aliases: {have}"
    if parts.version is not None:
        try:
            registry.get_model_version(parts.name, parts.version)
        except MlflowException:
            latest = model.latest_versions or []
            newest = max((int(v.version) for v in latest), default=0)
            return f"{parts.name!r} has no version {parts.version}; its newest is v{newest}"
    return None


def _registered_names(registry: Any) -> list[str]:
    return sorted(m.name for m in registry.search_registered_models(max_results=100))
