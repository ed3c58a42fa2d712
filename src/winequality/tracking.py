"""Connecting to an MLflow tracking store, failing fast with one line when it is unusable.

MLflow itself retries an unreachable server or database for minutes; a preflight with a short
timeout turns that into an immediate, actionable error.
"""

from __future__ import annotations

import os
from pathlib import Path

from winequality.errors import first_line

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line saying why."""


def resolve_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the local SQLite file mlflow.db."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def preflight(uri: str, timeout: float = 5.0) -> None:
    """Check that the store answers, quickly; raise TrackingError otherwise."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
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
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if path and path != ":memory:" and not Path(path).expanduser().parent.is_dir():
            raise TrackingError(f"the folder for the SQLite tracking store {uri} does not exist")
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
                f"cannot connect to the tracking database {_redact(uri)}: {first}"
            ) from exc
    elif scheme in ("file", "") or scheme == "databricks" or len(scheme) == 1:
        return  # a local folder (a Windows drive letter parses as a 1-letter scheme) or hosted
    else:
        raise TrackingError(
            f"unsupported tracking URI {uri!r}: use sqlite:///FILE, "
            f"postgresql://…, http(s)://SERVER or a folder path"
        )


def connect(explicit: str | None = None) -> str:
    """Resolve, preflight and activate the tracking URI; return it."""
    import mlflow

    uri = resolve_uri(explicit)
    preflight(uri)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as exc:
        first = first_line(exc)
        raise TrackingError(f"the tracking store {_redact(uri)} is not usable: {first}") from exc
    return uri


def _redact(uri: str) -> str:
    """Hide a password in a database URI before it reaches a message or a log."""
    if "@" in uri and "://" in uri:
        head, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in creds else uri
    return uri
