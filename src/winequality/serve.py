"""The REST server: MLflow's scoring protocol, validated by the same code as batch scoring.

HTTP only: content types, body limits, status codes and error bodies, the OpenAPI document and
the prediction page. Parsing and validation are `winequality.predict.parse_payload` and the
feature schema; this module holds no copy of either.

Errors are JSON `{"error_code", "message", "errors": [{"row", "column", "reason"}]}`: 400 for a
body that is not the protocol, 422 for values that break the schema, 413 past the body limit,
415 for other content types. No stack trace ever leaves the process.
"""

from __future__ import annotations

import html
import io
import logging
import os
from importlib.metadata import version
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from winequality import schema
from winequality.errors import first_line
from winequality.predict import PayloadError, Scorer, parse_payload
from winequality.schema import FeatureIssue, Validation

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # a 10,000-row JSON body is about 2.5 MB
MAX_LISTED_ERRORS = 1000
JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
ENV_PREFIX = "WINEQUALITY_SERVE_"
log = logging.getLogger("winequality.serve")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors or []


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )


def error_response(error: ApiError) -> Response:
    body: dict[str, Any] = {
        "error_code": error.code,
        "message": error.message,
        "errors": error.errors,
    }
    return json_response(body, error.status)


def issue_entries(
    issues: list[FeatureIssue], limit: int = MAX_LISTED_ERRORS
) -> list[dict[str, Any]]:
    """One entry per offending cell (row is the 0-based position in the request)."""
    entries: list[dict[str, Any]] = []
    for issue in issues:
        if not issue.rows:
            entries.append({"row": None, "column": issue.column, "reason": issue.reason})
            continue
        for k, row in enumerate(issue.rows):
            if len(entries) >= limit:
                return entries
            entry: dict[str, Any] = {"row": row, "column": issue.column, "reason": issue.reason}
            if k < len(issue.values) and issue.kind != "missing_value":
                value = issue.values[k]
                entry["value"] = value if isinstance(value, (int, float, str)) else repr(value)
            entries.append(entry)
    return entries


def _content_type(request: Request) -> str:
    raw = request.headers.get("content-type", "")
    mime, *parameters = (part.strip() for part in raw.split(";"))
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset":
            raise ApiError(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                f"unrecognised content type parameter {key.strip()!r}",
            )
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "only UTF-8 bodies are supported")
    mime = mime.lower()
    if mime not in (JSON, CSV, PARQUET):
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"content type {raw or '(none)'!r} is not supported; send {JSON} "
            f"(MLflow's scoring protocol), {CSV} or {PARQUET}",
        )
    return mime


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "PAYLOAD_TOO_LARGE", f"the body is {int(declared)} bytes; the limit is {limit}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validate_body(body: bytes, mime: str, allow_out_of_range: bool) -> Validation:
    if mime == JSON:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "BAD_REQUEST", f"the body is not valid JSON: {exc}") from None
        try:
            return parse_payload(payload, allow_out_of_range=allow_out_of_range)
        except PayloadError as exc:
            raise ApiError(400, "BAD_REQUEST", str(exc)) from None
    import pandas as pd

    try:
        if mime == CSV:
            frame = pd.read_csv(io.BytesIO(body), skip_blank_lines=False)
        else:
            frame = pd.read_parquet(io.BytesIO(body))
    except Exception as exc:
        kind = "CSV" if mime == CSV else "Parquet"
        first = first_line(exc)
        raise ApiError(400, "BAD_REQUEST", f"the body is not readable {kind}: {first}") from None
    if mime == CSV and frame.shape[1] == 1 and ";" in str(frame.columns[0]):
        raise ApiError(
            400,
            "BAD_REQUEST",
            "text/csv bodies are ','-separated (MLflow's "
            "scoring protocol); this one looks ';'-separated (UCI's layout)",
        )
    return schema.validate_columns(frame, unknown="warn", allow_out_of_range=allow_out_of_range)


def _warning_header(issues: list[FeatureIssue]) -> dict[str, str]:
    if not issues:
        return {}
    text = "; ".join(i.describe() for i in issues[:5])
    return {"X-Winequality-Warnings": text.encode("ascii", "replace").decode()[:1000]}


