"""Child processes that never outlive their parent.

A worker process (serve's, sweep's) calls `watch_parent` once: a daemon thread then looks every
half second whether its parent is still the process that started it, and when it is not (the
parent died, even by SIGKILL, and the worker was handed to another process), sends the worker
`signum`, the signal its own code already handles as "stop".
"""

from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["CHECK_SECONDS", "watch_parent"]

CHECK_SECONDS = 0.5


def watch_parent(parent: int, signum: int = signal.SIGTERM) -> threading.Thread:
    """Send this process `signum` once its parent is no longer `parent`."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(CHECK_SECONDS)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, name="winequality-parent-watch", daemon=True)
    thread.start()
    return thread
