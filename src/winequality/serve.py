"""The REST server: MLflow's scoring protocol, decoded and validated by `codecs`.

HTTP only: content types, body limits, status codes and error bodies, the OpenAPI document and
the prediction page (both package resources, completed from the feature schema at start).
Decoding and validation are `winequality.codecs` and the feature schema; this module holds no
copy of either.

Errors are JSON `{"error_code", "message", "errors": [{"row", "column", "reason"}]}`, mapped in
one handler from the `WinequalityError` that carries each status: 400 for a body that is not
the protocol, 422 for values that break the schema, 413 past the body limit, 415 for other
content types. Anything else is a bug: logged with a request id, answered 500 with that id and
no trace.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import html
import itertools
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, cached_property
from importlib.metadata import version
from importlib.resources import files
from typing import IO, Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from winequality import codecs, drift, registry, schema
from winequality.errors import (
    ParameterError,
    PayloadTooLarge,
    UnsupportedMedia,
    WinequalityError,
    first_line,
)
from winequality.metrics import MULTIPROC_ENV, SETTLE_SECONDS, ServerMetrics, take_all
from winequality.predict import Scorer
from winequality.schema import FeatureIssue, Validation

__all__ = [
    "DEFAULT_MAX_BODY",
    "AccessLog",
    "Door",
    "Endpoints",
    "ModelFollower",
    "ServedModel",
    "app_from_environment",
    "check_port",
    "create_app",
    "openapi_document",
    "render_page",
    "serve",
    "served_version",
]

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # a 10,000-row JSON body is about 2.5 MB
DRAIN_LIMIT = 64 * 1024 * 1024  # read and drop this much of a body that is too large
JSON = codecs.JSON
ENV_PREFIX = "WINEQUALITY_SERVE_"
log = logging.getLogger("winequality.serve")


def _error_body(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    return orjson.dumps({"error_code": code, "message": message, "errors": errors or []})


def _media_type(request: Request) -> str:
    """The body's media type; 415 for anything but JSON, CSV or Parquet in UTF-8."""
    raw = request.headers.get("content-type", "")
    mime, *parameters = (part.strip() for part in raw.split(";"))
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset":
            raise UnsupportedMedia(f"unrecognised content type parameter {key.strip()!r}")
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMedia("only UTF-8 bodies are supported")
    mime = mime.lower()
    if mime not in codecs.MEDIA_TYPES:
        raise UnsupportedMedia(
            f"content type {raw or '(none)'!r} is not supported; send {JSON} "
            f"(MLflow's scoring protocol), {codecs.CSV} or {codecs.PARQUET}"
        )
    return mime


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing one past `limit` bytes.

    A client that sends its whole body before reading the answer would see the connection
    reset if the server answered 413 and closed mid-body; so the rest is read and dropped
    first (up to DRAIN_LIMIT, past which the connection is closed anyway).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_LIMIT:
            await _drain(request)
        raise PayloadTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request)
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request) -> None:
    drained = 0
    async for chunk in request.stream():
        drained += len(chunk)
        if drained > DRAIN_LIMIT:
            return


def _warning_header(issues: list[FeatureIssue], extra: str = "") -> dict[str, str]:
    texts = [i.describe() for i in issues[:5]] + ([extra] if extra else [])
    if not texts:
        return {}
    text = "; ".join(texts)
    return {"X-Winequality-Warnings": text.encode("ascii", "replace").decode()[:1000]}


