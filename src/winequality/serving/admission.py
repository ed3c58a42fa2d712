"""Pure ASGI middleware: how many scoring requests a worker takes at once, and what the rest get.

A worker scores at most `max_inflight` requests at a time (a request is in flight from the
moment it is admitted until its answer is sent: its body read, decoded, scored). The rest wait,
first come first served, but not for long: one that has waited, or would wait, longer than
the allowed wait is answered at once, 503 with `Retry-After` and the protocol's JSON error body
(its client can try another replica now). Scoring runs without yielding, so the admitted
requests share one event loop: a long queue would only add the same wait to every answer.

A request's wait counts from when its headers were read (`serving.connections` stamps it), not from
when this middleware first sees it: on one event loop, requests read in the same turn wait as ready
tasks, and before that, unread in the kernel's buffers, for about as long as the loop runs late.
That lateness is measured by a tick every TICK_SECONDS and added when the requests already read
would take longer than the allowed wait to get through. The wait is held against a request only
when it waited behind work (requests crowd in, one is in flight, or others were taken since it
arrived): a lone request late because the loop paused, for a garbage collection say, is not
overload, and a free slot takes it however late. The allowed wait is `max_queue_wait`, or twice
the recent service time if that is longer, so that a request is not refused for waiting out the one
before it (large bodies, a few clients). One that has waited too long is shed as `queue_timeout`;
one whose expected wait in the queue (its place times the service time, over the slots) is already
too long, as `queue_full`. The body is read before a slot is taken: a slot is for the work that
does not yield (decode, score, answer).

Most refusals under overload are made earlier still: `serving.connections` asks `shed_early`
as each POST's headers are read, and when the work of the requests read before it (plus the
loop's lateness) already passes the allowed wait, the 503 is written there and then, before
the turn's scoring, instead of after it; its task only records it (`serving.recorder`).

Only scoring requests (POST) are gated: probes, metadata and `/metrics` cost little and must
answer while the scoring routes are saturated, and they are neither counted nor shed.

The request deadline (`request_timeout`) runs from arrival and covers the body read and the
wait for a slot: past it the answer is 504 (RequestTimeout), with
`Connection: close`, since the rest of the body would otherwise still be on its way. Scoring
itself runs without yielding, so a deadline could not interrupt it anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.routing import Match

from winequality.errors import RequestTimeout
from winequality.serving.http import ARRIVED_KEY, error_body, is_v2, send_json, v2_error_body

__all__ = ["Admission", "AdmissionLimits", "ShedObserver"]

RETRY_AFTER_SECONDS = 1
OVERLOADED = "the server is at capacity; try again in a moment (Retry-After)"
SHED_HEADERS = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
SHED_BODY = error_body("OVERLOADED", OVERLOADED)
V2_SHED_BODY = v2_error_body(OVERLOADED)
LATE = "the request was not received in full within the server's request timeout"
SMOOTHING = 0.1  # weight of the newest request in the running estimate of the service time
TICK_SECONDS = 0.005  # how often the event loop's lateness is measured


@dataclass(frozen=True)
class AdmissionLimits:
    max_inflight: int = 4  # scoring requests per worker at once
    max_queue_wait: float = 0.005  # seconds a request may wait (at least twice its service time)
    request_timeout: float = 30.0  # seconds from arrival to the body fully read; 0: none

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")


class ShedObserver(Protocol):
    def shed(self, reason: str) -> None: ...

    def admitted(self, waited: float) -> None: ...


class Admission:
    def __init__(
        self,
        app: Any,
        limits: AdmissionLimits,
        *,
        routes: Sequence[Any] = (),
        observer: ShedObserver | None = None,
        pending: Callable[[], int] | None = None,
        max_body: int = 8 * 1024 * 1024,
    ) -> None:
        self.app, self.limits, self.observer = app, limits, observer
        self.max_body = max_body  # read ahead at most this much (the routes' own limit)
        self.routes = tuple(routes)  # to name a shed request's route (the router never saw it)
        self.inflight = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.service = 0.0  # running estimate of a request's time from admission to answer
        self.last_admitted = 0.0  # when the latest request was taken (monotonic)
        self.lag = 0.0  # how late the event loop ran its last tick: time unread in the kernel
        self.ticker: asyncio.TimerHandle | None = None
        # requests read and not yet answered, admitted or not (serving.connections counts them)
        self.pending: Callable[[], int] | None = pending

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        arrived = scope.get(ARRIVED_KEY, now)  # (stamped by serving.connections' protocol)
        timeout = self.limits.request_timeout
        deadline = arrived + timeout if timeout > 0 else None
        if self.ticker is None:
            self._tick(now)
        # its wait so far: since its headers were read, and before that, unseen in the
        # kernel's buffers, about as long as the event loop is late, when requests crowd in
        # (those already read would take longer than the allowed wait to get through)
        allowed = self._allowed_wait()
        crowded = self._crowded(allowed)
        waited = now - arrived + (self.lag if crowded else 0.0)
        # Held against it only when it waited behind work (requests crowd in, one is in
        # flight, or others were taken since it arrived): late for want of capacity. A request
        # late because the loop paused (a collection, a model swap, a throttled CPU) with no
        # work before it is not overload, and a free slot takes it.
        behind_work = crowded or self.inflight > 0 or self.last_admitted > arrived
        held = waited if behind_work else 0.0
        if held > allowed:  # late already: refused before its body is read
            await self._refuse(scope, send, "queue_timeout", deadline)
            return
        # The body is read before a slot is taken: a slot is for the work that does not
        # yield (decode, score, answer), so a client trickling its body holds no slot.
        try:
            prefetched = await self._prefetch(receive, deadline)
        except RequestTimeout as late:
            await _send_error(scope, send, 504, late.error_code, late.summary)
            return
        replay = _replaying(prefetched, receive)
        read = time.monotonic()  # (the body's time is the client's, not a wait)
        if self.inflight < self.limits.max_inflight and not self._queued():
            self.inflight += 1
        elif not await self._wait_for_slot(scope, send, held, allowed, deadline):
            return
        admitted = self.last_admitted = time.monotonic()
        if self.observer is not None:
            self.observer.admitted(waited + admitted - read)
        try:
            await self.app(scope, replay, send)
        finally:
            self._release(admitted)

    async def _prefetch(self, receive: Any, deadline: float | None) -> list[Any]:
        """The body's messages, up to `max_body` bytes (past it, or at a disconnect, the rest
        is left to the route, which answers 413 or records the client gone)."""
        messages, size = [], 0
        while True:
            if deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout(LATE) from None
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages
            size += len(message.get("body", b""))
            if size > self.max_body:
                return messages

    def _queued(self) -> int:
        return sum(not slot.done() for slot in self.waiting)

    def shed_early(self, scope: Any) -> bytes | None:
        """Asked by `serving.connections` as a POST's headers are read, before its task runs:
        the 503 body to send at once when its wait is already sure to pass the allowed one
        (the work of the requests read before it, plus the loop's lateness when crowded), so
        the refusal does not wait for the turn's scoring; else None (the gate decides later)."""
        if self.pending is None or self.ticker is None:
            return None
        allowed = self._allowed_wait()
        ahead = (self.pending() - 1) * self.service  # the work read before it
        if not self._crowded(allowed) or ahead + self.lag <= allowed:
            return None
        return self._shed_answer(scope, "queue_full")

    def _crowded(self, allowed: float) -> bool:
        """The requests already read would take longer than the allowed wait to get through."""
        return self.pending is not None and self.pending() * self.service > allowed

    def _allowed_wait(self) -> float:
        """`max_queue_wait`, or twice the time a request takes once admitted if longer: a
        request is not refused for waiting out the one before it (large bodies, a few
        clients), and under sustained overload the wait stays a small multiple of the work."""
        return max(self.limits.max_queue_wait, 2 * self.service)

    async def _wait_for_slot(
        self, scope: Any, send: Any, waited: float, allowed: float, deadline: float | None
    ) -> bool:
        """Queue for a slot; False when the request was answered instead (503 or 504)."""
        patience = allowed - waited
        if (self._queued() + 1) * self.service / self.limits.max_inflight > patience:
            await self._shed(scope, send, "queue_full")
            return False
        if deadline is not None:
            patience = min(patience, deadline - time.monotonic())
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(slot)
        try:
            async with asyncio.timeout(patience):
                await slot  # the slot is handed over by `_release`: `inflight` is unchanged
            return True
        except TimeoutError:
            if slot.done() and not slot.cancelled():  # handed over as the time ran out
                return True
        except asyncio.CancelledError:  # (the server stopping): a slot handed over passes on
            if slot.done() and not slot.cancelled():
                self._release(time.monotonic())
            raise
        finally:
            if not slot.done():
                slot.cancel()  # (a waiter cancelled by its client: `_release` skips it)
        await self._refuse(scope, send, "queue_timeout", deadline)
        return False

    async def _refuse(self, scope: Any, send: Any, reason: str, deadline: float | None) -> None:
        """503 (shed), or 504 when the request's own deadline has passed meanwhile."""
        if deadline is not None and time.monotonic() >= deadline:
            late = RequestTimeout(LATE)
            await _send_error(scope, send, 504, late.error_code, late.summary)
        else:
            await self._shed(scope, send, reason)

    def _tick(self, due: float) -> None:
        now = time.monotonic()
        self.lag = max(0.0, now - due)
        if not self.inflight and (self.pending is None or not self.pending()):
            self.ticker = None  # idle: no need to wake up; the next request starts it again
            return
        loop = asyncio.get_running_loop()
        self.ticker = loop.call_later(TICK_SECONDS, self._tick, now + TICK_SECONDS)

    def _release(self, admitted: float) -> None:
        self.service += SMOOTHING * (time.monotonic() - admitted - self.service)
        while self.waiting:
            slot = self.waiting.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes to the first waiter still waiting
                return
        self.inflight -= 1

    async def _shed(self, scope: Any, send: Any, reason: str) -> None:
        await send_json(send, 503, self._shed_answer(scope, reason), SHED_HEADERS)

    def _shed_answer(self, scope: Any, reason: str) -> bytes:
        """A refusal counted, its route named (the router never saw it), and its body."""
        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                scope["route"] = route
                break
        if self.observer is not None:
            self.observer.shed(reason)
        return V2_SHED_BODY if is_v2(scope["path"]) else SHED_BODY


def _replaying(messages: list[Any], receive: Any) -> Any:
    """`receive` that first gives back what was read ahead, then reads on."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_error(scope: Any, send: Any, status: int, code: str, message: str) -> None:
    body = v2_error_body(message) if is_v2(scope["path"]) else error_body(code, message)
    await send_json(send, status, body, [(b"connection", b"close")])
