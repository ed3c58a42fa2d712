"""Shadow scoring, the shadow's side: a process of its own, started by the server
(`serving.shadow`), reading the sampled rows from a pipe.

Every BATCH_PAUSE it takes what arrived, scores it with the shadow model in one call, and
records how far apart the two models were:

- metrics (prometheus_client's multiprocess files, which the server's /metrics reads): the
  absolute difference per row, each model's scoring time, rows by outcome (`scored`;
  `dropped`: the pipe was full, as the server tells; `unavailable`: no shadow model loaded;
  `failed`), loads of the shadow, its version;
- a log (`--shadow-log DIR`): Parquet files with the request id and the row's position (so
  that true grades can be joined on later), both versions and logged model ids, both
  predictions, and each feature's bin in the champion's reference profile (not the values: the
  inputs themselves only with `--shadow-log-inputs`). A file is written whole under a hidden
  name and renamed when closed (every few seconds, at a size, on a new champion profile, and at
  the end), so every visible file is complete, whatever stops the server;
- its status (`status.json`, rewritten whole after every batch), which /health reads.

The shadow model follows its alias like the champion does, but it is never fatal: one that
fails to load is reported and retried at every refresh.

The process ignores SIGINT and SIGTERM: it ends when the pipe does (the server closed it, or
died), after scoring what it holds and closing the log's file. It runs at idle priority.

Run by the server as `python -m winequality.serving.shadow_process`, its settings (JSON) on
stdin.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from winequality import tracking
from winequality.errors import first_line
from winequality.schema import FEATURE_NAMES
from winequality.scoring import load_scorer
from winequality.serving.follower import ServedModel, iso_time, served_version
from winequality.serving.metrics import DIFFERENCE_BUCKETS, LATENCY_BUCKETS
from winequality.serving.shadow import CHAMPION, HEADER, ROWS, ROWS_HEADER
from winequality.shadow_report import LOG_PROFILE_KEY

__all__ = [
    "Champion",
    "Inbox",
    "Part",
    "ShadowLog",
    "ShadowMetrics",
    "ShadowModel",
    "ShadowProcess",
    "main",
]

log = logging.getLogger("winequality.serve")

BATCH_PAUSE = 0.2  # seconds between batches: rows gather in the pipe meanwhile
RETRY_SECONDS = 30.0  # a shadow that failed to load, retried this often with --refresh 0
READ_BYTES = 1 << 20
LONGEST_MESSAGE = 1 << 16  # the server's are under 4 KiB: a longer length is a broken stream
LINGER_SECONDS = 10.0  # once the server is gone, the most this process stays to finish


class ShadowMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = CollectorRegistry()  # (the values live in the multiprocess files)
        self.difference = Histogram(
            "winequality_shadow_abs_difference",
            "Absolute difference between the shadow's and the champion's prediction, per "
            "sampled row (quality points)",
            buckets=DIFFERENCE_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "winequality_shadow_scoring_seconds",
            "Scoring time: the champion's for each request whose rows were sampled, the "
            "shadow's for each batch of samples it scored",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "winequality_shadow_rows",
            "Sampled rows by outcome: scored, dropped (the shadow's pipe was full), "
            "unavailable (no shadow model loaded), failed",
            ["outcome"],
            registry=r,
        )
        self.reloads = Counter(
            "winequality_shadow_reloads", "Shadow model loads: ok or failed", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.version = Gauge(
            "winequality_shadow_model_version",
            "Registry version of the shadow model (NaN when not registered)",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        for outcome in ("scored", "dropped", "unavailable", "failed"):
            self.rows.labels(outcome)  # every outcome shown from the start, at 0


class ShadowModel:
    """The shadow model, loaded and followed; None until it loads. Never raises."""

    def __init__(self, model_uri: str, tracking_uri: str | None, metrics: ShadowMetrics) -> None:
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
            log.error("shadow: %s (retried at the next refresh)", self.failure["message"])
            self.metrics.reloads.labels("failed").inc()
            return False
        self.current, self.failure = ServedModel.of(scorer, version), None
        log.warning("shadow: now scoring with %s (version %s)", uri, self.current.version)
        self.metrics.reloads.labels("ok").inc()
        number = self.current.version
        self.metrics.version.set(float(number) if number.isdigit() else float("nan"))
        return True


@dataclass(frozen=True)
class Champion:
    """What the server said of the champion that scored the rows after it."""

    version: str
    model_id: str
    edges: list[list[float]] | None  # its reference profile's, per feature


@dataclass(frozen=True)
class Part:
    """One message's rows."""

    by: Champion  # the champion that scored them
    request_id: str
    at: float
    champion_seconds: float  # NaN: a later part of a request whose time was counted
    rows: np.ndarray  # positions in the request
    champion: np.ndarray  # the champion's predictions for them
    features: np.ndarray  # and their features, a row each


