"""Liveness, readiness and the drain: what an orchestrator is told, and when.

- live: the process answers (`/health/live`, `/v2/health/live`), whatever else holds;
- ready: the model is loaded and has scored a warm-up batch, and no stop was asked
  (`/health/ready`, `/v2/health/ready`, and MLflow's `/ping`, which means "the model is
  loaded" and so follows readiness): 503 otherwise;
- draining: a stop was asked (SIGTERM, Ctrl+C). Readiness turns 503 at once, so load balancers
  and kubelets stop sending; every answer carries `Connection: close`, so keep-alive clients
  reconnect elsewhere; the server keeps serving until its drain delay is over, then stops
  accepting and finishes what is in flight (`serving.run`).

`CloseWhileDraining` is the pure ASGI piece that adds the header.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["CloseWhileDraining", "Lifecycle"]


class Lifecycle:
    """One worker process's state, as its probes report it."""

    def __init__(self) -> None:
        self.warmed_up = False
        self.draining_since: float | None = None  # time.monotonic() of the stop request

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    @property
    def ready(self) -> bool:
        return self.warmed_up and self.draining_since is None

    def warm(self) -> None:
        """The model has scored its warm-up batch."""
        self.warmed_up = True

    def drain(self) -> None:
        """A stop was asked: readiness turns 503 from now on (once; later calls keep the time)."""
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def state(self) -> dict[str, Any]:
        return {"ready": self.ready, "draining": self.draining}


class CloseWhileDraining:
    """While draining, every HTTP answer says `Connection: close`."""

    def __init__(self, app: Any, lifecycle: Lifecycle) -> None:
        self.app, self.lifecycle = app, lifecycle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.lifecycle.draining:
            await self.app(scope, receive, send)
            return

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)
