"""Slow and idle clients: deadlines for a request's headers and body, and a connection cap.

uvicorn holds a connection that never finishes its headers, or trickles its body, for as long
as the client likes (its only timer is keep-alive, between requests). A few hundred such
connections exhaust the process's open files, and then nothing is accepted, probes included.
So each worker's HTTP protocol is uvicorn's httptools protocol with three additions:

- headers deadline: a request's headers must be complete `header_timeout` seconds after its
  first byte (a new connection: after it opened); else 408 and the connection closes;
- minimum body rate: once headers are in, the body must arrive at `min_body_rate` bytes per
  second on average, after a grace of `header_timeout` seconds (BODY_GRACE when there is no
  header deadline); time the server itself was not reading (uvicorn stops reading a body past
  64 KiB until the app asks for it, and the app may not have got to it yet) does not count
  against the client. A body too slow has its connection closed (the request ends as 499 in
  the access log);
- a connection cap below the open-files limit (that limit minus the files open at start, a
  reserve and the listen backlog, or `max_connections`): when a new connection would pass
  it, the oldest connection whose request started and is not complete (else the oldest one
  that has sent nothing for SILENT_SECONDS, else the oldest idle keep-alive one) is closed,
  not the newcomer, so a probe or a real client still gets in while slow or silent ones
  hold the rest (only when every other connection is being answered or was opened this very
  second, and the backlog's share of files is used up too, is the newcomer turned away).

The protocol also answers a POST the admission gate refuses as it is read (`_answer_now`:
the 503 written in the same turn of the loop, its body then read and dropped), with the
request's id and, while the server drains, `Connection: close`, as the app's answers have.

It counts the POST requests read and not yet answered (`pending`, the admission gate's
measure of the work queued ahead) from when their headers are in; one whose body has been
coming in at its client's pace for SLOW_UPLOAD_SECONDS (the server reading, not holding it
back) stops counting until its body is in: such an upload is not work queued, and counting it
let a few slow uploads make every newcomer look late.

Deadlines are checked by one sweep every SWEEP_SECONDS over the incomplete connections only,
not a timer per connection. The hooks used (`connection_made`, `connection_lost`,
`on_message_begin`, `on_headers_complete`, `on_body`, `on_message_complete`,
`on_response_complete`, and the `transport`, `flow`, `cycle`, `pipeline`, `loop`,
`connections`, `timeout_keep_alive`, `timeout_keep_alive_task` and `server_state` attributes,
and `STATUS_LINE`) are those of the uvicorn version pinned in pyproject.toml;
tests/test_serving_load.py checks they are there and drives them in process and through the
real command.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from winequality.serving.admission import SHED_HEADERS
from winequality.serving.http import ANSWERED_KEY, ARRIVED_KEY
from winequality.serving.recorder import request_id_of

__all__ = ["ConnectionGuard", "ConnectionLimits", "GuardedProtocol", "guarded_protocol"]

SWEEP_SECONDS = 0.25
RESERVE_FILES = 64  # kept for what a worker opens besides connections (model, metrics, logs)
MIN_CONNECTIONS = 16
MAX_BACKLOG = 2048  # uvicorn's default
BODY_GRACE = 5.0  # seconds before a body's rate counts, when there is no header timeout
SILENT_SECONDS = 1.0  # a connection that sent nothing for this long may be closed past the cap
SLOW_UPLOAD_SECONDS = 0.25  # a body coming in for this long is not counted as queued work
TIMEOUT_BODY = b'{"error_code":"REQUEST_TIMEOUT","message":"the request headers took too long"}'

HEADERS, BODY, BUSY, IDLE = "headers", "body", "busy", "idle"  # a connection's phase


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 5.0  # seconds for a request's headers (0: no deadline)
    min_body_rate: int = 8192  # bytes per second a body must keep up (0: no minimum)
    max_connections: int | None = None  # None: from the open-files limit (`budget`)

    def budget(self) -> tuple[int, int]:
        """(connections held at most, listen backlog) for one worker.

        The event loop accepts every pending connection before any protocol sees one, so a
        burst can take as many files as the backlog holds before the cap is enforced: the
        backlog is sized to fit beside the cap within the open-files limit, less what is open
        now and a reserve for the worker's own files.
        """
        soft = _files_limit()
        room = max(2 * MIN_CONNECTIONS, soft - _open_files() - RESERVE_FILES)
        backlog = min(MAX_BACKLOG, max(MIN_CONNECTIONS, room // 4))
        cap = self.max_connections or room - backlog
        return cap, backlog


def _files_limit() -> int:
    try:
        import resource
    except ImportError:  # (Windows: no such limit to keep below)
        return 1 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 32  # (no /proc: a typical count for a worker with its model loaded)


class ConnectionGuard:
    """One worker's connections: which are incomplete, since when, and the sweep that ends
    those past their deadline."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.cap, self.backlog = limits.budget()
        # incomplete requests, oldest first (dicts keep insertion order)
        self.incomplete: dict[GuardedProtocol, None] = {}
        self.idle: dict[GuardedProtocol, None] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.report: Callable[[str], None] | None = None  # the metrics' connection_closed
        # the admission gate's early refusal (serving.admission.Admission.shed_early)
        self.shed_early: Callable[[Any], bytes | None] | None = None
        self.draining: Callable[[], bool] = lambda: False  # (the server's lifecycle)
        self.pending = 0  # POST requests read and not yet answered (slow uploads once in)

    def pending_requests(self) -> int:
        return self.pending

    def closing(self, reason: str) -> None:
        if self.report is not None:
            self.report(reason)

    def track(self, connection: GuardedProtocol, phase: str) -> None:
        self.idle.pop(connection, None)
        if phase in (HEADERS, BODY):
            self.incomplete.pop(connection, None)
            self.incomplete[connection] = None  # (re)entered: now the newest
            if self.sweeper is None:
                loop = asyncio.get_running_loop()
                self.sweeper = loop.call_later(SWEEP_SECONDS, self.sweep)
        else:
            self.incomplete.pop(connection, None)
            if phase == IDLE:
                self.idle[connection] = None

    def forget(self, connection: GuardedProtocol) -> None:
        self.incomplete.pop(connection, None)
        self.idle.pop(connection, None)

    def make_room(self, newcomer: GuardedProtocol, connections: int) -> bool:
        """Past the cap, close one connection: the oldest whose request started, incomplete,
        else the oldest idle keep-alive one. When there is none (the others are being
        answered, or were accepted within SILENT_SECONDS and sent nothing yet, a probe's
        maybe), the newcomer stays if the backlog's share of files allows, else it is the one
        turned away: False."""
        if connections <= self.cap:
            return True
        silent_since = time.monotonic() - SILENT_SECONDS
        candidates = (
            (c for c in self.incomplete if c.got_bytes),
            (c for c in self.incomplete if not c.got_bytes and c.since < silent_since),
            iter(self.idle),
        )
        for pool in candidates:
            oldest = next((c for c in pool if c is not newcomer), None)
            if oldest is not None:
                self.forget(oldest)
                oldest.transport.close()
                self.closing("capacity")
                return True
        # the backlog's share of the files is there for such a burst: until the next read
        return connections <= self.cap + self.backlog

    def sweep(self) -> None:
        now = time.monotonic()
        header_timeout, rate = self.limits.header_timeout, self.limits.min_body_rate
        for connection in list(self.incomplete):
            if connection.phase == HEADERS:
                if header_timeout and now - connection.since > header_timeout:
                    self.forget(connection)
                    connection.time_out_headers()
                    self.closing("header_timeout")
                continue
            # BODY: the client's time is what passed while the server wanted to read
            if not connection.flow.read_paused:
                connection.reading += now - connection.swept
            connection.swept = now
            if connection.reading > SLOW_UPLOAD_SECONDS:
                connection.uncount()  # an upload at its client's pace: not work queued yet
            owed = rate * (connection.reading - (header_timeout or BODY_GRACE))
            if rate and owed > 0 and connection.received < owed:
                self.forget(connection)
                connection.transport.close()  # the app's receive sees the client gone
                self.closing("body_too_slow")
        if self.incomplete:
            loop = asyncio.get_running_loop()
            self.sweeper = loop.call_later(SWEEP_SECONDS, self.sweep)
        else:
            self.sweeper = None


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting each phase of its requests to the guard."""

    guard: ConnectionGuard  # set on the subclass `guarded_protocol` makes

    phase = HEADERS
    since = 0.0  # when the current phase began (monotonic)
    got_bytes = False  # a byte of the current request arrived
    received = 0  # body bytes of the current request
    reading = 0.0  # seconds the server was reading the body (not paused)
    swept = 0.0
    counted = False  # the current request is among the guard's pending ones

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.since = time.monotonic()
        self.guard.track(self, HEADERS)
        if not self.guard.make_room(self, len(self.connections)):
            self.guard.forget(self)  # all the others are answering: the newcomer waits outside
            self.transport.close()
            self.guard.closing("capacity")

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        self.uncount()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.got_bytes = True
        if self.phase != HEADERS:  # a later request on a kept-alive connection
            self.phase, self.since = HEADERS, time.monotonic()
            self.guard.track(self, HEADERS)

    def on_headers_complete(self) -> None:
        now = time.monotonic()
        # when it arrived: its wait for the event loop counts as queueing (serving.admission)
        self.scope[ARRIVED_KEY] = now  # type: ignore[literal-required]
        super().on_headers_complete()
        self.phase, self.since, self.swept = BODY, now, now
        self.received, self.reading = 0, 0.0
        self.guard.track(self, BODY)
        if self.scope["method"] == "POST":
            self._count()
            shed = self.guard.shed_early
            if shed is not None and not self.pipeline:  # (its task is started, not queued)
                body = shed(self.scope)
                if body is not None:
                    self._answer_now(503, body, SHED_HEADERS)

    def _answer_now(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer the request just read from here, in this turn of the loop: its task, when
        it runs, only records it (serving.recorder); its body is read and dropped."""
        cycle = self.cycle
        self.scope[ANSWERED_KEY] = status  # type: ignore[literal-required]
        request_id = request_id_of(self.scope)  # (kept in the scope: the recorder logs it)
        if self.guard.draining():
            cycle.keep_alive = False  # as the app's answers while draining: clients go elsewhere
        closing = [] if cycle.keep_alive else [(b"connection", b"close")]
        named = [(b"x-request-id", request_id.encode("latin-1"))]
        self._write_answer(status, body, [*headers, *named, *closing])
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        # (not closed yet even when not kept alive: closing with the body unread would reset
        # the connection, and a client still sending would lose the answer; on_message_complete
        # closes it once the body is in, and the sweep holds that body to the minimum rate)
        cycle.on_response()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self.received += len(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle.response_complete:  # answered early (503, 413…): the body was dropped
            if not self.cycle.keep_alive:  # (Connection: close was said: now that it is read)
                self.transport.close()
                return
            self._idle()
            if self.timeout_keep_alive_task is None and not self.transport.is_closing():
                # (uvicorn's timer was cancelled by the body's bytes and is not set again)
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self._close_if_idle
                )
            return
        self.phase = BUSY
        self.guard.track(self, BUSY)
        if self.scope["method"] == "POST":
            self._count()  # (again, if it was a slow upload)

    def _count(self) -> None:
        if not self.counted:
            self.counted = True
            self.guard.pending += 1

    def uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.guard.pending -= 1

    def on_response_complete(self) -> None:
        self.uncount()
        pipelined = bool(self.pipeline)  # (super() starts the next one)
        super().on_response_complete()
        if self.phase == BUSY and not pipelined:
            self._idle()

    def _close_if_idle(self) -> None:
        """uvicorn's keep-alive timeout, unless a new request began meanwhile (its bytes
        may have come in the same read as the end of the dropped body)."""
        if self.phase == IDLE and not self.transport.is_closing():
            self.transport.close()

    def _idle(self) -> None:
        self.phase, self.got_bytes = IDLE, False
        self.guard.track(self, IDLE)

    def time_out_headers(self) -> None:
        """408 to a client that sent part of a request (nothing to one that sent nothing: a
        browser's speculative connection), then close."""
        between = self.cycle is None or self.cycle.response_complete  # (not mid-answer)
        if self.got_bytes and between and not self.transport.is_closing():
            self._write_answer(408, TIMEOUT_BODY, [(b"connection", b"close")])
        self.transport.close()

    def _write_answer(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole JSON answer written by the protocol itself (no ASGI cycle runs it)."""
        fields = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        content = [STATUS_LINE[status]]
        for name, value in fields:
            content += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*content, b"\r\n", body]))


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedProtocol]:
    """The protocol class uvicorn builds each connection with (`Config(http=...)`)."""
    return type("WinequalityHttpProtocol", (GuardedProtocol,), {"guard": guard})
