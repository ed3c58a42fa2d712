"""The access log: one JSON line per request (time, method, path, status, ms, rows, model
version, request id), as an observer of `serving.recorder`.

A request costs one append of what it did; the lines are formatted and written in bunches
(every FLUSH_SECONDS and at shutdown), off the request's own time.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from winequality.serving.http import REQUEST_ID_KEY, ROWS_KEY, VERSION_KEY
from winequality.serving.metrics import take_all

__all__ = ["LOG_LINE", "AccessLog"]

LOG_LINE = (
    b'{"time":"%s","method":%s,"path":%s,"status":%d,"ms":%.3f,"rows":%s,'
    b'"model_version":%s,"request_id":%s}\n'
)


class AccessLog:
    """JSON lines on a binary stream, written in bunches."""

    FLUSH_SECONDS = 0.1  # short bunches: formatting one holds the event loop ~1 ms

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.pending: deque[tuple[Any, ...]] = deque()
        self._second, self._prefix = -1, b""

    def request_done(self, scope: Any, route: str, status: int, seconds: float) -> None:
        """Queue one line (the recorder's observer call)."""
        self.pending.append(
            (
                time.time(),
                scope["method"],
                scope["path"],
                status,
                seconds,
                scope.get(ROWS_KEY),
                scope.get(VERSION_KEY),
                scope[REQUEST_ID_KEY],
            )
        )

    def flush(self) -> None:
        records = take_all(self.pending)
        if records:
            self.stream.write(b"".join(self._line(record) for record in records))
            self.stream.flush()

    def _line(self, record: tuple[Any, ...]) -> bytes:
        """One queued request, formatted by hand (cheaper than a dict through orjson); what a
        client controls (path, request id) is JSON-escaped by orjson."""
        now, method, path, status, seconds, rows, version, request_id = record
        dumps = orjson.dumps
        return LOG_LINE % (
            self._timestamp(now),
            dumps(method),
            dumps(path),
            status,
            seconds * 1000,
            b"null" if rows is None else b"%d" % rows,
            dumps(version),
            dumps(request_id),
        )

    def _timestamp(self, now: float) -> bytes:
        """ISO 8601 with milliseconds, the date part formatted once a second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = (
                datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()
            )
        return b"%s.%03dZ" % (self._prefix, int((now - second) * 1000))
