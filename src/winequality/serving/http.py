"""What every route shares about HTTP: media types, reading a body within its limit, and
turning exceptions into JSON answers.

Errors are JSON `{"error_code", "message", "errors": [{"row", "column", "reason"}]}`, mapped
from the `WinequalityError` that carries each status: 400 for a body that is not the protocol,
422 for values that break the schema, 413 past the body limit, 415 for other content types.
Anything else is a bug: logged with its request id, answered 500 with that id and no trace.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from winequality.errors import ClientGone, PayloadTooLarge, UnsupportedMedia, WinequalityError
from winequality.io import files

__all__ = [
    "ANSWERED_KEY",
    "ARRIVED_KEY",
    "DRAIN_LIMIT",
    "JSON",
    "REQUEST_ID_KEY",
    "ROWS_KEY",
    "V2_PREFIX",
    "VERSION_KEY",
    "bug",
    "error_body",
    "http_error",
    "is_v2",
    "known_error",
    "media_type",
    "read_body",
    "send_json",
    "v2_error_body",
]

JSON = files.JSON
V2_PREFIX = "/v2"  # the Open Inference Protocol's routes
DRAIN_LIMIT = 64 * 1024 * 1024  # read and drop this much of a body that is too large
# What a request leaves in its ASGI scope for the pieces around it (the access log, metrics).
VERSION_KEY, ROWS_KEY, REQUEST_ID_KEY = "winequality.version", "winequality.rows", "winequality.id"
ARRIVED_KEY = "winequality.arrived"  # time.monotonic() when the request's headers were in
ANSWERED_KEY = "winequality.answered"  # the status already sent by the protocol (a shed)
log = logging.getLogger("winequality.serve")


def error_body(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    return orjson.dumps({"error_code": code, "message": message, "errors": errors or []})


def media_type(request: Request) -> str:
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
    if mime not in files.MEDIA_TYPES:
        raise UnsupportedMedia(
            f"content type {raw or '(none)'!r} is not supported; send {JSON} "
            f"(MLflow's scoring protocol), {files.CSV} or {files.PARQUET}"
        )
    return mime


async def read_body(request: Request, limit: int) -> bytes:
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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request)
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # (or closed by the server: too slow, see serving.connections)
        raise ClientGone("the client closed the connection before sending the whole body") from None
    return b"".join(chunks)


async def _drain(request: Request) -> None:
    drained = 0
    with contextlib.suppress(ClientDisconnect):  # gone: nothing left to drop
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                return


async def send_json(
    send: Any, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A whole JSON answer from a pure ASGI piece (one that runs before any route)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def is_v2(path: str) -> bool:
    """Open Inference Protocol routes answer errors in its shape: `{"error": …}`."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def v2_error_body(message: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    """The protocol's error object, with the problems by row and column beside it."""
    return orjson.dumps({"error": message, "errors": errors or []})


async def known_error(request: Request, exc: Exception) -> Response:
    """Every deliberate error, with the status it carries (on V2 routes, a value that breaks
    the schema is a 400: the protocol has no 422)."""
    assert isinstance(exc, WinequalityError)
    headers = {"Connection": "close"} if exc.closes_connection else None
    if is_v2(request.url.path):
        status = 400 if exc.http_status == 422 else exc.http_status
        body = v2_error_body(exc.summary, exc.entries())
        return Response(body, status, media_type=JSON, headers=headers)
    body = error_body(exc.error_code, exc.summary, exc.entries())
    return Response(body, status_code=exc.http_status, media_type=JSON, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405), in our shape and with their headers (a 405's
    `Allow`, which RFC 9110 requires)."""
    assert isinstance(exc, HTTPException)
    if is_v2(request.url.path):
        body = v2_error_body(str(exc.detail))
    else:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        body = error_body(codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))
    return Response(body, status_code=exc.status_code, media_type=JSON, headers=exc.headers)


async def bug(request: Request, exc: Exception) -> Response:
    """A bug: logged with its trace under a request id; the client gets the id, no trace."""
    request_id = request.scope.get(REQUEST_ID_KEY) or uuid.uuid4().hex
    log.error(
        "request %s: %s %s failed", request_id, request.method, request.url.path, exc_info=exc
    )
    message = f"internal error; the server log has the details under {request_id}"
    body = orjson.dumps(
        {"error": message, "request_id": request_id}
        if is_v2(request.url.path)
        else {
            "error_code": "INTERNAL_ERROR",
            "message": message,
            "errors": [],
            "request_id": request_id,
        }
    )
    return Response(body, status_code=500, media_type=JSON, headers={"X-Request-Id": request_id})
