"""Pure ASGI middleware that times every request and tells its observers how it went.

It gives each request an id (the client's `X-Request-Id` when it is up to 128 visible ASCII
characters, else one of ours, unique across processes and restarts) and says it in every
answer's `X-Request-Id` header (what a shadow log's rows are joined on), measures the time to
answer, notes the status sent, and then calls `request_done(scope, route, status, seconds)` on
each observer: the metrics and the access log, which know nothing of each other. The route is
the route's template (`/v2/models/{name}/infer`), as the router matched it, else `other` (a
label per unknown path would let any client grow the metrics without bound).
"""

from __future__ import annotations

import functools
import itertools
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from winequality.serving.http import ANSWERED_KEY, REQUEST_ID_KEY

__all__ = ["Observer", "Recorder", "header", "request_id_of"]


class Observer(Protocol):
    def request_done(self, scope: Any, route: str, status: int, seconds: float) -> None: ...


def header(scope: Any, name: bytes) -> str | None:
    """A request header's value (latin-1, as HTTP/1.1 carries it), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


# A client's id is kept when it is short visible ASCII (what a log and a CSV of true grades
# carry unchanged); any other gets one of ours.
_USABLE_ID = re.compile(r"[\x21-\x7e]{1,128}")
_COUNTER = itertools.count(1)


@functools.cache
def _process_prefix() -> str:
    # random per process: ids never repeat across restarts (a container's server is always
    # PID 1), so a shadow log kept across them still joins one row to one truth
    return f"{uuid.uuid4().hex[:12]}-"


def request_id_of(scope: Any) -> str:
    """The request's id, chosen once and kept in its scope: the client's when usable, else
    a new one of ours (the protocol asks first when it answers a request as it is read)."""
    chosen: str | None = scope.get(REQUEST_ID_KEY)
    if chosen is None:
        given = header(scope, b"x-request-id")
        usable = given is not None and _USABLE_ID.fullmatch(given)
        chosen = given if usable and given else _process_prefix() + str(next(_COUNTER))
        scope[REQUEST_ID_KEY] = chosen
    return chosen


class Recorder:
    def __init__(
        self, app: Any, *, observers: Sequence[Observer], closers: Sequence[Any] = ()
    ) -> None:
        self.app, self.observers = app, tuple(observers)
        self.closers = tuple(closers)  # flushed with the observers when the server stops

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_of(scope)
        answered = scope.get(ANSWERED_KEY)  # refused as it was read (serving.admission)
        status = answered or 500  # unless a response starts: the app failed before answering

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(key.lower() == b"x-request-id" for key, _ in headers):
                    headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if answered is None:
                await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            matched = scope.get("route")  # set by Starlette's router (a 405 matches too)
            route = getattr(matched, "path", "other")
            for observer in self.observers:
                observer.request_done(scope, route, status, seconds)
