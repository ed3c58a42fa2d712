"""What the server says about itself: health, the model's metadata, versions, its OpenAPI
document, the prediction page, Prometheus metrics and the drift view."""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from winequality.serving.documents import openapi_document, render_page
from winequality.serving.follower import ModelFollower, iso_time
from winequality.serving.http import JSON
from winequality.serving.lifecycle import Lifecycle
from winequality.serving.metrics import ServerMetrics

__all__ = ["ServerEndpoints"]


class ServerEndpoints:
    """Routes about the server; the fixed documents are built once, at start."""

    def __init__(
        self,
        follower: ModelFollower,
        lifecycle: Lifecycle,
        *,
        metrics: ServerMetrics | None,
        model_name: str,
    ) -> None:
        self.follower, self.lifecycle, self.metrics = follower, lifecycle, metrics
        versions = {
            "winequality": version("winequality"),
            "mlflow": version("mlflow-skinny"),  # the `mlflow` module, whichever install
            "scikit-learn": version("scikit-learn"),
        }
        self.versions = orjson.dumps(versions)
        self.openapi = orjson.dumps(
            openapi_document(
                follower.model_uri,
                versions["winequality"],
                model_name,
                follower.current.scorer.model.intervals.levels
                if follower.current.scorer.model.intervals
                else (),
            )
        )
        # rendered for the model served, again when the registry swaps it
        self.page = render_page(follower.current.scorer.metadata())
        self.page_of = follower.current

    async def health(self, request: Request) -> Response:
        served = self.follower.current
        body: dict[str, Any] = {
            "status": "ok",
            "model_loaded": True,
            **self.lifecycle.state(),  # ready, draining (this route stays 200 either way)
            "model_uri": self.follower.model_uri,
            "model_version": served.version,
            "loaded_at": iso_time(served.loaded_at),
            "follows_registry": self.follower.follows,
            "last_reload_failure": self.follower.failure,
            "pid": os.getpid(),  # which worker process answered
        }
        return Response(orjson.dumps(body), media_type=JSON)

    async def ready(self, request: Request) -> Response:
        state = self.lifecycle.state()
        return Response(orjson.dumps(state), 200 if state["ready"] else 503, media_type=JSON)

    async def metadata(self, request: Request) -> Response:
        return Response(self.follower.current.metadata, media_type=JSON)

    async def version(self, request: Request) -> Response:
        return Response(self.versions, media_type=JSON)

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.openapi, media_type=JSON)

    async def index(self, request: Request) -> Response:
        served = self.follower.current
        if served is not self.page_of:
            self.page, self.page_of = render_page(served.scorer.metadata()), served
        return HTMLResponse(self.page)

    async def metrics_text(self, request: Request) -> Response:
        assert self.metrics is not None
        return Response(
            self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def drift_view(self, request: Request) -> Response:
        assert self.metrics is not None
        body = {"model_version": self.follower.current.version, **self.metrics.drift_view()}
        return Response(orjson.dumps(body), media_type=JSON)
