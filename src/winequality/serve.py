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

import copy
import html
import logging
import os
import uuid
from functools import cache
from importlib.metadata import version
from importlib.resources import files
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from winequality import codecs, schema
from winequality.errors import (
    ParameterError,
    PayloadTooLarge,
    UnsupportedMedia,
    WinequalityError,
)
from winequality.predict import Scorer
from winequality.schema import FeatureIssue

__all__ = [
    "DEFAULT_MAX_BODY",
    "Endpoints",
    "app_from_environment",
    "check_port",
    "create_app",
    "openapi_document",
    "render_page",
    "serve",
]

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # a 10,000-row JSON body is about 2.5 MB
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
    """The whole body, refusing one past `limit` bytes as soon as that is known."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _warning_header(issues: list[FeatureIssue]) -> dict[str, str]:
    if not issues:
        return {}
    text = "; ".join(i.describe() for i in issues[:5])
    return {"X-Winequality-Warnings": text.encode("ascii", "replace").decode()[:1000]}


class Endpoints:
    """The routes of a server scoring one loaded model; fixed answers are encoded once."""

    def __init__(self, scorer: Scorer, *, max_body_bytes: int, allow_out_of_range: bool) -> None:
        self.scorer = scorer
        self.max_body_bytes = max_body_bytes
        self.allow_out_of_range = allow_out_of_range
        versions = {
            "winequality": version("winequality"),
            "mlflow": version("mlflow"),
            "scikit-learn": version("scikit-learn"),
        }
        metadata = scorer.metadata()
        self.fixed = {
            "/health": orjson.dumps(
                {
                    "status": "ok",
                    "model_loaded": True,
                    "model_uri": scorer.model_uri,
                    "pid": os.getpid(),  # which worker process answered
                }
            ),
            "/version": orjson.dumps(versions),
            "/metadata": orjson.dumps(metadata, option=orjson.OPT_SERIALIZE_NUMPY),
            "/openapi.json": orjson.dumps(
                openapi_document(scorer.model_uri, versions["winequality"])
            ),
        }
        self.page = render_page(metadata)

    async def invocations(self, request: Request) -> Response:
        mime = _media_type(request)
        body = await _read_body(request, self.max_body_bytes)
        decoded = codecs.decode(
            body, mime, what="the body", allow_out_of_range=self.allow_out_of_range
        )
        decoded.raise_for_errors("the input")
        checked = decoded.validation
        predictions = self.scorer.predict(checked.features)
        return Response(
            orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type=JSON,
            headers=_warning_header(checked.warnings),
        )

    async def ping(self, request: Request) -> Response:
        return Response("\n", media_type=JSON)  # what MLflow's server answers

    async def fixed_answer(self, request: Request) -> Response:
        return Response(self.fixed[request.url.path], media_type=JSON)

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    def routes(self) -> list[Route]:
        fixed = [Route(path, self.fixed_answer, methods=["GET"]) for path in self.fixed]
        return [
            Route("/invocations", self.invocations, methods=["POST"]),
            Route("/ping", self.ping, methods=["GET"]),
            *fixed,
            Route("/", self.index, methods=["GET"]),
        ]


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
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
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
    scorer: Scorer, *, max_body_bytes: int = DEFAULT_MAX_BODY, allow_out_of_range: bool = False
) -> Starlette:
    """The ASGI app serving one loaded model."""
    endpoints = Endpoints(
        scorer, max_body_bytes=max_body_bytes, allow_out_of_range=allow_out_of_range
    )
    return Starlette(
        routes=endpoints.routes(),
        exception_handlers={
            WinequalityError: _known_error,
            HTTPException: _http_error,
            Exception: _bug,
        },
    )


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


def app_from_environment() -> Starlette:
    """Factory for uvicorn workers: each process loads the model named in the environment."""
    from winequality.predict import load_scorer

    scorer = load_scorer(
        os.environ[ENV_PREFIX + "MODEL"], os.environ.get(ENV_PREFIX + "TRACKING_URI") or None
    )
    return create_app(
        scorer,
        max_body_bytes=int(os.environ[ENV_PREFIX + "MAX_BODY"]),
        allow_out_of_range=os.environ.get(ENV_PREFIX + "ALLOW") == "1",
    )


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
    access_log: bool = False,
) -> None:
    """Load the model (failing fast on a bad URI) and serve it until SIGTERM/SIGINT.

    uvicorn finishes in-flight requests on SIGTERM before exiting.
    """
    import uvicorn

    from winequality.predict import load_scorer

    scorer = scorer or load_scorer(model_uri, tracking_uri)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": access_log,
        "timeout_graceful_shutdown": 30,
        "http": "httptools",
        "loop": "auto",  # uvloop where it is installed (not on Windows)
    }
    if workers <= 1:
        uvicorn.run(
            create_app(
                scorer, max_body_bytes=max_body_bytes, allow_out_of_range=allow_out_of_range
            ),
            **options,
        )
        return
    from winequality.tracking import resolve_uri

    os.environ.update(
        {
            ENV_PREFIX + "MODEL": model_uri,
            ENV_PREFIX + "TRACKING_URI": resolve_uri(tracking_uri),
            ENV_PREFIX + "MAX_BODY": str(max_body_bytes),
            ENV_PREFIX + "ALLOW": "1" if allow_out_of_range else "0",
        }
    )
    uvicorn.run("winequality.serve:app_from_environment", factory=True, workers=workers, **options)
