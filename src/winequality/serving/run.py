"""Running the server: uvicorn in this process, or N worker processes of our own sharing one
socket.

With `--workers N` the command binds the socket, then starts N worker processes (spawned: a
fresh interpreter, no state forked from the command) and hands each the socket and its settings
as arguments: nothing travels through the environment, the bearer token included. Each worker
loads the model, keeps its Prometheus values in a shared folder that `/metrics` sums (the
variable the client library reads is set in the worker's own environment, before the library
is imported), and stops when the command stops, or when the command is gone (killed by
SIGKILL): it notices that its parent changed and shuts down as SIGTERM would. Every server
drains on the first signal and exits 0, or 130 on a second (`serving.draining`). A worker that
ends unbidden (killed, crashed) makes the command drain the others and exit 1: its
orchestrator then starts a whole one again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from winequality.errors import ParameterError
from winequality.processes import watch_parent
from winequality.scoring import Scorer, load_scorer
from winequality.serving import heap
from winequality.serving.admission import AdmissionLimits
from winequality.serving.app import DEFAULT_MAX_BODY, create_app
from winequality.serving.canary import CanarySettings
from winequality.serving.connections import ConnectionGuard, ConnectionLimits, guarded_protocol
from winequality.serving.lifecycle import Lifecycle
from winequality.serving.shadow import ShadowSettings

__all__ = ["ServerSettings", "check_port", "serve"]


@dataclass(frozen=True)
class ServerSettings:
    """What every worker needs to build the same app (pickled to spawned workers)."""

    model_uri: str
    max_body_bytes: int = DEFAULT_MAX_BODY
    allow_out_of_range: bool = False
    refresh: float = 30.0
    token: str | None = dataclasses.field(default=None, repr=False)  # never in a log line
    metrics: bool = True
    access_log: bool = True
    tracking_uri: str | None = None
    name: str | None = None  # the model's name on V2 routes
    drain_delay: float = 0.0  # seconds served with readiness 503 after SIGTERM
    shutdown_timeout: int = 30  # then at most this many seconds for what is in flight
    admission: AdmissionLimits = dataclasses.field(
        default_factory=AdmissionLimits
    )  # scoring requests at once, queue, deadline
    connections: ConnectionLimits = dataclasses.field(
        default_factory=ConnectionLimits
    )  # slow clients, the connection cap
    shadow: ShadowSettings | None = None  # a second model scoring a sample, off the path
    canary: CanarySettings | None = None  # a second model answering a sticky share

    def app(
        self, scorer: Scorer, lifecycle: Lifecycle, connections: ConnectionGuard | None = None
    ) -> Any:
        return create_app(
            scorer,
            model_uri=self.model_uri,
            max_body_bytes=self.max_body_bytes,
            allow_out_of_range=self.allow_out_of_range,
            refresh=self.refresh,
            token=self.token,
            metrics=self.metrics,
            access_log=sys.stderr.buffer if self.access_log else None,
            tracking_uri=self.tracking_uri,
            name=self.name,
            lifecycle=lifecycle,
            admission=self.admission,
            connections=connections,
            shadow=self.shadow,
            canary=self.canary,
        )

    def server(self, scorer: Scorer, host: str, port: int) -> Any:
        """The app, in a uvicorn server that drains (serving.draining)."""
        from winequality.serving.draining import DrainingServer

        lifecycle = Lifecycle()
        guard = ConnectionGuard(self.connections)  # (its budget counts the files open now)
        app = self.app(scorer, lifecycle, guard)
        config = _uvicorn_config(
            app,
            host,
            port,
            self.shutdown_timeout,
            protocol=guarded_protocol(guard),
            backlog=guard.backlog,
        )
        return DrainingServer(config, lifecycle, self.drain_delay)


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address another process already listens on.

    Checked before the model loads, so a busy port is said at once rather than after loading.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ParameterError(
                f"cannot listen on {host}:{port}: {reason}; choose another port with --port"
            ) from None


def _uvicorn_config(
    app: Any,
    host: str,
    port: int,
    shutdown_timeout: int = 30,
    *,
    protocol: Any = "httptools",
    backlog: int = 2048,
) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # ours: one JSON line per request
        timeout_graceful_shutdown=shutdown_timeout,
        http=protocol,  # uvicorn's httptools protocol with deadlines (serving.connections)
        ws="none",  # no WebSocket route: an upgrade request is an ordinary one
        backlog=backlog,
        loop="auto",  # uvloop where it is installed (not on Windows)
    )


def serve(
    settings: ServerSettings,
    *,
    scorer: Scorer | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
) -> int:
    """Load the model (failing fast on a bad URI) and serve it until SIGTERM/SIGINT; return
    the command's exit status.

    The first signal drains (readiness 503 at once, serving on for `settings.drain_delay`,
    then in-flight requests finished within `settings.shutdown_timeout`): 0. A second signal
    ends at once: 130. With workers, every worker does the same; 0 only when all did.
    """
    if workers <= 1:
        scorer = scorer or load_scorer(settings.model_uri, settings.tracking_uri)
        server = settings.server(scorer, host, port)
        heap.settle()  # the model and its libraries are loaded for good
        try:
            server.run()
        finally:
            _flush(server)
        if not server.started:  # it could not listen (uvicorn has logged why)
            raise SystemExit(3)
        return FORCED if server.forced else 0
    import multiprocessing
    import tempfile

    listening = _uvicorn_config(None, host, port).bind_socket()
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="winequality-metrics-") as folder:
        children = [
            spawn.Process(
                target=_worker,
                args=(settings, folder, listening, host, port, os.getpid()),
                name=f"winequality-worker-{i}",
            )
            for i in range(workers)
        ]
        with _forwarding_signals(children) as supervisor:
            for child in children:
                supervisor.start(child)
            listening.close()  # the workers hold it now
            unbidden = supervisor.wait()
    codes = [supervisor.exit_status(child) for child in children]
    if unbidden:
        return 1  # (whatever the others did: one was lost)
    if all(code == 0 for code in codes):
        return 0
    return FORCED if FORCED in codes else 1


FORCED = 130  # a second signal: the drain was cut short (128 + SIGINT, as shells report it)


def _stop_while_loading(signum: int, frame: Any) -> None:
    raise SystemExit(FORCED)


def _flush(server: Any) -> None:
    """What the observers queued (access-log lines, metrics), written even when a second
    signal skipped the app's own shutdown."""
    for observer in getattr(server.config.app, "observers", ()):
        observer.flush()
    for closer in getattr(server.config.app, "closers", ()):  # the shadow log's open file
        closer.flush()


