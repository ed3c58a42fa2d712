"""Pure ASGI middleware: the bearer token, checked before anything else runs.

The probes (`open_paths`) need no token, so that an orchestrator can check the server without
holding the secret. The token is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from typing import Any

from winequality.serving.http import error_body, send_json
from winequality.serving.recorder import header

__all__ = ["UNAUTHORIZED", "Door"]

UNAUTHORIZED = error_body(
    "UNAUTHORIZED", "this server needs a bearer token (Authorization: Bearer …)"
)
CHALLENGE = [(b"www-authenticate", b'Bearer realm="winequality"')]


class Door:
    def __init__(self, app: Any, *, token: str, open_paths: Collection[str]) -> None:
        self.app, self.open_paths = app, frozenset(open_paths)
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, UNAUTHORIZED, CHALLENGE)

    def _authorized(self, scope: Any) -> bool:
        given = header(scope, b"authorization")
        return given is not None and hmac.compare_digest(given.encode(), self.expected)