# ---------------------------------------------------------------------------------------------
# The model being served, and following the registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One loaded model and what the server says about it; replaced whole, never changed."""

    scorer: Scorer
    version: str  # the registry version, or the model id when the URI names no version
    loaded_at: float

    @classmethod
    def of(cls, scorer: Scorer, version: str | None = None) -> ServedModel:
        return cls(scorer, version or scorer.model_id or "local", time.time())

    @cached_property
    def metadata(self) -> bytes:
        document = {
            **self.scorer.metadata(),
            "version": self.version,
            "loaded_at": _iso(self.loaded_at),
            "reference_profile": self.scorer.profile is not None,
        }
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def served_version(
    model_uri: str, tracking_uri: str | None = None, model_id: str | None = None
) -> str | None:
    """The registry version of the model loaded from a `models:/` URI (None for other URIs).

    For an alias, the version it points to now; if that is not the model loaded (`model_id`:
    the alias moved in between), the version that holds the loaded model, so the answers never
    name a version they were not scored by (the follower then loads the alias's new target).
    """
    parts = registry.RegistryUri.parse(model_uri)
    if parts is None:
        return None
    if parts.version is not None:
        return parts.version
    import mlflow

    assert parts.alias is not None
    client = mlflow.MlflowClient(tracking_uri)
    version = registry.alias_version(client, parts.name, parts.alias)
    if model_id is None or version is None:
        return version
    source = registry.registered_from(client.get_model_version(parts.name, version))
    if source is None or source == model_id:  # (None: a version that cannot tell)
        return version
    return registry.version_holding(client, parts.name, model_id)


class ModelFollower:
    """Holds the model being served; for `models:/name@alias`, follows the alias.

    Every `refresh` seconds it asks the registry where the alias points. When it moved, the new
    version is loaded on a thread (requests go on meanwhile), checked like any served model
    (skops allow-list, signature = the feature schema), and swapped in with one assignment:
    a request takes `current` once and finishes on that model. A version that fails to load
    is refused: the old one keeps serving, and the failure shows in /health, the log and the
    `winequality_model_reloads_total{outcome="failed"}` metric; it is not retried until the
    alias moves again.
    """

    def __init__(
        self,
        served: ServedModel,
        *,
        model_uri: str,
        refresh: float,
        metrics: ServerMetrics | None,
        tracking_uri: str | None = None,
    ) -> None:
        self.current = served
        self.model_uri, self.refresh, self.metrics = model_uri, refresh, metrics
        self.tracking_uri = tracking_uri
        self.parts = registry.RegistryUri.parse(model_uri)
        self.failure: dict[str, Any] | None = None
        self._refused: str | None = None
        if metrics is not None:
            metrics.model_loaded(served.version, served.scorer.profile)

    @property
    def follows(self) -> bool:
        return self.refresh > 0 and self.parts is not None and self.parts.alias is not None

    async def run(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.refresh)
            await asyncio.to_thread(self.check)

    def check(self) -> bool:
        """Ask the registry once; load and swap if the alias moved. True if swapped."""
        from winequality.predict import load_scorer

        assert self.parts is not None
        assert self.parts.alias is not None
        try:
            import mlflow

            version = registry.alias_version(
                mlflow.MlflowClient(self.tracking_uri), self.parts.name, self.parts.alias
            )
        except Exception as exc:  # the registry is away: keep serving, say so
            self._failed(None, f"cannot reach the registry: {first_line(exc)}")
            return False
        if version is None or version in (self.current.version, self._refused):
            return False
        uri = f"models:/{self.parts.name}/{version}"
        try:
            scorer = load_scorer(uri, self.tracking_uri)
        except Exception as exc:
            self._refused = version
            self._failed(version, f"cannot serve {uri}: {first_line(exc)}")
            return False
        self.current = ServedModel.of(scorer, version)
        self._refused, self.failure = None, None
        log.warning("now serving %s (version %s)", uri, version)
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
            self.metrics.model_loaded(version, scorer.profile)
        return True

    def _failed(self, version: str | None, message: str) -> None:
        self.failure = {"version": version, "message": message, "at": _iso(time.time())}
        log.error(
            "registry follow-up failed: %s (still serving version %s)",
            message,
            self.current.version,
        )
        if self.metrics is not None:
            self.metrics.reloads.labels("failed").inc()


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


