"""Shadow scoring: a second model scores a sample of the live rows, off the request path.

`serve --shadow models:/wine-quality@challenger` answers from the champion only. After the
champion has scored a request, a sampled `fraction` of its accepted rows is queued (a bounded
queue, counted in rows: when full, the rows are dropped and counted, never waited for) for one
thread that scores them with the shadow model and records how far apart the two were:

- metrics: the absolute difference per row, each model's scoring time, rows by outcome
  (`scored`, `dropped`: the queue was full, `unavailable`: no shadow model loaded, `failed`);
- a log (`--shadow-log DIR`): one Parquet file per worker at a time, with the request id and
  the row's position (so that true grades can be joined on later), both versions, both
  predictions, and each feature's bin in the champion's reference profile (not the values:
  the inputs themselves only with `--shadow-log-inputs`). A file is written whole under a
  hidden name and renamed when closed (every few seconds, at a size, and when the server
  drains), so every visible file is complete, whatever stops the server.

The shadow model follows its alias like the champion does, but it is never fatal: one that
fails to load is reported (/health, the log, a metric) and retried at every refresh.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from winequality import tracking
from winequality.errors import first_line
from winequality.schema import FEATURE_NAMES
from winequality.scoring import load_scorer
from winequality.serving.follower import ServedModel, iso_time, served_version
from winequality.shadow_report import LOG_PROFILE_KEY

if TYPE_CHECKING:
    from winequality.drift import Profile
    from winequality.serving.metrics import ServerMetrics

__all__ = ["Shadow", "ShadowLog", "ShadowModel", "ShadowSettings"]

log = logging.getLogger("winequality.serve")


BATCH_ITEMS = 512  # requests' samples scored in one call at most
BATCH_PAUSE = 0.2  # seconds between batches: samples gather meanwhile
SWITCH_INTERVAL = 0.0005  # seconds a thread waiting for the interpreter waits at most
STOP_SECONDS = 5.0  # at a drain, what is queued is scored within this, else counted dropped


@dataclass(frozen=True)
class ShadowSettings:
    model_uri: str
    fraction: float = 0.2  # of the accepted rows, sampled row by row
    log_dir: Path | None = None
    log_inputs: bool = False  # the feature values themselves in the log
    queue_rows: int = 10_000  # rows waiting for the shadow at most; more are dropped
    file_seconds: float = 5.0  # a log file is closed this often (when it holds rows)
    file_rows: int = 100_000  # and at this size


class ShadowModel:
    """The shadow model, loaded and followed; None until it loads. Never raises."""

    def __init__(
        self, model_uri: str, tracking_uri: str | None, metrics: ServerMetrics | None
    ) -> None:
        self.model_uri, self.tracking_uri, self.metrics = model_uri, tracking_uri, metrics
        self.parts = tracking.RegistryUri.parse(model_uri)
        self.current: ServedModel | None = None
        self.failure: dict[str, Any] | None = None

    def check(self, follow: bool = True) -> bool:
        """Load the shadow if it is missing or (`follow`) its alias moved; retried every call
        after a failure, unlike the champion's follower: nothing else would ever load it.
        True if a model was loaded."""
        uri, version = self.model_uri, None
        if self.current is not None and not follow:
            return False
        try:
            if self.parts is not None and self.parts.alias is not None:
                version = tracking.alias_version(
                    tracking.client(self.tracking_uri), self.parts.name, self.parts.alias
                )
                if version is None:
                    raise LookupError(f"alias {self.parts.alias} points to no version")
                if self.current is not None and version == self.current.version:
                    return False
                uri = f"models:/{self.parts.name}/{version}"
            elif self.current is not None:
                return False  # a fixed URI: loaded once
            scorer = load_scorer(uri, self.tracking_uri)
            if version is None:
                version = served_version(uri, self.tracking_uri, scorer.model.model_id)
        except Exception as exc:  # reported, never fatal: the champion keeps answering
            self.failure = {
                "message": f"cannot load the shadow {uri}: {first_line(exc)}",
                "at": iso_time(time.time()),
            }
            log.error("%s (retried at the next refresh)", self.failure["message"])
            if self.metrics is not None:
                self.metrics.shadow_reloads.labels("failed").inc()
            return False
        self.current, self.failure = ServedModel.of(scorer, version), None
        log.warning("shadow: now scoring with %s (version %s)", uri, self.current.version)
        if self.metrics is not None:
            self.metrics.shadow_reloads.labels("ok").inc()
            self.metrics.shadow_loaded(self.current.version)
        return True


@dataclass(frozen=True)
class _Work:
    request_id: str
    rows: np.ndarray  # positions in the request
    features: np.ndarray  # those rows
    champion: np.ndarray  # the champion's predictions for them
    champion_version: str
    champion_model_id: str  # what the version is: evidence names models, not only numbers
    champion_profile: Profile | None
    champion_seconds: float  # the champion's scoring time for the whole request
    at: float  # Unix time the request was scored


class ShadowLog:
    """The sampled rows with both predictions, in Parquet files that are always whole."""

    def __init__(self, folder: Path, *, log_inputs: bool, file_seconds: float, file_rows: int):
        # Imported now, before the server answers: the first import of pyarrow.parquet takes
        # the interpreter for a good part of a second, which every request would wait for.
        import pyarrow.parquet  # noqa: F401  (and the `files` extra is checked at start)

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.log_inputs = folder, log_inputs
        self.file_seconds, self.file_rows = file_seconds, file_rows
        # unique whatever else writes here: another worker, a restart with the same pid
        self.stem = f"shadow-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lost = 0  # rows a failed write could not keep
        self.files = 0
        self._lock = threading.Lock()  # the shadow thread appends; a drain may close
        self._reset()

    def _reset(self) -> None:
        self._parts: list[dict[str, Any]] = []
        self._rows = 0
        self._opened = time.monotonic()
        self._edges: list[list[float]] | None = None

    def append(self, batch: list[_Work], shadow: np.ndarray, shadow_model: ServedModel) -> None:
        """A scored batch's rows (`shadow`: the shadow's predictions, in the batch's order),
        as columns built once per batch: per request, the cost would fall on the answers."""
        at = 0
        while at < len(batch):  # a run of requests scored by one champion (one profile)
            profile = batch[at].champion_profile
            end = at + 1
            while end < len(batch) and batch[end].champion_profile is profile:
                end += 1
            rows = sum(len(work.rows) for work in batch[:at])
            self._append_run(batch[at:end], shadow[rows:], shadow_model, profile)
            at = end

    def _append_run(
        self,
        run: list[_Work],
        shadow: np.ndarray,
        shadow_model: ServedModel,
        profile: Profile | None,
    ) -> None:
        counts = [len(work.rows) for work in run]
        n = sum(counts)
        features = np.concatenate([work.features for work in run])

        def each_row(values: list[Any], dtype: Any = object) -> np.ndarray:
            return np.repeat(np.array(values, dtype=dtype), counts)

        part: dict[str, np.ndarray] = {
            "time": each_row([work.at for work in run], np.float64),
            "request_id": each_row([work.request_id for work in run]),
            "row": np.concatenate([work.rows for work in run]).astype(np.int32),
            "champion_version": each_row([work.champion_version for work in run]),
            "champion_model_id": each_row([work.champion_model_id for work in run]),
            "shadow_version": np.full(n, shadow_model.version, dtype=object),
            "shadow_model_id": np.full(n, shadow_model.scorer.model.model_id or "", dtype=object),
            "champion": np.concatenate([work.champion for work in run]),
            "shadow": shadow[:n],
        }
        if profile is not None:
            for j, (name, feature) in enumerate(zip(FEATURE_NAMES, profile.features, strict=True)):
                bins = np.searchsorted(feature.edges, features[:, j], side="right")
                part[f"bin {name}"] = bins.astype(np.int8)
        if self.log_inputs:
            for j, name in enumerate(FEATURE_NAMES):
                part[name] = features[:, j]
        edges = [f.edges for f in profile.features] if profile is not None else None
        with self._lock:
            if self._parts and (set(part) != set(self._parts[0]) or edges != self._edges):
                self._close_locked()  # a champion with another profile: another file
            self._edges = edges
            self._parts.append(part)
            self._rows += n
            if self._rows >= self.file_rows:
                self._close_locked()

    def tick(self) -> None:
        """Close the file if it has been open long enough (called by the shadow thread)."""
        if time.monotonic() - self._opened >= self.file_seconds:
            with self._lock:
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            self._opened = time.monotonic()
            return
        columns: dict[str, Any] = {}
        for name in self._parts[0]:
            values = np.concatenate([part[name] for part in self._parts])
            text = values.dtype == object
            columns[name] = pa.array(values, pa.string() if text else None)
        columns["time"] = pa.array(
            (columns["time"].to_numpy() * 1000).astype("int64"), pa.timestamp("ms", tz="UTC")
        )
        table = pa.table(columns)
        if self._edges is not None:
            table = table.replace_schema_metadata({LOG_PROFILE_KEY: orjson.dumps(self._edges)})
        self.files += 1
        name = f"{self.stem}-{self.files:05d}.parquet"
        hidden = self.folder / f".{name}.partial"
        try:
            pq.write_table(table, hidden)
            os.replace(hidden, self.folder / name)  # visible only once whole
        except OSError as exc:  # a full disk, a removed folder: said, counted, not retried
            log.error("shadow log: %d rows lost, cannot write %s: %s", self._rows, name, exc)
            self.lost += self._rows
            hidden.unlink(missing_ok=True)
        finally:
            self._reset()


class Shadow:
    """Samples accepted rows into a bounded queue; one thread scores them with the shadow."""

    def __init__(
        self,
        settings: ShadowSettings,
        *,
        tracking_uri: str | None,
        metrics: ServerMetrics | None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < settings.fraction <= 1.0:
            raise ValueError("the shadow fraction must be within (0, 1]")
        self.settings, self.metrics = settings, metrics
        self.model = ShadowModel(settings.model_uri, tracking_uri, metrics)
        self.log = (
            ShadowLog(
                settings.log_dir,
                log_inputs=settings.log_inputs,
                file_seconds=settings.file_seconds,
                file_rows=settings.file_rows,
            )
            if settings.log_dir is not None
            else None
        )
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._stopping = False
        self._switch_interval = sys.getswitchinterval()
        self.counts = {"sampled": 0, "scored": 0, "dropped": 0, "unavailable": 0, "failed": 0}
        self._thread: threading.Thread | None = None

    @property
    def follows(self) -> bool:
        return self.model.parts is not None and self.model.parts.alias is not None

    # --- the request path: sample and queue, never wait --------------------------------------

    def offer(
        self,
        request_id: str,
        features: np.ndarray,
        predictions: np.ndarray,
        served: ServedModel,
        seconds: float,
    ) -> None:
        """After the champion answered: queue a sample of the request's rows (its `seconds`
        of scoring are recorded beside the shadow's)."""
        n = len(predictions)
        if self.settings.fraction >= 1.0:
            rows = np.arange(n)
        else:
            rows = np.flatnonzero(self._rng.random(n) < self.settings.fraction)
        if not rows.size:
            return
        with self._lock:
            self.counts["sampled"] += rows.size
            if self._queued_rows + rows.size > self.settings.queue_rows:
                self.counts["dropped"] += rows.size
                full = True
            else:
                self._queued_rows += rows.size
                full = False
        if full:
            if self.metrics is not None:
                self.metrics.shadow_rows.labels("dropped").inc(rows.size)
            return
        self._queue.put(
            _Work(
                request_id,
                rows,
                features[rows],
                np.asarray(predictions, dtype=np.float64)[rows],
                served.version,
                served.scorer.model.model_id or "",
                served.scorer.model.profile,
                seconds,
                time.time(),
            )
        )

    # --- the shadow thread -------------------------------------------------------------------

    def start(self) -> None:
        # With a second thread wanting the interpreter, the event loop waits up to the switch
        # interval (5 ms by default) every time it gives it up for I/O: shortened, so that the
        # shadow's batches cost the answers less (no effect while the loop runs alone).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run, name="winequality-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Score what is queued (within `timeout`: what is left then is counted as dropped),
        then close the log's file."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():  # (a daemon: it ends with the process)
                self._stopping = True
                with self._lock:
                    left, self._queued_rows = self._queued_rows, 0
                    self.counts["dropped"] += left
                log.warning("shadow: %d queued rows not scored at stop", left)
            self._thread = None
            sys.setswitchinterval(self._switch_interval)
        self.flush()

    def flush(self) -> None:
        """The log's open file, closed (also after a second signal skipped the drain)."""
        if self.log is not None:
            self.log.close()

    def _run(self) -> None:
        """Take what is queued in batches, a pause between them: one wake-up per batch, not per
        request, so that the thread seldom contends with the event loop for the interpreter."""
        tick = min(1.0, self.settings.file_seconds)
        while True:
            try:
                first = self._queue.get(timeout=tick)
            except queue.Empty:
                first = False  # type: ignore[assignment]
            stopping = first is None
            batch = [first] if first else []
            while not stopping and len(batch) < BATCH_ITEMS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            rows = sum(len(work.rows) for work in batch)
            try:
                if batch:
                    self._score(batch)
                if self.log is not None:
                    self.log.tick()
            except Exception:  # a bug: logged with its trace, the server goes on
                log.exception("shadow scoring failed")
                self._count("failed", rows)
            finally:
                with self._lock:
                    self._queued_rows = max(0, self._queued_rows - rows)
            if stopping or self._stopping:
                return
            if len(batch) < BATCH_ITEMS:  # (a full batch: more is waiting, no pause)
                time.sleep(BATCH_PAUSE)

    def _score(self, batch: list[_Work]) -> None:
        shadow = self.model.current
        rows = sum(len(work.rows) for work in batch)
        if shadow is None:
            self._count("unavailable", rows)
            return
        features = np.concatenate([work.features for work in batch])
        started = time.perf_counter()
        predicted = np.asarray(shadow.scorer.predict(features), dtype=np.float64)
        seconds = time.perf_counter() - started
        champion = np.concatenate([work.champion for work in batch])
        if self.log is not None:
            self.log.append(batch, predicted, shadow)
        if self.metrics is not None:
            self.metrics.shadow_scored(
                np.abs(predicted - champion), [work.champion_seconds for work in batch], seconds
            )
        self._count("scored", rows)

    def _count(self, outcome: str, rows: int) -> None:
        with self._lock:
            self.counts[outcome] += rows
        if self.metrics is not None and outcome != "scored":
            self.metrics.shadow_rows.labels(outcome).inc(rows)

    def state(self) -> dict[str, Any]:
        """What /health says of the shadow."""
        current = self.model.current
        with self._lock:
            counts = dict(self.counts)
            queued = self._queued_rows
        return {
            "model_uri": self.settings.model_uri,
            "model_version": current.version if current else None,
            "loaded": current is not None,
            "last_load_failure": self.model.failure,
            "fraction": self.settings.fraction,
            "queued_rows": queued,
            "rows": counts,
            "log": str(self.settings.log_dir) if self.settings.log_dir else None,
            "log_rows_lost": self.log.lost if self.log is not None else 0,
        }
