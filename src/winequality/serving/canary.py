"""A canary: a sticky share of the requests answered by a second model.

`serve --canary models:/wine-quality@challenger --canary-fraction 0.05` answers about 5 % of
the clients with the challenger instead of the champion, on both protocols. Which clients is
decided by a hash of a request header naming the client (`--canary-header`, X-Client-Id by
default), so a client always gets the same model while the fraction and its id stay the same;
a request without that header is hashed on its request id instead (its own draw, not sticky).
Every scored answer says which model answered: `X-Model-Version` (and the V2 body's
`model_version`).

The canary follows its alias like the champion (the same follower), and a canary that
cannot load stops the start: it answers users, unlike a shadow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from winequality.serving.follower import ModelFollower, ServedModel
from winequality.serving.http import REQUEST_ID_KEY
from winequality.serving.recorder import header

if TYPE_CHECKING:
    from winequality.serving.metrics import ServerMetrics

__all__ = ["Canary", "CanarySettings", "share"]

DEFAULT_HEADER = "X-Client-Id"
_PERSON = b"winequality-can"  # the same client lands in the same arm on every worker
_SPAN = float(1 << 64)


@dataclass(frozen=True)
class CanarySettings:
    model_uri: str
    fraction: float = 0.05  # of the clients (of the requests, for those without the header)
    header: str = DEFAULT_HEADER


def share(key: str) -> float:
    """Where `key` falls in [0, 1): uniform over keys, the same on every run and worker."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, person=_PERSON)
    return int.from_bytes(digest.digest(), "big") / _SPAN


class Canary:
    """The canary model (followed) and which requests it answers."""

    def __init__(
        self, settings: CanarySettings, follower: ModelFollower, metrics: ServerMetrics | None
    ) -> None:
        if not 0.0 < settings.fraction < 1.0:
            raise ValueError("the canary fraction must be within (0, 1)")
        self.settings, self.follower = settings, follower
        self.header = settings.header.lower().encode("latin-1")
        self.answered = {"champion": 0, "canary": 0}  # this worker's
        # bound once: the request path pays one increment
        self._routed = (
            {arm: metrics.routed.labels(arm) for arm in self.answered} if metrics else None
        )

    def pick(self, scope: Any, champion: ServedModel) -> ServedModel:
        """The model that answers this request."""
        key = header(scope, self.header) or scope[REQUEST_ID_KEY]
        arm = "canary" if share(key) < self.settings.fraction else "champion"
        self.answered[arm] += 1
        if self._routed is not None:
            self._routed[arm].inc()
        return self.follower.current if arm == "canary" else champion

    def state(self) -> dict[str, Any]:
        """What /health says of the canary."""
        return {
            "model_uri": self.follower.model_uri,
            "model_version": self.follower.current.version,
            "fraction": self.settings.fraction,
            "header": self.settings.header,
            "answered": dict(self.answered),
            "last_reload_failure": self.follower.failure,
        }
