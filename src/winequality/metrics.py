"""The server's Prometheus metrics, with the official client library.

One process: the library's default in-memory values. With `--workers N` the server sets
PROMETHEUS_MULTIPROC_DIR before the workers start, so each worker's values live in files that
`MultiProcessCollector` sums at scrape time: the counts are the whole server's, whichever worker
answers `/metrics`.

Drift is exported the same way: every worker counts the inputs it accepted into the reference
profile's bins (counters, summed across workers), and the population stability index per
feature is computed from the summed bins when `/metrics` or `/drift` is read.

The request path costs a few counter increments: label children are bound once, and accepted
rows are only queued (their bins are counted once a second, or at scrape time).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from winequality import drift
from winequality.schema import FEATURE_NAMES

__all__ = ["MIN_DRIFT_ROWS", "MULTIPROC_ENV", "ServerMetrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MIN_DRIFT_ROWS = 100  # accepted rows before PSI is exported
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._queue: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.profile: drift.Profile | None = None
        self.current = ""  # the version whose bins count

    # --- the request path --------------------------------------------------------------------

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def accepted(self, features: np.ndarray, outside: np.ndarray | None) -> None:
        self.rows.inc(features.shape[0])
        if self.profile is not None:
            self._queue.append(features)  # binned later, off the request path
        if outside is not None:
            for j in np.flatnonzero(outside.any(axis=0)):
                self.outside.labels(FEATURE_NAMES[j]).inc(int(outside[:, j].sum()))

    def refused(self, issues: list[Any]) -> None:
        for issue in issues:
            self.problems.labels(issue.column or "", issue.kind).inc(issue.count)

    # --- the model ---------------------------------------------------------------------------

    def model_loaded(self, version: str, profile: drift.Profile | None) -> None:
        self.flush()  # bins of the previous model's profile end here
        self.current = version
        self.version.set(float(version) if version.isdigit() else float("nan"))
        self.loaded.set(time.time())
        self.profile = profile

    # --- reading -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Count the queued inputs into the reference bins."""
        with self._lock:
            queued, self._queue = self._queue, []
            if not queued or self.profile is None:
                return
            batch = np.concatenate(queued)
            for j, feature in enumerate(self.profile.features):
                counts = feature.bin_counts(batch[:, j])
                for b in np.flatnonzero(counts):
                    self.bins.labels(self.current, feature.name, str(int(b))).inc(int(counts[b]))

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