def create_app(
    scorer: Scorer, *, max_body_bytes: int = DEFAULT_MAX_BODY, allow_out_of_range: bool = False
) -> Starlette:
    """The ASGI app serving one loaded model."""
    versions = {
        "winequality": version("winequality"),
        "mlflow": version("mlflow"),
        "scikit-learn": version("scikit-learn"),
    }
    metadata = scorer.metadata()
    static = {
        "health": orjson.dumps(
            {"status": "ok", "model_loaded": True, "model_uri": scorer.model_uri}
        ),
        "version": orjson.dumps(versions),
        "metadata": orjson.dumps(metadata, option=orjson.OPT_SERIALIZE_NUMPY),
        "openapi": orjson.dumps(openapi_document(scorer, versions["winequality"])),
    }
    page = render_page(metadata)

    async def invocations(request: Request) -> Response:
        try:
            mime = _content_type(request)
            body = await _read_body(request, max_body_bytes)
            checked = _validate_body(body, mime, allow_out_of_range)
            if not checked.ok:
                total = sum(i.count for i in checked.errors)
                raise ApiError(
                    422,
                    "INVALID_INPUT",
                    f"the input does not fit the wine feature schema ({total} "
                    f"problem{'s' if total != 1 else ''})",
                    issue_entries(checked.errors),
                )
            predictions = scorer.predict(checked.features)
        except ApiError as error:
            return error_response(error)
        return Response(
            orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type=JSON,
            headers=_warning_header(checked.warnings),
        )

    def fixed(key: str) -> Any:
        async def endpoint(request: Request) -> Response:
            return Response(static[key], media_type=JSON)

        return endpoint

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")  # what MLflow's server answers

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        return error_response(
            ApiError(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))
        )

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            ApiError(500, "INTERNAL_ERROR", "internal error; the server log has the details")
        )

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", fixed("health"), methods=["GET"]),
        Route("/version", fixed("version"), methods=["GET"]),
        Route("/metadata", fixed("metadata"), methods=["GET"]),
        Route("/openapi.json", fixed("openapi"), methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: crash}
    )


# ---------------------------------------------------------------------------------------------
# Documents derived from the schema
# ---------------------------------------------------------------------------------------------


