"""The ASGI app: the route table, written once, and the pieces assembled around it.

    Recorder (request id, timing → metrics, access log; route labels from the router's match)
      └─ CloseWhileDraining (`Connection: close` once a stop was asked)
           └─ Door (bearer token; the probes stay open)
                └─ Admission (scoring requests: at most N at once, a short wait, else 503;
                   │          the request deadline: 504)
                   └─ Starlette (routes; errors → JSON answers)

The table says each route's path, method, handler and whether it is a probe; the Starlette
routes, the door's open paths and the recorder's route labels all come from it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from winequality.errors import WinequalityError
from winequality.schema import FEATURES
from winequality.scoring import Scorer, load_scorer
from winequality.serving.access_log import AccessLog
from winequality.serving.admission import Admission, AdmissionLimits
from winequality.serving.canary import Canary, CanarySettings
from winequality.serving.connections import ConnectionGuard
from winequality.serving.door import Door
from winequality.serving.endpoints_mlflow import MLflowEndpoints
from winequality.serving.endpoints_server import ServerEndpoints
from winequality.serving.endpoints_v2 import V2Endpoints
from winequality.serving.follower import ModelFollower, ServedModel, served_version
from winequality.serving.http import bug, http_error, known_error
from winequality.serving.lifecycle import CloseWhileDraining, Lifecycle
from winequality.serving.metrics import SETTLE_SECONDS, ServerMetrics
from winequality.serving.recorder import Observer, Recorder
from winequality.serving.shadow import Shadow, ShadowSettings

__all__ = ["DEFAULT_MAX_BODY", "RouteEntry", "create_app", "route_table"]

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # a 10,000-row JSON body is about 2.5 MB
SHADOW_WATCH_SECONDS = 1.0  # how often the shadow process is checked for being alive

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class RouteEntry:
    path: str
    method: str
    handler: Handler
    probe: bool = False  # answered without a token, for orchestrators


def route_table(
    mlflow: MLflowEndpoints, v2: V2Endpoints, server: ServerEndpoints, *, metrics: bool
) -> list[RouteEntry]:
    """Every route the server answers."""
    model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    table = [  # the scoring routes first: the router tries them in this order
        RouteEntry("/invocations", "POST", mlflow.invocations),
        *(RouteEntry(f"{path}/infer", "POST", v2.infer) for path in (model, version)),
        RouteEntry("/ping", "GET", mlflow.ping, probe=True),
        RouteEntry("/v2/health/live", "GET", v2.live, probe=True),
        RouteEntry("/v2/health/ready", "GET", v2.ready, probe=True),
        RouteEntry("/v2", "GET", v2.server_metadata),
        *(RouteEntry(path, "GET", v2.model_metadata) for path in (model, version)),
        *(RouteEntry(f"{path}/ready", "GET", v2.model_ready) for path in (model, version)),
        RouteEntry("/health", "GET", server.health, probe=True),
        RouteEntry("/health/live", "GET", v2.live, probe=True),  # (one answer, two paths)
        RouteEntry("/health/ready", "GET", server.ready, probe=True),
        RouteEntry("/metadata", "GET", server.metadata),
        RouteEntry("/version", "GET", server.version),
        RouteEntry("/openapi.json", "GET", server.openapi_json),
        RouteEntry("/", "GET", server.index),
    ]
    if metrics:
        table += [
            RouteEntry("/metrics", "GET", server.metrics_text),
            RouteEntry("/drift", "GET", server.drift_view),
        ]
    return table


def create_app(
    scorer: Scorer,
    *,
    model_uri: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    allow_out_of_range: bool = False,
    refresh: float = 0.0,
    token: str | None = None,
    metrics: bool = True,
    access_log: IO[bytes] | None = None,
    tracking_uri: str | None = None,
    name: str | None = None,
    lifecycle: Lifecycle | None = None,
    admission: AdmissionLimits | None = None,
    connections: ConnectionGuard | None = None,
    shadow: ShadowSettings | None = None,
    canary: CanarySettings | None = None,
) -> Any:
    """The ASGI app serving `scorer` (loaded from `model_uri`), following the registry when
    `refresh` > 0 and the URI names an alias. `name` is the model's name on V2 routes (default:
    the registered name, else wine-quality). The model scores a warm-up batch here, before any
    socket opens: readiness is true from the first probe, until `lifecycle.drain()`.
    `admission` bounds the scoring requests taken at once (serving.admission); the
    `connections` guard (serving.connections) reports what it closes to the metrics.
    `shadow` scores a sample of the rows with a second model in a process of its own
    (serving.shadow), started with the server; a shadow that cannot load is only reported.
    `canary` answers a sticky share of the requests with a second model (serving.canary),
    loaded here: one that cannot load fails the start."""
    model_uri = model_uri or scorer.model.uri
    lifecycle = lifecycle or Lifecycle()
    _warm_up(scorer)
    lifecycle.warm()
    server_metrics = ServerMetrics() if metrics else None
    follower = ModelFollower(
        ServedModel.of(scorer, served_version(model_uri, tracking_uri, scorer.model.model_id)),
        model_uri=model_uri,
        refresh=refresh,
        metrics=server_metrics,
        tracking_uri=tracking_uri,
    )
    routing = None
    if canary is not None:
        canary_scorer = load_scorer(canary.model_uri, tracking_uri)
        _warm_up(canary_scorer)
        canary_version = served_version(
            canary.model_uri, tracking_uri, canary_scorer.model.model_id
        )
        routing = Canary(
            canary,
            ModelFollower(
                ServedModel.of(canary_scorer, canary_version),
                model_uri=canary.model_uri,
                refresh=refresh,
                metrics=None,  # (the served model's gauges are the champion's)
                tracking_uri=tracking_uri,
            ),
            metrics=server_metrics,
        )
    shadowing = None
    if shadow is not None:
        shadowing = Shadow(shadow, tracking_uri=tracking_uri, refresh=refresh)
    mlflow = MLflowEndpoints(
        follower,
        lifecycle,
        max_body_bytes=max_body_bytes,
        allow_out_of_range=allow_out_of_range,
        metrics=server_metrics,
        shadow=shadowing,
        canary=routing,
    )
    v2 = V2Endpoints(
        follower,
        lifecycle,
        name=name,
        max_body_bytes=max_body_bytes,
        allow_out_of_range=allow_out_of_range,
        metrics=server_metrics,
        tracking_uri=tracking_uri,
        shadow=shadowing,
        canary=routing,
    )
    server = ServerEndpoints(
        follower,
        lifecycle,
        metrics=server_metrics,
        model_name=v2.name,
        shadow=shadowing,
        canary=routing,
    )
    table = route_table(mlflow, v2, server, metrics=metrics)
    log = AccessLog(access_log) if access_log is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        tasks = []
        if follower.follows:
            tasks.append(asyncio.create_task(follower.run()))
        if routing is not None and routing.follower.follows:
            tasks.append(asyncio.create_task(routing.follower.run()))
        if server_metrics is not None:  # what requests queued is folded in bunches
            tasks.append(asyncio.create_task(_every(SETTLE_SECONDS, server_metrics.flush)))
        if log is not None:
            tasks.append(asyncio.create_task(_every(AccessLog.FLUSH_SECONDS, log.flush)))
        if shadowing is not None:  # its process loads the model: serving does not wait
            await asyncio.to_thread(shadowing.start)
            if server_metrics is not None:
                server_metrics.include(shadowing.metrics_folder)
            tasks.append(asyncio.create_task(_every(SHADOW_WATCH_SECONDS, shadowing.watch)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if shadowing is not None:  # what was sent is scored, the log's file closed
                await asyncio.to_thread(shadowing.stop)
            if log is not None:
                log.flush()

    starlette_routes = [Route(e.path, e.handler, methods=[e.method]) for e in table]
    routes = Starlette(
        routes=starlette_routes,
        exception_handlers={
            WinequalityError: known_error,
            HTTPException: http_error,
            Exception: bug,
        },
        lifespan=lifespan,
    )
    gate = Admission(
        routes,
        admission or AdmissionLimits(),
        routes=[r for r, e in zip(starlette_routes, table, strict=True) if e.method == "POST"],
        observer=server_metrics,
        pending=None if connections is None else connections.pending_requests,
        max_body=max_body_bytes,
    )
    if connections is not None:
        connections.shed_early = gate.shed_early
        connections.draining = lambda: lifecycle.draining
    if server_metrics is not None:
        server_metrics.count_inflight = lambda: gate.inflight
        if connections is not None:
            connections.report = server_metrics.connection_closed
    inner: Any = gate
    if token:
        inner = Door(inner, token=token, open_paths=[e.path for e in table if e.probe])
    observers: list[Observer] = [o for o in (server_metrics, log) if o is not None]
    closers = [shadowing] if shadowing is not None else []
    return Recorder(CloseWhileDraining(inner, lifecycle), observers=observers, closers=closers)


def _warm_up(scorer: Scorer) -> None:
    """The first batch, before any request (a model that cannot score fails the start)."""
    scorer.predict(np.array([[f.typical for f in FEATURES]] * 8))


async def _every(seconds: float, action: Callable[[], Any]) -> None:
    """Run `action` every `seconds` (metrics' shared bins with several workers: whichever
    worker answers /metrics then sees every worker's drift; the access log's bunches)."""
    while True:
        await asyncio.sleep(seconds)
        done = action()
        if asyncio.iscoroutine(done):
            await done
