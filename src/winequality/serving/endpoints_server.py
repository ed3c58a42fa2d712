"""What the server says about itself: health, the model's metadata, versions, its OpenAPI
document, the prediction page, Prometheus metrics and the drift view."""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from winequality.serving.canary import Canary
from winequality.serving.documents import openapi_document, render_page
from winequality.serving.follower import ModelFollower, ServedModel, iso_time
from winequality.serving.http import JSON
from winequality.serving.lifecycle import Lifecycle
from winequality.serving.metrics import ServerMetrics
from winequality.serving.shadow import Shadow

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
        shadow: Shadow | None = None,
        canary: Canary | None = None,
    ) -> None:
        self.follower, self.lifecycle, self.metrics = follower, lifecycle, metrics
        self.shadow, self.canary = shadow, canary
        versions = {
            "winequality": version("winequality"),
            "mlflow": version("mlflow-skinny"),  # the `mlflow` module, whichever install
            "scikit-learn": version("scikit-learn"),
        }
        self.versions = orjson.dumps(versions)
        self.model_name, self.release = model_name, versions["winequality"]
        # the documents of the model served, built again when the registry swaps it
        self.documents_of: ServedModel | None = None
        self._documents()

    def _documents(self) -> tuple[bytes, str]:
        """The OpenAPI document (its interval levels are the model's) and the page."""
        served = self.follower.current
        if served is not self.documents_of:
            calibrated = served.scorer.model.intervals
            self.openapi = orjson.dumps(
                openapi_document(
                    self.follower.model_uri,
                    self.release,
                    self.model_name,
                    calibrated.levels if calibrated else (),
                )
            )
            self.page = render_page(served.scorer.metadata())
            self.documents_of = served
        return self.openapi, self.page

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
        if self.shadow is not None:
            body["shadow"] = self.shadow.state()
        if self.canary is not None:
            body["canary"] = self.canary.state()
        return Response(orjson.dumps(body), media_type=JSON)

    async def ready(self, request: Request) -> Response:
        state = self.lifecycle.state()
        return Response(orjson.dumps(state), 200 if state["ready"] else 503, media_type=JSON)

    async def metadata(self, request: Request) -> Response:
        return Response(self.follower.current.metadata, media_type=JSON)

    async def version(self, request: Request) -> Response:
        return Response(self.versions, media_type=JSON)

    async def openapi_json(self, request: Request) -> Response:
        return Response(self._documents()[0], media_type=JSON)

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self._documents()[1])

    async def metrics_text(self, request: Request) -> Response:
        assert self.metrics is not None
        return Response(
            self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def drift_view(self, request: Request) -> Response:
        assert self.metrics is not None
        body = {"model_version": self.follower.current.version, **self.metrics.drift_view()}
        return Response(orjson.dumps(body), media_type=JSON)