class Endpoints:
    """The routes of a server scoring the follower's current model."""

    def __init__(
        self,
        follower: ModelFollower,
        *,
        max_body_bytes: int,
        allow_out_of_range: bool,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.follower = follower
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.allow_out_of_range = allow_out_of_range
        scorer = follower.current.scorer
        versions = {
            "winequality": version("winequality"),
            "mlflow": version("mlflow"),
            "scikit-learn": version("scikit-learn"),
        }
        self.fixed = {
            "/version": orjson.dumps(versions),
            "/openapi.json": orjson.dumps(
                openapi_document(follower.model_uri, versions["winequality"])
            ),
        }
        self.page = render_page(scorer.metadata())

    async def invocations(self, request: Request) -> Response:
        served = self.follower.current  # this request's model, whatever swaps meanwhile
        request.scope[VERSION_KEY] = served.version
        mime = _media_type(request)
        body = await _read_body(request, self.max_body_bytes)
        decoded = codecs.decode(
            body, mime, what="the body", allow_out_of_range=self.allow_out_of_range
        )
        if not decoded.validation.ok and self.metrics is not None:
            self.metrics.refused(decoded.validation.errors)
        decoded.raise_for_errors("the input")
        checked = decoded.validation
        predictions = served.scorer.predict(checked.features)
        request.scope[ROWS_KEY] = len(predictions)
        answer: dict[str, Any] = {"predictions": predictions}
        extra = ""
        outside = None
        if served.scorer.profile is not None:
            outside = drift.outside_training(served.scorer.profile, checked.features)
            if outside.any():
                answer["warnings"] = _outside_entries(served.scorer.profile, outside, checked)
                extra = f"{int(outside.any(axis=1).sum())} rows outside the training range"
            else:
                outside = None
        if self.metrics is not None:
            self.metrics.accepted(checked.features, outside)
        return Response(
            orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type=JSON,
            headers={"X-Model-Version": served.version, **_warning_header(checked.warnings, extra)},
        )

    async def ping(self, request: Request) -> Response:
        return Response("\n", media_type=JSON)  # what MLflow's server answers

    async def health(self, request: Request) -> Response:
        served = self.follower.current
        body = {
            "status": "ok",
            "model_loaded": True,
            "model_uri": self.follower.model_uri,
            "model_version": served.version,
            "loaded_at": _iso(served.loaded_at),
            "follows_registry": self.follower.follows,
            "last_reload_failure": self.follower.failure,
            "pid": os.getpid(),  # which worker process answered
        }
        return Response(orjson.dumps(body), media_type=JSON)

    async def metadata(self, request: Request) -> Response:
        return Response(self.follower.current.metadata, media_type=JSON)

    async def metrics_text(self, request: Request) -> Response:
        assert self.metrics is not None
        return Response(
            self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def drift_view(self, request: Request) -> Response:
        assert self.metrics is not None
        body = {"model_version": self.follower.current.version, **self.metrics.drift_view()}
        return Response(orjson.dumps(body), media_type=JSON)

    async def fixed_answer(self, request: Request) -> Response:
        return Response(self.fixed[request.url.path], media_type=JSON)

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    def routes(self) -> list[Route]:
        fixed = [Route(path, self.fixed_answer, methods=["GET"]) for path in self.fixed]
        monitoring = []
        if self.metrics is not None:
            monitoring = [
                Route("/metrics", self.metrics_text, methods=["GET"]),
                Route("/drift", self.drift_view, methods=["GET"]),
            ]
        return [
            Route("/invocations", self.invocations, methods=["POST"]),
            Route("/ping", self.ping, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metadata", self.metadata, methods=["GET"]),
            *monitoring,
            *fixed,
            Route("/", self.index, methods=["GET"]),
        ]


def _outside_entries(
    profile: drift.Profile, outside: np.ndarray, checked: Validation, limit: int = 100
) -> list[dict[str, Any]]:
    rows, columns = np.nonzero(outside)
    entries = []
    for row, j in zip(rows[:limit].tolist(), columns[:limit].tolist(), strict=True):
        feature = profile.features[j]
        entries.append(
            {
                "row": row,
                "column": feature.name,
                "reason": f"outside the training range [{feature.minimum:g}, "
                f"{feature.maximum:g}]; scored anyway",
                "value": float(checked.features[row, j]),
            }
        )
    return entries


# ---------------------------------------------------------------------------------------------
# The door: authentication, metrics and the access log, around every request
# ---------------------------------------------------------------------------------------------

OPEN_PATHS = frozenset({"/ping", "/health"})  # probes need no token
ROUTES = frozenset(
    {
        "/invocations",
        "/ping",
        "/health",
        "/metadata",
        "/metrics",
        "/drift",
        "/version",
        "/openapi.json",
        "/",
    }
)
VERSION_KEY, ROWS_KEY, REQUEST_ID_KEY = "winequality.version", "winequality.rows", "winequality.id"
UNAUTHORIZED = _error_body(
    "UNAUTHORIZED", "this server needs a bearer token (Authorization: Bearer …)"
)


class Door:
    """Pure ASGI middleware: bearer-token check, request metrics and one JSON access-log line
    per request (time, method, path, status, latency, rows, model version, request id)."""

    def __init__(
        self,
        app: Any,
        *,
        token: str | None,
        metrics: ServerMetrics | None,
        access_log: AccessLog | None,
    ) -> None:
        self.app, self.metrics, self.access_log = app, metrics, access_log
        self.expected = f"Bearer {token}".encode() if token else None
        self.counter = itertools.count(1)
        self.prefix = f"{os.getpid():x}-"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        request_id = _header(scope, b"x-request-id") or self.prefix + str(next(self.counter))
        scope[REQUEST_ID_KEY] = request_id
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.expected is not None and path not in OPEN_PATHS and not self._authorized(scope):
                await _send_unauthorized(sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            route = path if path in ROUTES else "other"
            if self.metrics is not None:
                self.metrics.observe(route, status, seconds)
            if self.access_log is not None:
                self.access_log.write(
                    scope["method"],
                    path,
                    status,
                    seconds,
                    scope.get(ROWS_KEY),
                    scope.get(VERSION_KEY),
                    request_id,
                )

    def _authorized(self, scope: Any) -> bool:
        given = _header(scope, b"authorization")
        assert self.expected is not None
        return given is not None and hmac.compare_digest(given.encode(), self.expected)


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


LOG_LINE = (
    b'{"time":"%s","method":%s,"path":%s,"status":%d,"ms":%.3f,"rows":%s,'
    b'"model_version":%s,"request_id":%s}\n'
)


class AccessLog:
    """JSON lines on a binary stream. A request costs one append of what it did; the lines are
    formatted and written in bunches (every FLUSH_SECONDS and at shutdown)."""

    FLUSH_SECONDS = 0.1  # short bunches: formatting one holds the event loop ~1 ms

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.pending: deque[tuple[Any, ...]] = deque()
        self._second, self._prefix = -1, b""

    def write(
        self,
        method: str,
        path: str,
        status: int,
        seconds: float,
        rows: int | None,
        version: str | None,
        request_id: str,
    ) -> None:
        """Queue one line: time, method, path, status, ms, rows, model_version, request_id."""
        self.pending.append((time.time(), method, path, status, seconds, rows, version, request_id))

    def flush(self) -> None:
        records = take_all(self.pending)
        if records:
            self.stream.write(b"".join(self._line(record) for record in records))
            self.stream.flush()

    def _line(self, record: tuple[Any, ...]) -> bytes:
        """One queued `write`, formatted by hand (cheaper than a dict through orjson); what a
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


async def _send_unauthorized(send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"www-authenticate", b'Bearer realm="winequality"'),
                (b"content-length", str(len(UNAUTHORIZED)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": UNAUTHORIZED})


async def _known_error(request: Request, exc: Exception) -> Response:
    """Every deliberate error, with the status it carries."""
    assert isinstance(exc, WinequalityError)
    body = _error_body(exc.error_code, exc.summary, exc.entries())
    return Response(body, status_code=exc.http_status, media_type=JSON)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    body = _error_body(codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))
    return Response(body, status_code=exc.status_code, media_type=JSON)


async def _bug(request: Request, exc: Exception) -> Response:
    """A bug: logged with its trace under a request id; the client gets the id, no trace."""
    request_id = request.scope.get(REQUEST_ID_KEY) or uuid.uuid4().hex
    log.error(
        "request %s: %s %s failed", request_id, request.method, request.url.path, exc_info=exc
    )
    body = orjson.dumps(
        {
            "error_code": "INTERNAL_ERROR",
            "message": f"internal error; the server log has the details under {request_id}",
            "errors": [],
            "request_id": request_id,
        }
    )
    return Response(body, status_code=500, media_type=JSON, headers={"X-Request-Id": request_id})


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
) -> Any:
    """The ASGI app serving `scorer` (loaded from `model_uri`), following the registry when
    `refresh` > 0 and the URI names an alias."""
    import asyncio

    model_uri = model_uri or scorer.model_uri
    server_metrics = ServerMetrics() if metrics else None
    follower = ModelFollower(
        ServedModel.of(scorer, served_version(model_uri, tracking_uri, scorer.model_id)),
        model_uri=model_uri,
        refresh=refresh,
        metrics=server_metrics,
        tracking_uri=tracking_uri,
    )
    endpoints = Endpoints(
        follower,
        max_body_bytes=max_body_bytes,
        allow_out_of_range=allow_out_of_range,
        metrics=server_metrics,
    )

    log = AccessLog(access_log) if access_log is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        tasks = []
        if follower.follows:
            tasks.append(asyncio.create_task(follower.run()))
        if server_metrics is not None:  # what requests queued is folded in bunches
            tasks.append(asyncio.create_task(_every(SETTLE_SECONDS, server_metrics.flush)))
        if log is not None:
            tasks.append(asyncio.create_task(_every(AccessLog.FLUSH_SECONDS, log.flush)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if log is not None:
                log.flush()

    app = Starlette(
        routes=endpoints.routes(),
        exception_handlers={
            WinequalityError: _known_error,
            HTTPException: _http_error,
            Exception: _bug,
        },
        lifespan=lifespan,
    )
    app.state.follower = follower
    door = Door(
        app,
        token=token,
        metrics=server_metrics,
        access_log=log,
    )
    return door


async def _every(seconds: float, action: Any) -> None:
    """Run `action` every `seconds` (metrics' shared bins with several workers: whichever
    worker answers /metrics then sees every worker's drift; the access log's bunches)."""
    import asyncio

    while True:
        await asyncio.sleep(seconds)
        action()


# ---------------------------------------------------------------------------------------------
# Documents: package resources completed from the schema
# ---------------------------------------------------------------------------------------------


@cache
def _resource(name: str) -> str:
    return (files("winequality") / "resources" / name).read_text(encoding="utf-8")


def openapi_document(model_uri: str, package_version: str) -> dict[str, Any]:
    """resources/openapi.json, with the model, the version and the feature schema filled in."""
    document: dict[str, Any] = copy.deepcopy(orjson.loads(_resource("openapi.json")))
    wine: dict[str, Any] = {
        "type": "object",
        "required": list(schema.FEATURE_NAMES),
        "properties": {
            f.name: {
                "type": "number",
                "minimum": f.minimum,
                "maximum": f.maximum,
                "description": f"{f.description} Unit: {f.unit}.",
                "example": f.typical,
            }
            for f in schema.FEATURES
        },
        "additionalProperties": True,
    }
    document["info"]["version"] = package_version
    document["info"]["description"] = (
        f"Scores red/white wines with {model_uri}. Inputs follow the model signature: the "
        "11 physicochemical features as doubles, within physical ranges."
    )
    components = document["components"]["schemas"]
    components["Wine"] = wine
    components["WineColumns"] = {
        "type": "object",
        "required": list(schema.FEATURE_NAMES),
        "properties": {
            name: {"type": "array", "items": spec} for name, spec in wine["properties"].items()
        },
    }
    split = document["paths"]["/invocations"]["post"]["requestBody"]["content"][JSON]["schema"]
    columns = split["oneOf"][0]["properties"]["dataframe_split"]["properties"]["columns"]
    columns["example"] = list(schema.FEATURE_NAMES)
    return document


def render_page(metadata: dict[str, Any]) -> str:
    """resources/page.html (self-contained, no CDN): a form from the schema, prefilled with the
    model's input example."""
    example = metadata.get("input_example") or {}
    rows = example.get("data") or [[f["typical"] for f in metadata["features"]]]
    fields = []
    for j, feature in enumerate(metadata["features"]):
        name = html.escape(feature["name"])
        fields.append(
            f'<label title="{html.escape(feature["description"])}">'
            f'<span class="name">{name}</span> <span class="unit">{html.escape(feature["unit"])}'
            # text, not number: a number input hides what was typed, and the server's
            # "not a number" is the clearer message
            f'</span><input type="text" inputmode="decimal" name="{name}" data-column="{name}" '
            f'data-min="{feature["minimum"]:g}" data-max="{feature["maximum"]:g}" '
            f'value="{rows[0][j]:g}" required>'
            f'<small class="error" data-error-for="{name}"></small></label>'
        )
    options = "".join(f'<option value="{i}">example row {i + 1}</option>' for i in range(len(rows)))
    # Raw JSON inside <script>: entities are not decoded there; only "</" must not appear.
    payload = {"rows": rows, "columns": [f["name"] for f in metadata["features"]]}
    data = orjson.dumps(payload).decode().replace("</", "<\\/")
    page = _resource("page.html")
    for key, value in (
        ("fields", "\n".join(fields)),
        ("options", options),
        ("data", data),
        ("model", html.escape(str(metadata.get("model_uri")))),
    ):
        page = page.replace("{{" + key + "}}", value)
    return page


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address another process already listens on.

    Checked before the model loads, so a busy port is said at once rather than after loading.
    """
    import errno
    import socket

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


def app_from_environment() -> Any:
    """Factory for uvicorn workers: each process loads the model named in the environment."""
    from winequality.predict import load_scorer

    settings = orjson.loads(os.environ[ENV_PREFIX + "SETTINGS"])
    scorer = load_scorer(settings["model_uri"], settings["tracking_uri"])
    return create_app(scorer, **_with_log_stream(settings))


def _with_log_stream(settings: dict[str, Any]) -> dict[str, Any]:
    """The access log goes to standard error when on."""
    import sys

    return {**settings, "access_log": sys.stderr.buffer if settings["access_log"] else None}


def serve(
    model_uri: str,
    *,
    scorer: Scorer | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    allow_out_of_range: bool = False,
    tracking_uri: str | None = None,
    access_log: bool = True,
    refresh: float = 30.0,
    token: str | None = None,
    metrics: bool = True,
) -> None:
    """Load the model (failing fast on a bad URI) and serve it until SIGTERM/SIGINT.

    uvicorn finishes in-flight requests on SIGTERM before exiting. With `workers` > 1 every
    worker loads the model, follows the registry and counts metrics in files that /metrics
    sums (Prometheus's multiprocess mode).
    """
    import tempfile

    import uvicorn

    from winequality.predict import load_scorer
    from winequality.tracking import resolve_uri

    scorer = scorer or load_scorer(model_uri, tracking_uri)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,  # ours: one JSON line per request
        "timeout_graceful_shutdown": 30,
        "http": "httptools",
        "loop": "auto",  # uvloop where it is installed (not on Windows)
    }
    settings: dict[str, Any] = {
        "model_uri": model_uri,
        "max_body_bytes": max_body_bytes,
        "allow_out_of_range": allow_out_of_range,
        "refresh": refresh,
        "token": token,
        "metrics": metrics,
        "access_log": access_log,
        "tracking_uri": resolve_uri(tracking_uri) if tracking_uri else None,
    }
    if workers <= 1:
        uvicorn.run(create_app(scorer, **_with_log_stream(settings)), **options)
        return
    with tempfile.TemporaryDirectory(prefix="winequality-metrics-") as folder:
        # before the workers start: each then keeps its metric values in files here
        os.environ[MULTIPROC_ENV] = folder
        os.environ[ENV_PREFIX + "SETTINGS"] = orjson.dumps(settings).decode()
        uvicorn.run(
            "winequality.serve:app_from_environment", factory=True, workers=workers, **options
        )
