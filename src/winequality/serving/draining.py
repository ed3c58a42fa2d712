"""uvicorn's server, stopped the way an orchestrator expects.

The first SIGTERM (or Ctrl+C) turns readiness to 503 at once and keeps serving, with
`Connection: close` on every answer, for the drain delay; then the server stops accepting,
finishes what is in flight (up to the shutdown timeout) and returns: the command exits 0.
A second signal ends at once (`forced`: the command exits 130).

Three of uvicorn's hooks are overridden, each small: `handle_exit` (the signal handler),
`on_tick` (its 0.1 s main-loop tick, which ends the drain) and `capture_signals` (uvicorn's
re-raises the signal once shut down, so the process would die of it, -15 or 143, instead of
exiting 0). pyproject.toml pins the uvicorn range they were written against, and
tests/test_serving_run.py drives them through the real command.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from winequality.serving.lifecycle import Lifecycle

__all__ = ["DrainingServer"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: Any, lifecycle: Lifecycle, drain_delay: float) -> None:
        super().__init__(config)
        self.lifecycle, self.drain_delay = lifecycle, drain_delay
        self.forced = False  # a second signal cut the drain short

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.lifecycle.draining:  # the second signal: end now
            self.forced = self.force_exit = self.should_exit = True
            return
        self.lifecycle.drain()  # readiness is 503 from this instant
        if self.drain_delay <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        since = self.lifecycle.draining_since
        if since is not None and time.monotonic() - since >= self.drain_delay:
            self.should_exit = True  # the drain delay is over: stop accepting, finish
        return bool(await super().on_tick(counter))

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # (a server in a thread, as tests run it: no signals there)
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
