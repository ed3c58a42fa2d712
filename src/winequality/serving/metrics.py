"""The server's Prometheus metrics, with the official client library.

One process: the library's default in-memory values. With `--workers N` each worker process
sets PROMETHEUS_MULTIPROC_DIR in its own environment before the client library is imported
(`serving.run`), so each worker's values live in files that `MultiProcessCollector` sums at
scrape time: the counts are the whole server's, whichever worker answers `/metrics`.

Drift is exported the same way: every worker counts the inputs it accepted into the reference
profile's bins (counters, summed across workers), and the population stability index per
feature is computed from the summed bins when `/metrics` or `/drift` is read.

The request path costs two appends: a request's route, status and latency (`request_done`, as
an observer of `serving.recorder`), and the rows it accepted, are queued and folded into the
metrics in bunches (every SETTLE_SECONDS, and before every scrape, so `/metrics` is always
current for the worker that answers it). Folding a bunch
costs less than the same updates one request at a time: one counter increment per route and
status, one per reference bin, and the histogram's observations in one tight loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from winequality import drift
from winequality.drift import MIN_DRIFT_ROWS
from winequality.schema import FEATURE_NAMES

__all__ = ["MULTIPROC_ENV", "SETTLE_SECONDS", "ServerMetrics", "take_all"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SETTLE_SECONDS = 0.1  # how stale another worker's counts may be when one worker is scraped
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DIFFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
QUEUE_BUCKETS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServerMetrics:
    """Every metric of one server process (registered in a registry of its own)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "winequality_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "winequality_request_duration_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("winequality_rows_scored", "Rows scored", registry=r)
        self.problems = Counter(
            "winequality_validation_problems",
            "Cells refused (or warned about), by column and reason",
            ["column", "reason"],
            registry=r,
        )
        self.outside = Counter(
            "winequality_outside_training_range",
            "Accepted values beyond the model's training range (with a margin), by feature",
            ["feature"],
            registry=r,
        )
        self.version = Gauge(
            "winequality_model_version",
            "Registry version of the model being served (NaN when not registered)",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.loaded = Gauge(
            "winequality_model_loaded_timestamp_seconds",
            "When the model being served was loaded (Unix time)",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.reloads = Counter(
            "winequality_model_reloads",
            "Registry follow-ups: ok or failed",
            ["outcome"],
            registry=r,
        )
        self.bins = Counter(
            "winequality_input_bin",
            "Accepted inputs per reference bin of each feature, by model version (for drift)",
            ["version", "feature", "bin"],
            registry=r,
        )
        # Load: what `serving.admission` and `serving.connections` report
        self.inflight = Gauge(
            "winequality_requests_in_flight",
            "Scoring requests admitted and not yet answered (sampled every 0.1 s)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shed_requests = Counter(
            "winequality_requests_shed",
            "Scoring requests answered 503 at capacity, by reason (queue_full, queue_timeout)",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "winequality_queue_wait_seconds",
            "Time admitted scoring requests waited for a slot",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.connections_closed = Counter(
            "winequality_connections_closed",
            "Connections the server closed to protect itself, by reason (header_timeout, "
            "body_too_slow, capacity)",
            ["reason"],
            registry=r,
        )
        self.routed = Counter(
            "winequality_routed_requests",
            "Scoring requests by the model they were routed to (with --canary): champion or "
            "canary (counted before the body is read: refused ones too)",
            ["model"],
            registry=r,
        )
        self.count_inflight: Callable[[], int] | None = None  # set by the app: the admission's
        self._counters: dict[tuple[str, int], Any] = {}
        self._histograms: dict[str, Any] = {}
        self._bin_children: dict[tuple[int, int], Any] = {}  # this version's, bound once
        # Filled by the event loop, drained by `flush` (the loop's timer, a scrape, or the
        # registry follower's thread): deques, whose append and popleft are atomic.
        self._requests: deque[tuple[str, int, float]] = deque()
        self._waits: deque[float] = deque()
        self._shed: deque[str] = deque()
        self._accepted: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self.profile: drift.Profile | None = None
        self.current = ""  # the version whose bins count

    # --- the request path --------------------------------------------------------------------

    def request_done(self, scope: Any, route: str, status: int, seconds: float) -> None:
        self._requests.append((route, status, seconds))

    def accepted(self, features: np.ndarray, outside: np.ndarray | None) -> None:
        self._accepted.append(features)  # counted and binned by `flush`
        if outside is not None:
            for j in np.flatnonzero(outside.any(axis=0)):
                self.outside.labels(FEATURE_NAMES[j]).inc(int(outside[:, j].sum()))

    def admitted(self, waited: float) -> None:
        self._waits.append(waited)

    def shed(self, reason: str) -> None:
        self._shed.append(reason)

    def connection_closed(self, reason: str) -> None:
        self.connections_closed.labels(reason).inc()  # rare (a misbehaving client): at once

    def refused(self, issues: list[Any]) -> None:
        for issue in issues:
            self.problems.labels(issue.column or "", issue.kind).inc(issue.count)

    # --- the model ---------------------------------------------------------------------------

    def model_loaded(self, version: str, profile: drift.Profile | None) -> None:
        # One locked step (the follower's thread calls this while the event loop flushes):
        # the previous model's bins end here, and no flush sees the new version half set.
        with self._lock:
            self._flush_locked()
            self._bin_children = {}
            self.current = version
            self.profile = profile
        self.version.set(float(version) if version.isdigit() else float("nan"))
        self.loaded.set(time.time())

    # --- the shadow (a process of its own) ---------------------------------------------------

    def include(self, folder: Path) -> None:
        """Also expose the multiprocess files in `folder` (the shadow process's metrics), unless
        they are already the workers' shared folder, which every scrape reads."""
        if self.multiprocess and folder == Path(os.environ[MULTIPROC_ENV]):
            return
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(self.registry, path=str(folder))  # type: ignore[no-untyped-call]

    # --- reading -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Fold the queued requests and accepted rows into the metrics."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        requests = take_all(self._requests)
        if requests:
            self._fold_requests(requests)
        self._fold_load()
        accepted = take_all(self._accepted)
        if not accepted:
            return
        rows = sum(features.shape[0] for features in accepted)
        self.rows.inc(rows)
        if self.profile is None:
            return
        # one row per feature, contiguous: counting a strided column costs twice as much
        by_feature = np.empty((len(FEATURE_NAMES), rows))
        np.concatenate([features.T for features in accepted], axis=1, out=by_feature)
        children = self._bin_children
        for j, feature in enumerate(self.profile.features):
            counts = feature.bin_counts(by_feature[j])
            for b in np.flatnonzero(counts).tolist():
                child = children.get((j, b))
                if child is None:
                    child = self.bins.labels(self.current, feature.name, str(b))
                    children[j, b] = child
                child.inc(int(counts[b]))

    def _fold_load(self) -> None:
        if self.count_inflight is not None:
            self.inflight.set(self.count_inflight())
        for reason, count in Tally(take_all(self._shed)).items():
            self.shed_requests.labels(reason).inc(count)
        waits = take_all(self._waits)
        if waits:
            observe = self.queue_wait.observe
            for waited in waits:
                observe(waited)

    def _fold_requests(self, requests: list[tuple[str, int, float]]) -> None:
        # label children are bound once per route (and status): `labels` costs a lookup
        for (route, status), count in Tally((r, s) for r, s, _ in requests).items():
            counter = self._counters.get((route, status))
            if counter is None:
                counter = self._counters[route, status] = self.requests.labels(route, str(status))
            counter.inc(count)
        for route, _, seconds in requests:
            histogram = self._histograms.get(route)
            if histogram is None:
                histogram = self._histograms[route] = self.latency.labels(route)
            histogram.observe(seconds)

    def exposition(self) -> bytes:
        """The text format: this process's metrics, or the whole server's, plus PSI gauges."""
        from prometheus_client import generate_latest

        self.flush()
        registry = self._reading_registry()
        text = generate_latest(registry)
        psi = self.psi(registry)
        if psi:
            lines = [
                "# HELP winequality_feature_psi Population stability index of accepted inputs "
                "against the model's training profile",
                "# TYPE winequality_feature_psi gauge",
            ]
            lines += [f'winequality_feature_psi{{feature="{k}"}} {v:.6f}' for k, v in psi.items()]
            text += ("\n".join(lines) + "\n").encode()
        return text

    def drift_view(self) -> dict[str, Any]:
        """The JSON view: rows seen and PSI with its verdict per feature."""
        self.flush()
        registry = self._reading_registry()
        psi = self.psi(registry)
        rows = self._bin_counts(registry)
        total = int(next(iter(rows.values())).sum()) if rows else 0
        return {
            "rows": total,
            "minimum_rows": MIN_DRIFT_ROWS,  # no verdict before (PSI on a handful is noise)
            "profile": self.profile is not None,
            "features": {
                name: {"psi": value, "verdict": drift.verdict(value)} for name, value in psi.items()
            },
        }

    def psi(self, registry: Any) -> dict[str, float]:
        """PSI per feature, once enough rows were accepted for it to mean something."""
        if self.profile is None:
            return {}
        counts = self._bin_counts(registry)
        if not counts or next(iter(counts.values())).sum() < MIN_DRIFT_ROWS:
            return {}
        result = {}
        for feature in self.profile.features:
            observed = counts.get(feature.name)
            if observed is None or observed.sum() == 0:
                continue
            result[feature.name] = drift.psi(feature.shares, observed / observed.sum())
        return result

    def _bin_counts(self, registry: Any) -> dict[str, np.ndarray]:
        if self.profile is None:
            return {}
        sizes = {f.name: len(f.counts) for f in self.profile.features}
        counts = {name: np.zeros(size) for name, size in sizes.items()}
        for metric in registry.collect():
            if metric.name != "winequality_input_bin":
                continue
            for sample in metric.samples:
                if not sample.name.endswith("_total") or sample.labels["version"] != self.current:
                    continue
                name, index = sample.labels["feature"], int(sample.labels["bin"])
                if name in counts and index < sizes[name]:
                    counts[name][index] += sample.value
        return counts

    def _reading_registry(self) -> Any:
        if not self.multiprocess:
            return self.registry
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry


def take_all(queue: deque[Any]) -> list[Any]:
    """Everything queued so far, for a bunch (appends racing with this land in the next)."""
    return [queue.popleft() for _ in range(len(queue))]
