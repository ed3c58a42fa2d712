"""A model exported into a folder of its own: what a container image bakes in.

`export_model` resolves any model URI (a registry alias or version, a run, a logged model, a
folder), checks it the way the server will (a skops scikit-learn model whose signature is the
wine schema, with its reference profile, scoring its own input example), and writes its MLflow
folder plus `winequality-export.json` saying where it came from. `winequality serve --model
FOLDER` then serves it with no tracking server reachable, naming the registry version it was.

The folder appears whole or not at all: files are written beside it and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from winequality import logged_model, registry, schema, tracking
from winequality.drift import PROFILE_FILE
from winequality.errors import ModelCheckError, ModelLoadError, ParameterError, first_line

__all__ = ["EXPORT_FILE", "Exported", "export_model", "read_export"]

EXPORT_FILE = "winequality-export.json"


@dataclass(frozen=True)
class Exported:
    """Where an exported model came from (also written, as JSON, into its folder)."""

    source: str  # the URI it was exported from
    registered_model: str | None
    version: str | None  # the registry version, when the URI named one through the registry
    run_id: str | None
    model_id: str | None
    exported_at: str
    winequality: str  # the version that exported and checked it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_export(folder: Path) -> Exported | None:
    """The provenance of an exported folder, or None (a folder not made by `export_model`).

    Fields this version does not know (written by a newer one) are ignored.
    """
    import orjson

    path = folder / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        data = orjson.loads(path.read_bytes())
        known = {f.name for f in fields(Exported)}
        return Exported(**{key: data.get(key) for key in known})
    except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{folder}: unreadable {EXPORT_FILE}: {first_line(exc)}") from exc


def export_model(
    model_uri: str,
    folder: Path,
    *,
    tracking_uri: str | None = None,
    replace: bool = False,
) -> Exported:
    """Copy the model `model_uri` into `folder`, checked, with its provenance; return it.

    Refuses a folder that exists and is not empty unless `replace` and it holds an earlier
    export (never anything else), and a model without its reference profile (the server's
    drift monitoring needs it). Every file is made readable by all (0644, folders 0755): an
    image's non-root user reads it whatever the umask was. On any failure nothing is left:
    not the staging folder, not a parent folder it created, and an earlier export is kept.
    """
    folder = folder.expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"--out {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not replace:
            raise ParameterError(f"--out {folder} is not empty (--replace overwrites it)")
        if read_export(folder) is None:
            raise ParameterError(
                f"--out {folder} holds something other than a model `winequality export` "
                "wrote; --replace only overwrites such a folder (choose an empty one)"
            )
    local_source = Path(model_uri).expanduser().is_dir()
    store = None if local_source else tracking.connect(tracking_uri, create=False)
    created = [p for p in folder.parents if not p.exists()]  # removed again on failure
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise ParameterError(f"cannot write --out {folder}: {exc.strerror}") from None
    try:
        exported = _export(model_uri, store, work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for parent in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)  # (what the model's folder left in it, if any)
    return exported


def _export(model_uri: str, store: str | None, work: Path, folder: Path) -> Exported:
    import orjson

    staging = _fetch(model_uri, store, work)
    loaded = logged_model.load_local(staging, model_uri)
    if loaded.profile is None:
        raise ModelLoadError(
            f"{model_uri} holds no reference profile ({PROFILE_FILE}); retrain it with "
            "`winequality train` or `sweep`, which log one (the server's drift checks need it)"
        )
    _check_scores(loaded)
    parts = tracking.RegistryUri.parse(model_uri)
    registered = None
    if store is not None and parts is not None:
        registered = registry.resolved_version(model_uri, store, loaded.model_id)
    exported = Exported(
        source=model_uri,
        registered_model=parts.name if parts else None,
        version=registered,
        run_id=loaded.run_id,
        model_id=loaded.model_id,
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        winequality=version("winequality"),
    )
    (staging / EXPORT_FILE).write_bytes(
        orjson.dumps(exported.to_dict(), option=orjson.OPT_INDENT_2)
    )
    _readable_by_all(staging)
    try:
        _swap_in(staging, folder)
    except OSError as exc:
        raise ParameterError(f"cannot write --out {folder}: {exc.strerror}") from None
    return exported


def _fetch(model_uri: str, store: str | None, work: Path) -> Path:
    """The model's files in a folder under `work`."""
    local = Path(model_uri).expanduser()
    if local.is_dir():
        return Path(shutil.copytree(local, work / "model"))
    return logged_model.download(model_uri, store, work)


def _check_scores(loaded: logged_model.LoadedModel) -> None:
    """The model scores its own input example to finite numbers, as the server will."""
    from winequality.scoring import Scorer

    example = loaded.input_example
    if example is None or not set(schema.FEATURE_NAMES) <= set(example.columns):
        raise ModelLoadError(f"{loaded.uri} holds no input example with the wine features")
    features = example[list(schema.FEATURE_NAMES)].to_numpy(dtype=np.float64)
    scores = Scorer.of(loaded).predict(features)
    if scores.shape != (len(features),) or not np.isfinite(scores).all():
        raise ModelCheckError(f"{loaded.uri} does not score its own input example: {scores}")


def _readable_by_all(root: Path) -> None:
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_in(staging: Path, folder: Path) -> None:
    """Put `staging` at `folder`; an earlier export is replaced only once the new one is whole,
    and put back if the new one cannot take its place."""
    if not folder.exists() or not any(folder.iterdir()):
        if folder.exists():
            folder.rmdir()  # empty: nothing to keep
        staging.rename(folder)
        return
    old = folder.with_name(f".{folder.name}-old-{os.getpid()}")
    folder.rename(old)
    try:
        staging.rename(folder)
    except OSError:
        old.rename(folder)
        raise
    shutil.rmtree(old)