class ShadowLog:
    """The sampled rows with both predictions, in Parquet files that are always whole."""

    def __init__(self, folder: Path, *, log_inputs: bool, file_seconds: float, file_rows: int):
        import pyarrow.parquet  # noqa: F401  (the `files` extra is checked by the command)

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.log_inputs = folder, log_inputs
        self.file_seconds, self.file_rows = file_seconds, file_rows
        # unique whatever else writes here: another worker's shadow, a restart with the same pid
        self.stem = f"shadow-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lost = 0  # rows a failed write could not keep
        self.files = 0
        self._reset()

    def _reset(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []
        self._rows = 0
        self._opened = time.monotonic()
        self._edges: list[list[float]] | None = None

    def append(self, run: list[Part], shadow: np.ndarray, shadow_model: ServedModel) -> None:
        """A run of parts scored after one champion (`shadow`: the shadow's predictions, in
        the run's order), as columns built once per run."""
        counts = [len(part.rows) for part in run]
        n = sum(counts)
        features = np.concatenate([part.features for part in run])
        champion = run[0].by

        def each_row(values: list[Any], dtype: Any = object) -> np.ndarray:
            return np.repeat(np.array(values, dtype=dtype), counts)

        columns: dict[str, np.ndarray] = {
            "time": each_row([part.at for part in run], np.float64),
            "request_id": each_row([part.request_id for part in run]),
            "row": np.concatenate([part.rows for part in run]),
            "champion_version": np.full(n, champion.version, dtype=object),
            "champion_model_id": np.full(n, champion.model_id, dtype=object),
            "shadow_version": np.full(n, shadow_model.version, dtype=object),
            "shadow_model_id": np.full(n, shadow_model.scorer.model.model_id or "", dtype=object),
            "champion": np.concatenate([part.champion for part in run]),
            "shadow": shadow[:n],
        }
        if champion.edges is not None:
            for j, (name, edges) in enumerate(zip(FEATURE_NAMES, champion.edges, strict=True)):
                bins = np.searchsorted(edges, features[:, j], side="right")
                columns[f"bin {name}"] = bins.astype(np.int8)
        if self.log_inputs:
            for j, name in enumerate(FEATURE_NAMES):
                columns[name] = features[:, j]
        if self._parts and (set(columns) != set(self._parts[0]) or champion.edges != self._edges):
            self.close()  # a champion with another profile: another file
        self._edges = champion.edges
        self._parts.append(columns)
        self._rows += n
        if self._rows >= self.file_rows:
            self.close()

    def tick(self) -> None:
        """Close the file if it has been open long enough."""
        if time.monotonic() - self._opened >= self.file_seconds:
            self.close()

    def close(self) -> None:
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


class Inbox:
    """The pipe's reading end: whole messages out of what arrived."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.buffer = bytearray()
        self.ended = False

    def take(self) -> list[tuple[int, memoryview]]:
        """Every whole message that arrived (and whether the pipe ended: `ended`)."""
        while not self.ended:
            try:
                chunk = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                break
            if not chunk:
                self.ended = True
            self.buffer += chunk
        messages: list[tuple[int, memoryview]] = []
        arrived, at = memoryview(bytes(self.buffer)), 0  # a copy the messages can point into
        while len(arrived) - at >= HEADER.size:
            length, kind = HEADER.unpack_from(arrived, at)
            if length > LONGEST_MESSAGE:  # a bug: end here (the server starts a new process)
                raise ValueError(f"a message of {length} bytes: the stream is broken")
            start = at + HEADER.size
            if len(arrived) - start < length:
                break  # its rest is still on the way
            messages.append((kind, arrived[start : start + length]))
            at = start + length
        del self.buffer[:at]
        return messages


class ShadowProcess:
    def __init__(self, config: dict[str, Any]) -> None:
        self.metrics = ShadowMetrics()
        self.model = ShadowModel(config["model_uri"], config["tracking_uri"], self.metrics)
        refresh = float(config["refresh"])
        self.follow = refresh > 0
        self.every = refresh or RETRY_SECONDS
        self.status_path = Path(config["status"])
        self.parent = int(config["parent"])
        self.inbox = Inbox(int(config["fd"]))
        self.log = (
            ShadowLog(
                Path(config["log_dir"]),
                log_inputs=bool(config["log_inputs"]),
                file_seconds=float(config["file_seconds"]),
                file_rows=int(config["file_rows"]),
            )
            if config["log_dir"]
            else None
        )
        self.champions: dict[int, Champion] = {}
        self.counts = {"scored": 0, "unavailable": 0, "failed": 0}
        self._written_status: dict[str, Any] | None = None

    def run(self) -> int:
        self.model.check()
        self.write_status()
        due = time.monotonic() + self.every
        while not self.inbox.ended:
            time.sleep(BATCH_PAUSE)
            self.handle(self.inbox.take())
            if time.monotonic() >= due:
                self.model.check(follow=self.follow)
                due = time.monotonic() + self.every
            if self.log is not None:
                self.log.tick()
            self.write_status()
        if self.log is not None:
            self.log.close()
        if os.getppid() != self.parent:  # the server died: nothing else will remove these
            shutil.rmtree(self.status_path.parent, ignore_errors=True)
        else:
            self.write_status()
        return 0

    def handle(self, messages: list[tuple[int, memoryview]]) -> None:
        parts: list[Part] = []
        dropped = 0
        for kind, body in messages:
            if kind == CHAMPION:
                said = orjson.loads(body)
                self.champions[said["generation"]] = Champion(
                    said["version"], said["model_id"], said["edges"]
                )
                continue
            if kind != ROWS:
                raise ValueError(f"a message of unknown kind {kind}")
            generation, at, seconds, drops, n = ROWS_HEADER.unpack_from(body)
            width = len(FEATURE_NAMES)
            dropped += drops
            if not n:
                continue
            length = body[ROWS_HEADER.size]
            start = ROWS_HEADER.size + 1
            request_id = bytes(body[start : start + length]).decode("ascii")
            start += length
            rows = np.frombuffer(body, "<i4", n, start)
            champion = np.frombuffer(body, "<f8", n, start + 4 * n)
            features = np.frombuffer(body, "<f8", n * width, start + 12 * n).reshape(n, width)
            by = self.champions[generation]
            parts.append(Part(by, request_id, at, seconds, rows, champion, features))
        if dropped:
            self.metrics.rows.labels("dropped").inc(dropped)
        if not parts:
            return
        n = sum(len(part.rows) for part in parts)
        try:
            self.score(parts)
        except Exception:  # a bug: logged with its trace, the process goes on
            log.exception("shadow scoring failed")
            self.count("failed", n)

    def score(self, parts: list[Part]) -> None:
        shadow = self.model.current
        n = sum(len(part.rows) for part in parts)
        if shadow is None:
            self.count("unavailable", n)
            return
        features = np.concatenate([part.features for part in parts])
        started = time.perf_counter()
        predicted = np.asarray(shadow.scorer.predict(features), dtype=np.float64)
        seconds = time.perf_counter() - started
        if self.log is not None:
            at = 0
            while at < len(parts):  # runs of parts scored after one champion
                end = at + 1
                while end < len(parts) and parts[end].by is parts[at].by:
                    end += 1
                first = sum(len(part.rows) for part in parts[:at])
                self.log.append(parts[at:end], predicted[first:], shadow)
                at = end
        observe = self.metrics.difference.observe
        answered = np.concatenate([part.champion for part in parts])
        for difference in np.abs(predicted - answered).tolist():
            observe(difference)
        champion = self.metrics.latency.labels("champion")
        for part in parts:
            if not np.isnan(part.champion_seconds):
                champion.observe(part.champion_seconds)
        self.metrics.latency.labels("shadow").observe(seconds)
        self.count("scored", n)

    def count(self, outcome: str, rows: int) -> None:
        self.counts[outcome] += rows
        self.metrics.rows.labels(outcome).inc(rows)

    def write_status(self) -> None:
        current = self.model.current
        status = {
            "pid": os.getpid(),
            "loaded": current is not None,
            "model_version": current.version if current is not None else None,
            "model_id": current.scorer.model.model_id if current is not None else None,
            "last_load_failure": self.model.failure,
            "rows": dict(self.counts),
            "log_rows_lost": self.log.lost if self.log is not None else 0,
        }
        if status == self._written_status:
            return
        hidden = self.status_path.with_name(f".{self.status_path.name}.partial")
        hidden.write_bytes(orjson.dumps(status))
        os.replace(hidden, self.status_path)  # read whole by the server, never half written
        self._written_status = status


def _leave_when_orphaned(parent: int) -> None:
    """Once the server is gone, exit within LINGER_SECONDS, whatever the main loop is doing
    (a model load waiting on a registry that does not answer): the pipe's end is noticed only
    between batches."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        time.sleep(LINGER_SECONDS)
        log.error("shadow: the server is gone and this process did not finish; leaving")
        os._exit(1)

    threading.Thread(target=watch, name="winequality-shadow-orphan", daemon=True).start()


def _idle_priority() -> None:
    """Run only on CPU time nothing else wants (Linux), else as low as nice goes. Every thread
    of the process: a policy is a thread's own, and some started at import (threads made later
    take their maker's)."""
    try:
        for thread in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(thread), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def main(settings: bytes) -> int:
    # It ends when its pipe ends, after the drain: a terminal's Ctrl+C or a group's SIGTERM
    # reaches the server too, which then closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _idle_priority()
    config = orjson.loads(settings)
    _leave_when_orphaned(int(config["parent"]))
    return ShadowProcess(config).run()


if __name__ == "__main__":
    sys.exit(main(sys.stdin.buffer.read()))