class _Supervisor:
    """The workers' parent: each signal to the command reaches every worker as SIGTERM (the
    first drains, a second ends at once), a worker started after a signal included; a worker
    that ends unbidden (killed, crashed) stops the others, so the command exits non-zero and
    its orchestrator starts it again rather than leaving it serving at part strength."""

    def __init__(self, children: list[Any]) -> None:
        self.children = children
        self.signals = 0  # signals the command received (each passed on once)

    def forward(self, signum: int, frame: Any) -> None:
        self.signals += 1
        for child in self.children:
            self._stop(child, 1)

    def start(self, child: Any) -> None:
        child.start()
        self._stop(child, min(self.signals, 2))  # what it missed while not yet started

    def wait(self) -> bool:
        """Until every worker has ended; True when one ended without being told to."""
        from multiprocessing.connection import wait

        running = {child.sentinel: child for child in self.children}
        unbidden = False
        while running:
            for sentinel in wait(list(running)):
                child = running.pop(sentinel)
                child.join()
                if not self.signals and not unbidden:
                    unbidden = True
                    self.signals = 1  # the others drain as on SIGTERM
                    for other in running.values():
                        self._stop(other, 1)
        return unbidden

    def exit_status(self, child: Any) -> int:
        """A worker's exit code; one killed by our SIGTERM before it could install a handler
        (still starting: it had served nothing) stopped while loading, as the command does."""
        code: int = child.exitcode
        return FORCED if self.signals and code == -signal.SIGTERM else code

    @staticmethod
    def _stop(child: Any, times: int) -> None:
        for _ in range(times):
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)


@contextlib.contextmanager
def _forwarding_signals(children: list[Any]) -> Any:
    """SIGTERM and SIGINT to the command reach every worker as SIGTERM (each then drains)."""
    supervisor = _Supervisor(children)
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, supervisor.forward) for sig in stops}
    try:
        yield supervisor
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(
    settings: ServerSettings,
    metrics_folder: str,
    listening: socket.socket,
    host: str,
    port: int,
    parent: int,
) -> None:
    """One worker process: load the model, serve on the shared socket until told to stop."""
    from winequality.serving.metrics import MULTIPROC_ENV

    # A process group of its own: signals reach a worker through the command only. A
    # terminal's Ctrl+C goes to the whole foreground group, so it would otherwise arrive twice
    # (directly, and forwarded), and a second signal means "stop now".
    os.setpgid(0, 0)

    # This process's own environment, before prometheus_client is imported: the library
    # picks its multiprocess value class from it at import.
    os.environ[MULTIPROC_ENV] = metrics_folder

    # Told to stop while the model loads (the server's own handlers are not installed yet):
    # end as the single process does then, not killed by the signal (exit -15).
    signal.signal(signal.SIGTERM, _stop_while_loading)
    scorer = load_scorer(settings.model_uri, settings.tracking_uri)
    server = settings.server(scorer, host, port)
    watch_parent(parent, signal.SIGTERM)  # SIGKILLed command: drain and stop as on SIGTERM
    heap.settle()
    try:
        server.run(sockets=[listening])
    finally:
        # (the server put back the loading-time handler: a late signal must not cut the flush)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _flush(server)
    if server.forced:
        sys.exit(FORCED)
