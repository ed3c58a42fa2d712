"""Shadow scoring, the server's side: sample the accepted rows and hand them to a process of
their own, never waiting for it.

`serve --shadow models:/wine-quality@challenger` answers from the champion only. After the
champion has scored a request, a sampled `fraction` of its rows (with their positions, the
champion's predictions, the request id) is packed into one message and written to a pipe,
without blocking: when the pipe is full, the rows are dropped and counted. The other end is
`serving.shadow_process`, a process that owns everything else: the shadow model (following its
alias, never fatal, retried), the metrics of the comparison and the Parquet log.

Why a process and not a thread: a thread's scoring and log writing take the interpreter from
the event loop (the answers' p99 rose 3.8x with a thread; bench/shadow.py). The process runs
at idle priority, so it takes only CPU time the server leaves; the answers pay one write.

The process lives as long as its pipe's writing end: at a drain the server closes it and waits
(STOP_SECONDS at most) for what was sent to be scored and the log's file closed; if the server
dies, even by SIGKILL, the kernel closes it, and the process does the same on its own and exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from winequality.schema import FEATURE_NAMES
from winequality.serving.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from winequality.serving.follower import ServedModel

__all__ = ["Shadow", "ShadowSettings"]

log = logging.getLogger("winequality.serve")

STOP_SECONDS = 5.0  # at a drain, what was sent is scored within this, else counted dropped
RESTART_SECONDS = 10.0  # a shadow process that ended is started again, at most this often
THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PIPE_BYTES = 1 << 20  # Linux's limit for an unprivileged pipe (/proc/sys/fs/pipe-max-size)

# --- the wire: what one write carries ---------------------------------------------------------
# A message: HEADER (the length of what follows, its kind), then either a champion (JSON: its
# generation, version, logged model id and reference profile's edges, sent once per champion)
# or rows: ROWS_HEADER, the request id (a length byte, ASCII), then three columns: the rows'
# positions in the request (int32), the champion's predictions and the features (float64, a
# row's features together), all little-endian.
HEADER = struct.Struct("<IB")
CHAMPION, ROWS = 1, 2
# champion generation, Unix time scored, champion's seconds for the request (NaN in a request's
# later messages), rows dropped since the last message that went through, rows here
ROWS_HEADER = struct.Struct("<IddII")
ROW_BYTES = 4 + 8 + 8 * len(FEATURE_NAMES)
# rows per message at most (a big request is sent in parts): with the longest request id, a
# message stays within PIPE_BUF (4096 on Linux), which a non-blocking write takes whole or not
CHUNK_ROWS = 36


def _rows_message(
    generation: int,
    request_id: str,
    at: float,
    seconds: float,
    dropped: int,
    rows: np.ndarray,
    champion: np.ndarray,
    features: np.ndarray,
) -> bytes:
    ident = request_id.encode("ascii", "replace")[:255]
    n = len(rows)
    return b"".join(
        (
            HEADER.pack(ROWS_HEADER.size + 1 + len(ident) + n * ROW_BYTES, ROWS),
            ROWS_HEADER.pack(generation, at, seconds, dropped, n),
            bytes((len(ident),)),
            ident,
            rows.astype("<i4", copy=False).tobytes(),
            champion.astype("<f8", copy=False).tobytes(),
            features.astype("<f8", copy=False).tobytes(),
        )
    )


def _champion_message(generation: int, served: ServedModel) -> bytes:
    profile = served.scorer.model.profile
    body = orjson.dumps(
        {
            "generation": generation,
            "version": served.version,
            "model_id": served.scorer.model.model_id or "",
            "edges": [f.edges for f in profile.features] if profile is not None else None,
        }
    )
    return HEADER.pack(len(body), CHAMPION) + body


@dataclass(frozen=True)
class ShadowSettings:
    model_uri: str
    fraction: float = 0.2  # of the accepted rows, sampled row by row
    log_dir: Path | None = None
    log_inputs: bool = False  # the feature values themselves in the log
    queue_bytes: int = PIPE_BYTES  # the pipe's size (~100 bytes a row); more is dropped
    file_seconds: float = 5.0  # a log file is closed this often (when it holds rows)
    file_rows: int = 100_000  # and at this size


class Shadow:
    """The server's end: samples rows, writes them to the shadow process, reads its state."""

    def __init__(
        self,
        settings: ShadowSettings,
        *,
        tracking_uri: str | None,
        refresh: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < settings.fraction <= 1.0:
            raise ValueError("the shadow fraction must be within (0, 1]")
        self.settings, self.tracking_uri, self.refresh = settings, tracking_uri, refresh
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # writes come whole, from whichever thread scored
        self.counts = {"sampled": 0, "dropped": 0}
        self.folder: Path | None = None  # the process's status and (one worker) metrics
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._fd: int | None = None  # the pipe's writing end
        self._pending = b""  # the end of a message a write took only part of: sent first
        self._generation = 0
        self._announced: ServedModel | None = None  # the champion the process knows
        self._unsent_drops = 0  # told to the process with the next message that goes through
        self._written = 0  # rows written to the current process
        self._before = {"scored": 0, "unavailable": 0, "failed": 0}  # earlier processes'
        self._started_at = 0.0
        self._stopping = False

    @property
    def metrics_folder(self) -> Path:
        """Where the shadow process keeps its metrics (prometheus_client's multiprocess
        files): the workers' shared folder, or one of its own that /metrics also reads."""
        shared = os.environ.get(MULTIPROC_ENV)
        if shared:
            return Path(shared)
        assert self.folder is not None, "start() first"
        return self.folder / "metrics"

    # --- the request path: sample and write, never wait --------------------------------------

    def offer(
        self,
        request_id: str,
        features: np.ndarray,
        predictions: np.ndarray,
        served: ServedModel,
        seconds: float,
    ) -> None:
        """After the champion answered: send a sample of the request's rows (its `seconds`
        of scoring are recorded beside the shadow's)."""
        n = len(predictions)
        champion = np.asarray(predictions, dtype=np.float64)
        positions: np.ndarray
        if self.settings.fraction >= 1.0:
            positions = np.arange(n, dtype=np.int32)
        else:
            positions = np.flatnonzero(self._rng.random(n) < self.settings.fraction)
            if not positions.size:
                return
            champion, features = champion[positions], features[positions]
        at = time.time()
        with self._lock:
            self.counts["sampled"] += positions.size
            if self._announced is not served and not self._announce(served):
                self._drop(positions.size)
                return
            for start in range(0, positions.size, CHUNK_ROWS):
                part = slice(start, start + CHUNK_ROWS)
                message = _rows_message(
                    self._generation, request_id, at, seconds if start == 0 else np.nan,
                    self._unsent_drops, positions[part], champion[part], features[part],
                )  # fmt: skip
                if not self._write(message):
                    self._drop(positions.size - start)
                    return
                self._unsent_drops = 0
                self._written += len(positions[part])

    def _announce(self, served: ServedModel) -> bool:
        generation = self._generation + 1
        if not self._write(_champion_message(generation, served)):
            return False
        self._generation, self._announced = generation, served
        return True

    def _drop(self, rows: int) -> None:
        self.counts["dropped"] += rows
        self._unsent_drops += rows

    def _write(self, message: bytes) -> bool:
        """The whole message, or nothing (the pipe is full, or there is no process)."""
        if self._fd is None:
            return False
        # Up to PIPE_BUF bytes (every rows message), a non-blocking write is whole or refused
        # (POSIX). A longer one may be taken in part: its end is kept and sent before anything
        # else, so that the process always reads whole messages.
        try:
            if self._pending:
                self._pending = self._pending[os.write(self._fd, self._pending) :]
                if self._pending:
                    return False
            written = os.write(self._fd, message)
        except (BlockingIOError, BrokenPipeError):  # (a process that died: see `watch`)
            return False
        self._pending = message[written:]
        return True

    # --- the process -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the shadow process (it loads the model itself: the server does not wait)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="winequality-shadow-"))
            self.metrics_folder.mkdir(exist_ok=True)
        (self.folder / "status.json").unlink(missing_ok=True)
        reading, writing = os.pipe()  # (neither end is inherited by other children)
        try:
            with contextlib.suppress(OSError, AttributeError):  # Linux only; else its default
                fcntl.fcntl(writing, fcntl.F_SETPIPE_SZ, self.settings.queue_bytes)
            os.set_blocking(writing, False)
            config = {
                "model_uri": self.settings.model_uri,
                "tracking_uri": self.tracking_uri,
                "refresh": self.refresh,
                "fd": reading,
                "status": str(self.folder / "status.json"),
                "parent": os.getpid(),
                "log_dir": str(self.settings.log_dir) if self.settings.log_dir else None,
                "log_inputs": self.settings.log_inputs,
                "file_seconds": self.settings.file_seconds,
                "file_rows": self.settings.file_rows,
            }
            env = {
                **os.environ,
                MULTIPROC_ENV: str(self.metrics_folder),
                # one thread: a batch is small, and a math library's idle workers spin on
                # the CPU the answers need
                **{name: "1" for name in THREAD_LIMITS},
            }
            # the settings on its stdin, not its command line, which anyone on the machine can
            # read (a tracking URI may hold a password)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "winequality.serving.shadow_process"],
                pass_fds=(reading,),
                stdin=subprocess.PIPE,
                env=env,
            )
            assert self.process.stdin is not None
            with self.process.stdin as settings:
                settings.write(orjson.dumps(config))
        except BaseException:
            os.close(writing)
            raise
        finally:
            os.close(reading)  # the process's now
        self._fd, self._written, self._announced = writing, 0, None
        self._pending = b""
        self._started_at = time.monotonic()

    def watch(self) -> None:
        """A shadow process that ended while the server runs is reported and started again
        (what it held counted failed); called every second by the app."""
        process = self.process
        if process is None or self._stopping or process.poll() is None:
            return
        if time.monotonic() - self._started_at < RESTART_SECONDS:
            return
        with self._lock:
            lost = self._retire()
        log.error(
            "shadow: its process ended (exit code %s); %d rows it held counted failed; "
            "starting it again",
            process.returncode,
            lost,
        )
        self.restarts += 1
        try:
            self.start()
        except Exception:  # said, and tried again at the next watch: serving goes on
            log.exception("shadow: cannot start its process")
            self._started_at = time.monotonic()

    def _retire(self) -> int:
        """Close the pipe and fold the ended process's counts into the earlier ones'; the
        rows written to it and never accounted for are counted failed. Under the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        status = self._status() or {}
        rows: dict[str, int] = status.get("rows", {})
        for outcome in self._before:
            self._before[outcome] += rows.get(outcome, 0)
        lost = max(0, self._written - sum(rows.get(k, 0) for k in self._before))
        self._before["failed"] += lost
        self._written = 0
        return lost

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Close the pipe; the process scores what was sent, closes the log's file and ends
        (within `timeout`, else it is killed and what it held is counted dropped)."""
        self._stopping = True
        process = self.process
        if process is None:
            return
        with self._lock:
            if self._unsent_drops:  # the last drops, for its metric (when there is room)
                none = np.empty(0)
                said = _rows_message(0, "", 0.0, np.nan, self._unsent_drops, none, none, none)
                if self._write(said):
                    self._unsent_drops = 0
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            with self._lock:
                status = self._status() or {}
                done = sum(status.get("rows", {}).get(k, 0) for k in self._before)
                left = max(0, self._written - done)
                self.counts["dropped"] += left
                self._written -= left
            log.warning(
                "shadow: its process did not end within %.0f s and was stopped; %d rows sent "
                "to it were not scored (counted dropped)",
                timeout,
                left,
            )
        with self._lock:
            self._retire()
        self.process = None
        if self.folder is not None:  # (with workers, the metrics are in their shared folder)
            shutil.rmtree(self.folder, ignore_errors=True)

    def flush(self) -> None:
        """After a second signal skipped the drain: close the pipe, and let the process end on
        its own (it scores what it holds and closes the log's file)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # --- what /health says -------------------------------------------------------------------

    def _status(self) -> dict[str, Any] | None:
        """The process's own account (rewritten whole by it after every batch), if any yet."""
        if self.folder is None:
            return None
        try:
            status: dict[str, Any] = orjson.loads((self.folder / "status.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return status

    def state(self) -> dict[str, Any]:
        status = self._status() or {}
        with self._lock:
            counts = dict(self.counts)
            theirs = status.get("rows", {})
            for outcome, before in self._before.items():
                counts[outcome] = before + theirs.get(outcome, 0)
            queued = max(0, self._written - sum(theirs.get(k, 0) for k in self._before))
        process = self.process
        return {
            "model_uri": self.settings.model_uri,
            "model_version": status.get("model_version"),
            "loaded": bool(status.get("loaded")),
            "last_load_failure": status.get("last_load_failure"),
            "fraction": self.settings.fraction,
            "queued_rows": queued,
            "rows": counts,
            "log": str(self.settings.log_dir) if self.settings.log_dir else None,
            "log_rows_lost": status.get("log_rows_lost", 0),
            "process": {
                "pid": process.pid if process is not None else None,
                "running": process is not None and process.poll() is None,
                "restarts": self.restarts,
            },
        }
