"""Every error winequality raises on purpose, in one hierarchy.

Each error carries how it reaches people: the exit code the CLI returns, and the HTTP status
and error code the server answers with. The CLI and the server each catch `WinequalityError`
in one place; anything else is a bug and shows as one (a traceback and exit 1 in the CLI, a
logged 500 with a request id in the server).

    WinequalityError
    ├── InputError              the user can fix it: exit 2, HTTP 400
    │   ├── DataError           data cannot be found, fetched or parsed
    │   ├── ParameterError      a setting outside its domain (alpha ≤ 0, an unknown family…)
    │   ├── PayloadError        a request body that is not MLflow's scoring protocol
    │   ├── PayloadTooLarge     HTTP 413
    │   ├── UnsupportedMedia    HTTP 415
    │   ├── SchemaError         data that does not fit the feature schema (every problem): 422
    │   ├── SweepError          a sweep that cannot run as asked (a study made with other settings)
    │   └── PromotionRefused    a version that fails the champion gate's checks: 409
    ├── NotFoundError           a registered model or version that does not exist: exit 2, 404
    ├── TrackingError           the MLflow store or the Optuna storage is unusable: exit 2, 503
    ├── ModelLoadError          a model that does not resolve, or that we do not trust: exit 2, 503
    ├── RequestTimeout          a request not received in full before its deadline: HTTP 504
    ├── ClientGone              the client closed the connection before its answer: HTTP 499
    ├── MissingExtra            a part of winequality this installation lacks (an extra): exit 2
    └── ModelCheckError         a logged model that fails its own round trip: exit 1, 500
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = [
    "ClientGone",
    "DataError",
    "InputError",
    "Issue",
    "MissingExtra",
    "ModelCheckError",
    "ModelLoadError",
    "NotFoundError",
    "ParameterError",
    "PayloadError",
    "PayloadTooLarge",
    "PromotionRefused",
    "RequestTimeout",
    "SchemaError",
    "SweepError",
    "TrackingError",
    "UnsupportedMedia",
    "WinequalityError",
    "first_line",
]


class WinequalityError(Exception):
    """Base of every deliberate error; `str(error)` is the message people read."""

    exit_code = 2
    http_status = 400
    error_code = "BAD_REQUEST"
    closes_connection = False  # the server answers with `Connection: close`

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def summary(self) -> str:
        """The message's first line (an HTTP error's `message`)."""
        return self.message.splitlines()[0].rstrip(":")

    def entries(self) -> list[dict[str, Any]]:
        """Itemised problems for an HTTP error body's `errors` list."""
        return []


class InputError(WinequalityError):
    """Bad input: the user can fix it (exit 2, HTTP 400)."""


class DataError(InputError):
    """Data could not be found, fetched or parsed; the message says what to do."""


class ParameterError(InputError):
    """A setting outside its domain."""


class PayloadError(InputError):
    """A request body that is not in MLflow's scoring protocol (before any value is looked at)."""


class PayloadTooLarge(InputError):
    http_status = 413
    error_code = "PAYLOAD_TOO_LARGE"


class UnsupportedMedia(InputError):
    http_status = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class SweepError(InputError):
    """A sweep that cannot run as asked (e.g. resuming a study made with other settings)."""


class PromotionRefused(InputError):
    """A version that fails the champion gate's checks; the message names each."""

    http_status = 409
    error_code = "PROMOTION_REFUSED"


class NotFoundError(WinequalityError):
    http_status = 404
    error_code = "NOT_FOUND"


class TrackingError(WinequalityError):
    """The MLflow tracking store or the Optuna storage cannot be used; one line says why."""

    http_status = 503
    error_code = "STORE_UNAVAILABLE"


class ModelLoadError(WinequalityError):
    """A model URI that does not resolve, or a model that is not a wine model we can trust."""

    http_status = 503
    error_code = "MODEL_UNAVAILABLE"


class RequestTimeout(WinequalityError):
    """A request whose body (or its turn in the queue) outlived the server's request timeout;
    the connection is closed after the answer (the rest of the body may still be coming)."""

    http_status = 504
    error_code = "REQUEST_TIMEOUT"
    closes_connection = True


class ClientGone(WinequalityError):
    """The client closed its connection mid-request: no one reads the answer, but the access
    log and metrics record it (499, nginx's "client closed request"), and it is not a bug."""

    http_status = 499
    error_code = "CLIENT_CLOSED_REQUEST"


class MissingExtra(WinequalityError):
    """A command or body type that needs an optional part (an extra) this installation lacks."""

    http_status = 415  # the only one a server meets: a body type it cannot read
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class ModelCheckError(WinequalityError):
    """A logged model that did not load back or did not reproduce its own predictions."""

    exit_code = 1
    http_status = 500
    error_code = "MODEL_CHECK_FAILED"


class Issue(Protocol):
    """What SchemaError needs of a problem (winequality.schema.FeatureIssue is one)."""

    @property
    def kind(self) -> str: ...
    @property
    def column(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def rows(self) -> tuple[int, ...]: ...
    @property
    def values(self) -> tuple[Any, ...]: ...
    @property
    def count(self) -> int: ...

    def describe(self, row_label: str = ..., row_offset: int = ..., limit: int = ...) -> str: ...


class SchemaError(InputError):
    """Data that does not fit the feature schema; `issues` lists every problem.

    Files cite line numbers (`row_label="line"`, the header is line 1); HTTP bodies cite
    0-based row positions.
    """

    http_status = 422
    error_code = "INVALID_INPUT"
    max_entries = 1000  # cells listed in an HTTP body; the message still counts them all

    def __init__(
        self,
        issues: Sequence[Issue],
        what: str = "the input",
        row_label: str = "row",
        row_offset: int = 0,
    ) -> None:
        self.issues = list(issues)
        self.what, self.row_label, self.row_offset = what, row_label, row_offset
        total = sum(i.count for i in self.issues)
        lines = [
            f"{what} does not fit the wine feature schema "
            f"({total} problem{'s' if total != 1 else ''}):"
        ]
        lines += [f"  - {i.describe(row_label, row_offset)}" for i in self.issues]
        super().__init__("\n".join(lines))

    def entries(self) -> list[dict[str, Any]]:
        """One entry per offending cell: row (0-based), column, reason and value."""
        entries: list[dict[str, Any]] = []
        for issue in self.issues:
            if not issue.rows:
                entries.append({"row": None, "column": issue.column, "reason": issue.reason})
                continue
            for k, row in enumerate(issue.rows):
                if len(entries) >= self.max_entries:
                    return entries
                entry: dict[str, Any] = {
                    "row": row,
                    "column": issue.column,
                    "reason": issue.reason,
                }
                if k < len(issue.values) and issue.kind != "missing_value":
                    value = issue.values[k]
                    entry["value"] = value if isinstance(value, (int, float, str)) else repr(value)
                entries.append(entry)
        return entries


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a library exception's message (its type name if it has none), capped."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
