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

import itertools
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from winequality.serving.http import ANSWERED_KEY, REQUEST_ID_KEY

__all__ = ["Observer", "Recorder", "header"]


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


class Recorder:
    def __init__(
        self, app: Any, *, observers: Sequence[Observer], closers: Sequence[Any] = ()
    ) -> None:
        self.app, self.observers = app, tuple(observers)
        self.closers = tuple(closers)  # flushed with the observers when the server stops
        self.counter = itertools.count(1)
        # random per process: ids never repeat across restarts (a container's server is always
        # PID 1), so a shadow log kept across them still joins one row to one truth
        self.prefix = f"{uuid.uuid4().hex[:12]}-"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = header(scope, b"x-request-id")
        request_id = given if given and _USABLE_ID.fullmatch(given) else self._new_id()
        scope[REQUEST_ID_KEY] = request_id
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

    def _new_id(self) -> str:
        return self.prefix + str(next(self.counter))
