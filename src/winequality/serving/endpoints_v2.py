"""The Open Inference Protocol ("V2"), as KServe, MLServer and Triton's clients speak it.

`/v2` (server metadata), `/v2/health/live`, `/v2/health/ready`, and per model
`/v2/models/{name}[/versions/{version}]` (metadata), `…/ready` and `…/infer`. `{name}` is the
served model's name (the registered name, `--name`, or `wine-quality`). A version route scores
with that registry version even while the alias follows another one: it is loaded on first use
into a small bounded cache, checked like every served model. Requests decode straight into one
float64 matrix (`io.inference`), then go through the same scoring as `/invocations`.

Binary tensor inputs (an `Inference-Header-Content-Length` header) are refused with a readable
400; a request that only asks for binary outputs (tritonclient does when it names none) is
answered in JSON, which every client reads.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from winequality import tracking
from winequality.errors import (
    NotFoundError,
    PayloadError,
    SchemaError,
    UnsupportedMedia,
)
from winequality.export import read_export
from winequality.intervals import bound_names
from winequality.io.inference import OUTPUT, parse_inference_request
from winequality.schema import FEATURE_NAMES, INTERVAL_PARAM
from winequality.scoring import load_scorer
from winequality.serving.canary import Canary
from winequality.serving.follower import ModelFollower, ServedModel
from winequality.serving.http import JSON, REQUEST_ID_KEY, ROWS_KEY, VERSION_KEY, read_body
from winequality.serving.lifecycle import Lifecycle
from winequality.serving.metrics import ServerMetrics
from winequality.serving.scoring import interval_bounds, interval_level, score
from winequality.serving.shadow import Shadow

__all__ = ["BINARY_HEADER", "DEFAULT_NAME", "VERSIONS_KEPT", "V2Endpoints"]

DEFAULT_NAME = "wine-quality"  # for a runs:/ or folder URI, which names no model
VERSIONS_KEPT = 4  # registry versions kept loaded for version routes
BINARY_HEADER = "inference-header-content-length"
PLATFORM = "sklearn"  # what MLServer's MLflow runtime and KServe call a scikit-learn model


class V2Endpoints:
    """The V2 routes, scoring the follower's current model (or a named registry version)."""

    def __init__(
        self,
        follower: ModelFollower,
        lifecycle: Lifecycle,
        *,
        name: str | None,
        max_body_bytes: int,
        allow_out_of_range: bool,
        metrics: ServerMetrics | None,
        tracking_uri: str | None,
        shadow: Shadow | None = None,
        canary: Canary | None = None,
    ) -> None:
        self.follower, self.lifecycle, self.metrics = follower, lifecycle, metrics
        self.shadow = shadow  # beside the served model, not a version a path names
        self.canary = canary  # answers for the served model, not for a version a path names
        parts = tracking.RegistryUri.parse(follower.model_uri)
        self.registered = parts.name if parts is not None else None
        local = Path(follower.model_uri).expanduser()
        exported = read_export(local) if local.is_dir() else None  # its registered name
        from_export = exported.registered_model if exported else None
        self.name: str = name or self.registered or from_export or DEFAULT_NAME
        self.max_body_bytes, self.allow_out_of_range = max_body_bytes, allow_out_of_range
        self.tracking_uri = tracking_uri
        self.versions: OrderedDict[str, ServedModel] = OrderedDict()
        self.server = orjson.dumps(
            {"name": "winequality", "version": version("winequality"), "extensions": []}
        )

    # --- health and metadata -----------------------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        return Response(self.server, media_type=JSON)

    async def live(self, request: Request) -> Response:
        return Response(b'{"live":true}', media_type=JSON)

    async def ready(self, request: Request) -> Response:
        ready = self.lifecycle.ready  # (false while draining: stop sending here)
        return Response(orjson.dumps({"ready": ready}), 200 if ready else 503, media_type=JSON)

    async def model_ready(self, request: Request) -> Response:
        await self._model(request)
        return Response(orjson.dumps({"name": self.name, "ready": True}), media_type=JSON)

    async def model_metadata(self, request: Request) -> Response:
        served = await self._model(request)
        document = {
            "name": self.name,
            "versions": [served.version],
            "platform": PLATFORM,
            "inputs": [{"name": n, "datatype": "FP64", "shape": [-1]} for n in FEATURE_NAMES],
            "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
            "parameters": {"content_type": "pd"},
        }
        return Response(orjson.dumps(document), media_type=JSON)

    # --- inference ---------------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        served = await self._model(request)
        champion = self.follower.current
        if self.canary is not None and "version" not in request.path_params:
            served = self.canary.pick(request.scope, champion)
        request.scope[VERSION_KEY] = served.version
        if request.headers.get(BINARY_HEADER) is not None:
            raise PayloadError(
                "binary tensor data is not accepted; send the tensors as JSON "
                "(tritonclient: binary_data=False on each InferInput)"
            )
        mime = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if mime not in (JSON, ""):
            raise UnsupportedMedia(f"content type {mime!r} is not supported; send {JSON}")
        body = await read_body(request, self.max_body_bytes)
        try:
            decoded = parse_inference_request(body, allow_out_of_range=self.allow_out_of_range)
        except SchemaError as refused:
            if self.metrics is not None:
                self.metrics.refused(refused.issues)
            raise
        # the level of `parameters` adds both bounds; outputs named (lower_0.95) select
        # which to answer, at any level the model was calibrated at
        level = interval_level(served, decoded.parameters.get(INTERVAL_PARAM))
        named: dict[str, float] = {}
        for name in decoded.outputs:
            if name != OUTPUT:
                asked = interval_level(served, name.partition("_")[2])
                assert asked is not None  # (a name was given: a level, or an error)
                named[name] = asked
                spelled = bound_names(asked)
                if name not in spelled:
                    raise PayloadError(f"unknown output {name!r}; write it {spelled[0]!r} or so")
        wanted = decoded.outputs or (OUTPUT, *(bound_names(level) if level is not None else ()))
        asked = any(name != OUTPUT for name in wanted)  # bounds answered: the caveat applies
        started = time.perf_counter()
        scored = score(served, decoded.features, decoded.warnings, self.metrics, interval=asked)
        if self.shadow is not None and served is champion:
            seconds = time.perf_counter() - started
            self.shadow.offer(
                request.scope[REQUEST_ID_KEY], decoded.features, scored.predictions, served, seconds
            )
        rows = len(scored.predictions)
        request.scope[ROWS_KEY] = rows
        tensors = {OUTPUT: scored.predictions}
        for asked in {*named.values(), *([level] if level is not None else [])}:
            tensors.update(interval_bounds(served, scored.predictions, asked))
        outputs = [
            {"name": name, "datatype": "FP64", "shape": [rows], "data": tensors[name]}
            for name in wanted
        ]
        answer: dict[str, Any] = {
            "model_name": self.name,
            "model_version": served.version,
            "outputs": outputs,
        }
        if decoded.id is not None:
            answer["id"] = decoded.id
        if scored.outside:
            answer["parameters"] = {"warnings": scored.outside}
        return Response(
            orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type=JSON,
            headers=scored.header,
        )

    # --- which model -------------------------------------------------------------------------

    async def _model(self, request: Request) -> ServedModel:
        """The model the path names: the one being served, or a registry version."""
        name = request.path_params["name"]
        if name != self.name:
            raise NotFoundError(f"no model named {name!r}; this server serves {self.name!r}")
        wanted = request.path_params.get("version")
        current = self.follower.current
        if wanted is None or wanted == current.version:
            return current
        if self.registered is None or not wanted.isdigit():
            raise NotFoundError(
                f"{self.name!r} has no version {wanted!r}; this server serves version "
                f"{current.version}"
            )
        return await asyncio.to_thread(self._version, wanted)

    def _version(self, wanted: str) -> ServedModel:
        known = self.versions.get(wanted)
        if known is not None:
            self.versions.move_to_end(wanted)
            return known
        uri = f"models:/{self.registered}/{wanted}"
        try:
            scorer = load_scorer(uri, self.tracking_uri)
        except Exception as exc:
            raise NotFoundError(
                f"{self.name!r} has no version {wanted} that this server can serve"
            ) from exc
        served = ServedModel.of(scorer, wanted)
        self.versions[wanted] = served
        while len(self.versions) > VERSIONS_KEPT:
            self.versions.popitem(last=False)
        return served
