"""The model being served, and following a registry alias to the version it points to."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from winequality import registry, tracking
from winequality.errors import first_line
from winequality.export import read_export
from winequality.scoring import Scorer, load_scorer
from winequality.serving import heap

if TYPE_CHECKING:
    from winequality.serving.metrics import ServerMetrics

__all__ = ["ModelFollower", "ServedModel", "iso_time", "served_version"]

log = logging.getLogger("winequality.serve")


def iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ServedModel:
    """One loaded model and what the server says about it; replaced whole, never changed."""

    scorer: Scorer
    version: str  # the registry version, or the model id when the URI names no version
    loaded_at: float

    @classmethod
    def of(cls, scorer: Scorer, version: str | None = None) -> ServedModel:
        return cls(scorer, version or scorer.model.model_id or "local", time.time())

    @cached_property
    def metadata(self) -> bytes:
        document = {
            **self.scorer.metadata(),
            "version": self.version,
            "loaded_at": iso_time(self.loaded_at),
            "reference_profile": self.scorer.model.profile is not None,
        }
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def served_version(
    model_uri: str, tracking_uri: str | None = None, model_id: str | None = None
) -> str | None:
    """The registry version of the model loaded from `model_uri` (None when it names none).

    A folder made by `winequality export` names the version it was exported from; a `models:/`
    URI is asked of the registry (`registry.resolved_version`).
    """
    local = Path(model_uri).expanduser()
    if local.is_dir():
        exported = read_export(local)
        return exported.version if exported else None
    return registry.resolved_version(model_uri, tracking_uri, model_id)


class ModelFollower:
    """Holds the model being served; for `models:/name@alias`, follows the alias.

    Every `refresh` seconds it asks the registry where the alias points. When it moved, the new
    version is loaded on a thread (requests go on meanwhile), checked like any served model
    (skops allow-list, signature = the feature schema), and swapped in with one assignment:
    a request takes `current` once and finishes on that model. A version that fails to load
    is refused: the old one keeps serving, and the failure shows in /health, the log and the
    `winequality_model_reloads_total{outcome="failed"}` metric; it is not retried until the
    alias moves again.
    """

    def __init__(
        self,
        served: ServedModel,
        *,
        model_uri: str,
        refresh: float,
        metrics: ServerMetrics | None,
        tracking_uri: str | None = None,
    ) -> None:
        self.current = served
        self.model_uri, self.refresh, self.metrics = model_uri, refresh, metrics
        self.tracking_uri = tracking_uri
        self.parts = tracking.RegistryUri.parse(model_uri)
        self.failure: dict[str, Any] | None = None
        self._refused: str | None = None
        if metrics is not None:
            metrics.model_loaded(served.version, served.scorer.model.profile)

    @property
    def follows(self) -> bool:
        return self.refresh > 0 and self.parts is not None and self.parts.alias is not None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            await asyncio.to_thread(self.check)

    def check(self) -> bool:
        """Ask the registry once; load and swap if the alias moved. True if swapped."""
        assert self.parts is not None
        assert self.parts.alias is not None
        try:
            version = tracking.alias_version(
                tracking.client(self.tracking_uri), self.parts.name, self.parts.alias
            )
        except Exception as exc:  # the registry is away: keep serving, say so
            self._failed(None, f"cannot reach the registry: {first_line(exc)}")
            return False
        if version is None or version in (self.current.version, self._refused):
            return False
        uri = f"models:/{self.parts.name}/{version}"
        try:
            scorer = load_scorer(uri, self.tracking_uri)
        except Exception as exc:
            self._refused = version
            self._failed(version, f"cannot serve {uri}: {first_line(exc)}")
            return False
        self.current = ServedModel.of(scorer, version)
        self._refused, self.failure = None, None
        heap.settle()  # the replaced model's cycles collected, the new one frozen
        log.warning("now serving %s (version %s)", uri, version)
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
            self.metrics.model_loaded(version, scorer.model.profile)
        return True

    def _failed(self, version: str | None, message: str) -> None:
        self.failure = {"version": version, "message": message, "at": iso_time(time.time())}
        log.error(
            "registry follow-up failed: %s (still serving version %s)",
            message,
            self.current.version,
        )
        if self.metrics is not None:
            self.metrics.reloads.labels("failed").inc()