def openapi_document(scorer: Scorer, package_version: str) -> dict[str, Any]:
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
    columns = {
        "type": "object",
        "required": list(schema.FEATURE_NAMES),
        "properties": {
            f.name: {"type": "array", "items": wine["properties"][f.name]} for f in schema.FEATURES
        },
    }
    records = {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Wine"}}
    request = {
        "oneOf": [
            {
                "type": "object",
                "required": ["dataframe_split"],
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "required": ["columns", "data"],
                        "properties": {
                            "columns": {
                                "type": "array",
                                "items": {"type": "string"},
                                "example": list(schema.FEATURE_NAMES),
                            },
                            "data": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "array", "items": {"type": "number"}},
                            },
                        },
                    }
                },
            },
            {
                "type": "object",
                "required": ["dataframe_records"],
                "properties": {"dataframe_records": records},
            },
            {"type": "object", "required": ["instances"], "properties": {"instances": records}},
            {
                "type": "object",
                "required": ["inputs"],
                "properties": {"inputs": {"oneOf": [records, columns]}},
            },
        ]
    }
    error = {"$ref": "#/components/schemas/Error"}
    problem = {"description": "", "content": {JSON: {"schema": error}}}

    def responses(**extra: str) -> dict[str, Any]:
        return {code: {**problem, "description": text} for code, text in extra.items()}

    def simple(summary: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "winequality scoring API",
            "version": package_version,
            "description": f"Scores red/white wines with {scorer.model_uri}. Inputs follow "
            "the model signature: the 11 physicochemical features as "
            "doubles, within physical ranges.",
        },
        "paths": {
            "/invocations": {
                "post": {
                    "summary": "Predict quality scores (MLflow scoring protocol)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {"schema": request},
                            CSV: {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One predicted quality score per row",
                            "content": {
                                JSON: {"schema": {"$ref": "#/components/schemas/Predictions"}}
                            },
                        },
                        **responses(
                            **{
                                "400": "Not MLflow's scoring protocol",
                                "413": "Body too large",
                                "415": "Unsupported content type",
                                "422": "Values that break the feature schema",
                            }
                        ),
                    },
                }
            },
            "/ping": simple("Liveness"),
            "/health": simple("The model is loaded"),
            "/version": simple("Package versions"),
            "/metadata": simple("Model URI, run, signature, input example, feature schema"),
        },
        "components": {
            "schemas": {
                "Wine": wine,
                "Predictions": {
                    "type": "object",
                    "required": ["predictions"],
                    "properties": {"predictions": {"type": "array", "items": {"type": "number"}}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error_code", "message", "errors"],
                    "properties": {
                        "error_code": {"type": "string"},
                        "message": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "row": {"type": "integer", "nullable": True},
                                    "column": {"type": "string", "nullable": True},
                                    "reason": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            }
        },
    }


def render_page(metadata: dict[str, Any]) -> str:
    """A self-contained page (no CDN): a form from the schema, prefilled with the example."""
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
    return PAGE.format(
        fields="\n".join(fields),
        options=options,
        data=data,
        model=html.escape(str(metadata.get("model_uri"))),
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>winequality: predict a wine's quality</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }}
h1 {{ font-size: 1.4rem; margin-bottom: .2rem; }}
.model {{ color: #666; font-size: .85rem; word-break: break-all; }}
form {{ display: grid; grid-template-columns: 1fr 1fr; gap: .6rem 1.2rem; margin-top: 1rem; }}
label {{ display: flex; flex-direction: column; }}
.unit {{ color: #777; font-size: .8rem; }}
input {{ font: inherit; padding: .3rem; border: 1px solid #bbb; border-radius: 4px; }}
input.invalid {{ border-color: #c0392b; background: #fdf0ef; }}
.error {{ color: #c0392b; min-height: 1em; }}
.actions {{ grid-column: 1 / -1; display: flex; gap: 1rem; align-items: center; }}
button {{ font: inherit; padding: .4rem 1.2rem; }}
#result {{ font-size: 1.6rem; font-weight: 600; }}
#message {{ color: #c0392b; }}
</style></head>
<body>
<h1>Predict a wine's quality</h1>
<div class="model">model: {model}</div>
<form id="wine" novalidate>
{fields}
<div class="actions">
<button type="submit">Predict</button>
<select id="example">{options}</select>
<span id="result" aria-live="polite"></span>
</div>
</form>
<p id="message" role="alert"></p>
<script id="example-data" type="application/json">{data}</script>
<script>
const form = document.getElementById("wine");
const examples = JSON.parse(document.getElementById("example-data").textContent);
const result = document.getElementById("result");
const message = document.getElementById("message");
function clearErrors() {{
  form.querySelectorAll(".error").forEach(e => e.textContent = "");
  form.querySelectorAll("input").forEach(i => i.classList.remove("invalid"));
  message.textContent = ""; result.textContent = "";
}}
document.getElementById("example").addEventListener("change", ev => {{
  const row = examples.rows[Number(ev.target.value)];
  examples.columns.forEach((c, j) => form.querySelector(`[data-column="${{c}}"]`).value = row[j]);
  clearErrors();
}});
form.addEventListener("submit", async ev => {{
  ev.preventDefault(); clearErrors();
  const columns = examples.columns;
  const row = columns.map(c => {{
    const text = form.querySelector(`[data-column="${{c}}"]`).value.trim();
    return text === "" ? null : (isNaN(Number(text)) ? text : Number(text));
  }});
  try {{
    const answer = await fetch("invocations", {{method: "POST",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{dataframe_split: {{columns, data: [row]}}}})}});
    const body = await answer.json();
    if (answer.ok) {{ result.textContent = "quality ≈ " + body.predictions[0].toFixed(2); return; }}
    message.textContent = body.message;
    (body.errors || []).forEach(e => {{
      const slot = form.querySelector(`[data-error-for="${{e.column}}"]`);
      if (slot) {{ slot.textContent = e.reason;
        form.querySelector(`[data-column="${{e.column}}"]`).classList.add("invalid"); }}
    }});
  }} catch (err) {{ message.textContent = "request failed: " + err; }}
}});
</script>
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


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
        "loop": "uvloop",
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
