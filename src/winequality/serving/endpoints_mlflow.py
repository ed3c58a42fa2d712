"""MLflow's scoring protocol: `POST /invocations` and `GET /ping`, as `mlflow models serve`
answers them, with the signature enforced.

A JSON body is MLflow's protocol (`io.protocol`); CSV and Parquet bodies go through the same
reader as files (`io.reader`, Arrow's: an installation without the `files` extra answers them
415, naming it). Every cell is checked against the feature schema; every problem
is listed, by row and column, in one 422. Rows beyond the model's training range are scored and
named in `warnings` (`serving.scoring`, which every protocol shares).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from winequality.errors import SchemaError
from winequality.extras import missing_extra
from winequality.io import files, protocol
from winequality.schema import INTERVAL_PARAM, FeatureIssue
from winequality.serving.canary import Canary
from winequality.serving.follower import ModelFollower
from winequality.serving.http import (
    JSON,
    REQUEST_ID_KEY,
    ROWS_KEY,
    VERSION_KEY,
    media_type,
    read_body,
)
from winequality.serving.lifecycle import Lifecycle
from winequality.serving.metrics import ServerMetrics
from winequality.serving.scoring import interval_bounds, interval_level, score
from winequality.serving.shadow import Shadow

__all__ = ["MLflowEndpoints", "decode_body", "decode_request"]


def decode_body(
    body: bytes, mime: str, *, allow_out_of_range: bool
) -> tuple[np.ndarray, list[FeatureIssue]]:
    """The features (n, 11) of a body and its warnings; SchemaError listing every problem."""
    features, warnings, _ = decode_request(body, mime, allow_out_of_range=allow_out_of_range)
    return features, warnings


def decode_request(
    body: bytes, mime: str, *, allow_out_of_range: bool
) -> tuple[np.ndarray, list[FeatureIssue], dict[str, Any]]:
    """`decode_body`, and the body's params (JSON only: a CSV body has none)."""
    if mime == files.JSON:
        with protocol.collector_paused():
            parsed = protocol.parse_request(body, allow_out_of_range=allow_out_of_range)
        if not parsed.checked.ok:
            raise SchemaError(parsed.checked.errors, what="the input")
        return parsed.checked.features, parsed.checked.warnings, parsed.params
    try:  # Arrow's readers: the `files` extra, which the container image leaves out
        from winequality.io import reader
    except ModuleNotFoundError as exc:
        lacking = missing_extra(exc, f"a {mime} body")
        if lacking is None:
            raise
        raise lacking from None
    source = reader.open_bytes(body, mime, "the input", allow_out_of_range, cite_lines=False)
    whole = source.check_all()
    return whole.features, whole.warnings, {}


class MLflowEndpoints:
    """The routes of MLflow's protocol, scoring the follower's current model."""

    def __init__(
        self,
        follower: ModelFollower,
        lifecycle: Lifecycle,
        *,
        max_body_bytes: int,
        allow_out_of_range: bool,
        metrics: ServerMetrics | None,
        shadow: Shadow | None = None,
        canary: Canary | None = None,
    ) -> None:
        self.follower, self.lifecycle, self.metrics = follower, lifecycle, metrics
        self.shadow, self.canary = shadow, canary
        self.max_body_bytes, self.allow_out_of_range = max_body_bytes, allow_out_of_range

    async def invocations(self, request: Request) -> Response:
        champion = self.follower.current  # this request's model, whatever swaps meanwhile
        served = champion if self.canary is None else self.canary.pick(request.scope, champion)
        request.scope[VERSION_KEY] = served.version
        mime = media_type(request)
        body = await read_body(request, self.max_body_bytes)
        try:
            features, warnings, params = decode_request(
                body, mime, allow_out_of_range=self.allow_out_of_range
            )
        except SchemaError as refused:
            if self.metrics is not None:
                self.metrics.refused(refused.issues)
            raise
        level = interval_level(served, params.get(INTERVAL_PARAM))  # before any scoring
        started = time.perf_counter()
        scored = score(served, features, warnings, self.metrics, interval=level is not None)
        if self.shadow is not None and served is champion:  # a sample sent; never waited for
            seconds = time.perf_counter() - started
            request_id = request.scope[REQUEST_ID_KEY]
            self.shadow.offer(request_id, features, scored.predictions, served, seconds)
        request.scope[ROWS_KEY] = len(scored.predictions)
        answer: dict[str, Any] = {"predictions": scored.predictions}
        if level is not None:
            answer.update(interval_bounds(served, scored.predictions, level))
        if scored.outside:
            answer["warnings"] = scored.outside
        return Response(
            orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type=JSON,
            headers=scored.header,
        )

    async def ping(self, request: Request) -> Response:
        """MLflow's server says 200 once its model is loaded: here, while ready."""
        if not self.lifecycle.ready:
            return Response(orjson.dumps(self.lifecycle.state()), 503, media_type=JSON)
        return Response("\n", media_type=JSON)  # what MLflow's server answers
