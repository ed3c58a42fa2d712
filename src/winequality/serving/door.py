"""Pure ASGI middleware: the bearer token, checked before anything else runs.

The probes (`open_paths`) need no token, so that an orchestrator can check the server without
holding the secret. The token is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from typing import Any

from winequality.serving.http import error_body, is_v2, send_json, v2_error_body
from winequality.serving.recorder import header

__all__ = ["NEEDS_TOKEN", "UNAUTHORIZED", "V2_UNAUTHORIZED", "Door"]

NEEDS_TOKEN = "this server needs a bearer token (Authorization: Bearer …)"
UNAUTHORIZED = error_body("UNAUTHORIZED", NEEDS_TOKEN)
V2_UNAUTHORIZED = v2_error_body(NEEDS_TOKEN)
CHALLENGE = [(b"www-authenticate", b'Bearer realm="winequality"')]


class Door:
    def __init__(self, app: Any, *, token: str, open_paths: Collection[str]) -> None:
        self.app, self.open_paths = app, frozenset(open_paths)
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        body = V2_UNAUTHORIZED if is_v2(scope["path"]) else UNAUTHORIZED
        await send_json(send, 401, body, CHALLENGE)

    def _authorized(self, scope: Any) -> bool:
        given = header(scope, b"authorization")
        return given is not None and hmac.compare_digest(given.encode(), self.expected)
