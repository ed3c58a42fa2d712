"""The Open Inference Protocol's ("V2") inference requests, decoded into one float64 matrix.

Two request forms, told apart by the request itself:

- one tensor per feature, named by the schema's column names, shape `[N]` or `[N, 1]`
  (MLServer's `pd` content type; `parameters.content_type` may say `pd` or be absent);
- one tensor of shape `[N, 11]`, columns in the schema's order (`np`).

FP64, FP32, INT64 and INT32 tensors are widened to the signature's double exactly: an FP32 value
is the float32 the client sent, widened; an INT64 beyond 2^53 (which a double cannot hold) is
refused by row and column, not rounded. Other datatypes are refused by name. Values then go
through the feature schema's validator, as every other input does. Problems with the request's
shape are PayloadError (400); values that break the schema are SchemaError, by row and column.
Knows nothing about HTTP or models.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from winequality import schema
from winequality.errors import PayloadError, SchemaError
from winequality.io import bulk, protocol
from winequality.schema import FEATURE_NAMES, FeatureIssue, Validation

__all__ = ["DATATYPES", "OUTPUT", "InferenceRequest", "parse_inference_request"]

OUTPUT = "predictions"  # the one output tensor: FP64, shape [N]
_BOUND = re.compile(r"(lower|upper)_[0-9.]+")  # an interval's bounds (intervals.bound_names)
DATATYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32}
EXACT_INTEGER = 2**53  # beyond it, a double does not hold every integer
WIDTH = len(FEATURE_NAMES)


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded, checked inference request."""

    features: np.ndarray  # (N, 11) float64, schema order
    warnings: list[FeatureIssue]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # the outputs asked for, each once, in order (): all


def parse_inference_request(
    content: bytes, *, allow_out_of_range: bool = False
) -> InferenceRequest:
    """Decode and check a V2 inference request body; raise PayloadError or SchemaError."""
    with protocol.collector_paused():  # (the tensors' lists, once they are a matrix, are gone)
        payload = _bulk_payload(content) if len(content) >= bulk.MIN_BYTES else None
        if payload is None:
            payload = protocol.parse_json(content, "the body")
        return _decoded(payload, allow_out_of_range)


def _bulk_payload(content: bytes) -> dict[str, Any] | None:
    """The request as `parse_json` reads it, but each tensor's data already an array of
    doubles (`io.bulk`), for a large body whose tensors are FP64 or FP32 numbers only; None
    for any other body (read the general way, which names every problem)."""
    body = bulk.document(content)
    if not bulk.plain_object(body) or "inputs" not in body:
        return None
    payload = {key: bulk.python(body[key]) for key in body if key != "inputs"}
    tensors = bulk.elements(body["inputs"])
    if tensors is None:
        return None
    payload["inputs"] = []
    for tensor in tensors:
        if not bulk.plain_object(tensor) or "data" not in tensor:
            return None
        described = {key: bulk.python(tensor[key]) for key in tensor if key != "data"}
        shape = described.get("shape")
        if described.get("datatype") not in _PLAIN or not (
            isinstance(shape, list) and shape and all(type(d) is int and d >= 0 for d in shape)
        ):
            return None  # (INT64 cells must stay whole numbers to be checked against 2^53)
        data = bulk.numbers(tensor["data"], math.prod(shape))
        if data is None:
            return None
        payload["inputs"].append({**described, "data": data})
    return payload


def _decoded(payload: Any, allow_out_of_range: bool) -> InferenceRequest:
    if not isinstance(payload, dict):
        raise PayloadError("an inference request is a JSON object with an 'inputs' list")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise PayloadError("'id' must be a string")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise PayloadError("'parameters' must be an object")
    outputs = _outputs(payload.get("outputs"))
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise PayloadError("'inputs' must be a non-empty list of tensors")
    matrix = _plain_named_form(inputs)
    if matrix is not None:
        checked = schema.validate_numeric(matrix, allow_out_of_range=allow_out_of_range)
    else:
        tensors = [_Tensor.of(t, i) for i, t in enumerate(inputs)]
        checked = _checked_tensors(tensors, allow_out_of_range)
    if not checked.ok:
        raise SchemaError(checked.errors, what="the input")
    return InferenceRequest(checked.features, checked.warnings, request_id, parameters, outputs)


def _checked_tensors(tensors: list[_Tensor], allow_out_of_range: bool) -> Validation:
    """The general way: either form, any datatype, every problem named."""
    names = [t.name for t in tensors]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PayloadError(f"tensor names must be unique; repeated: {', '.join(duplicated)}")
    if len(tensors) == 1 and len(tensors[0].shape) == 2 and tensors[0].name not in FEATURE_NAMES:
        return _matrix_form(tensors[0], allow_out_of_range)
    return _named_form(tensors, allow_out_of_range)


def _plain_named_form(inputs: list[Any]) -> np.ndarray | None:
    """The request clients send most (MLServer's `pd` form, as KServe's and MLServer's own
    examples write it), decoded in one numpy call: eleven tensors, one per feature, each name
    once, FP64 or FP32, the same shape `[N]` or `[N, 1]`, numbers only. None for anything
    else, which the general path then decodes, naming every problem."""
    if len(inputs) != WIDTH:
        return None
    try:
        by_name = {tensor["name"]: tensor for tensor in inputs}
        ordered = [by_name[name] for name in FEATURE_NAMES]
        shape = ordered[0]["shape"]
        if not (
            isinstance(shape, list)
            and len(shape) in (1, 2)
            and shape[0] >= 0
            and (len(shape) == 1 or shape[1] == 1)
            and all(t["shape"] == shape and t["datatype"] in _PLAIN for t in ordered)
            and all(type(d) is int for t in ordered for d in t["shape"])  # ([2.0] == [2])
            and all(type(t["data"]) in (list, np.ndarray) for t in ordered)
        ):
            return None
        values = np.asarray([t["data"] for t in ordered])
    except (TypeError, KeyError, ValueError, OverflowError):  # not this form, or ragged
        return None
    # numpy reads true as 1: data that held a boolean go the general way, which names it
    # (checked once numpy has read them: at most 64 levels deep, no recursion limit near)
    if values.dtype.kind == "f" and any(
        type(t["data"]) is list and _holds_bool(t["data"]) for t in ordered
    ):
        return None
    rows = shape[0]
    if values.dtype.kind != "f" or values.size != WIDTH * rows or values.ndim > len(shape) + 1:
        return None
    values = values.reshape(WIDTH, rows)
    for j, tensor in enumerate(ordered):
        if tensor["datatype"] == "FP32":
            values[j] = values[j].astype(np.float32)  # the float32 the client meant, widened
    return np.ascontiguousarray(values.T)


_PLAIN = ("FP64", "FP32")


def _outputs(asked: Any) -> tuple[str, ...]:
    if asked is None:
        return ()
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise PayloadError("'outputs' must be a list of objects with a 'name'")
    names = tuple(o.get("name") for o in asked)
    unknown = [n for n in names if n != OUTPUT and not _BOUND.fullmatch(str(n))]
    if unknown:
        raise PayloadError(
            f"unknown output {unknown[0]!r}: this model has {OUTPUT!r}, and with "
            "parameters {'interval': 0.9}, 'lower_0.9' and 'upper_0.9'"
        )
    return tuple(dict.fromkeys(names))  # each once, in the order first asked


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: Any

    @classmethod
    def of(cls, tensor: Any, position: int) -> _Tensor:
        where = f"input {position}"
        if not isinstance(tensor, dict):
            raise PayloadError(f"{where} must be an object (name, shape, datatype, data)")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise PayloadError(f"{where} needs a 'name' (a string)")
        where = f"input {name!r}"
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise PayloadError(f"{where}: 'shape' must be a list of non-negative integers")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise PayloadError(
                f"{where}: datatype {datatype!r} is not accepted; send "
                f"{', '.join(DATATYPES)} (the model takes doubles)"
            )
        if "data" not in tensor:
            raise PayloadError(f"{where} has no 'data'")
        return cls(name, tuple(shape), datatype, tensor["data"])

    def values(self) -> np.ndarray:
        """The data, flattened in row-major order, as the datatype says (object if a cell is
        not a number: the validator then names it)."""
        count = math.prod(self.shape)
        if isinstance(self.data, np.ndarray):  # doubles already (io.bulk read them)
            values = self.data
        elif not isinstance(self.data, list):
            raise PayloadError(f"input {self.name!r}: 'data' must be a list")
        else:
            try:  # numbers (nested lists of equal lengths): numpy in one call
                values = np.asarray(self.data)
            except (TypeError, ValueError, OverflowError):
                values = np.empty(0, dtype=object)
            if values.dtype.kind in "iuf" and _holds_bool(self.data):
                values = np.empty(0, dtype=object)  # (numpy would have read true as 1)
        if values.dtype.kind not in "iuf" or (values.size == 0 and count):
            values = _cells(self.data)  # null, text, booleans, ragged lists: cell by cell
        elif self.datatype == "FP32":
            # the float32 the client meant, then widened; one beyond float32 becomes inf, which
            # the validator refuses by row and column (no warning: it is the input's, not ours)
            with np.errstate(over="ignore"):
                values = values.astype(np.float32)
        values = values.reshape(-1)
        if values.size != count:
            raise PayloadError(
                f"input {self.name!r}: shape {list(self.shape)} needs {count} values, "
                f"'data' holds {values.size}"
            )
        return values


def _holds_bool(data: list[Any]) -> bool:
    """Whether (nested) data hold a JSON true or false, which numpy would read as 1 or 0."""
    for value in data:
        if value is True or value is False or (type(value) is list and _holds_bool(value)):
            return True
    return False


def _cells(data: Any) -> np.ndarray:
    """Nested lists flattened cell by cell (a cell may be null, a string, a list…)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for cell in stack[-1]:
            if isinstance(cell, list):
                stack.append(iter(cell))
                break
            flat.append(cell)
        else:
            stack.pop()
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out


def _inexact(values: np.ndarray, datatype: str, column: str | None) -> list[FeatureIssue]:
    """INT64 cells a double cannot hold exactly, by position."""
    if datatype != "INT64":
        return []
    if values.dtype == object:
        too_big = [isinstance(v, int) and abs(v) > EXACT_INTEGER for v in values.tolist()]
        rows = np.flatnonzero(np.array(too_big, dtype=bool))
    elif values.dtype.kind in "iu":
        rows = np.flatnonzero(np.abs(values) > EXACT_INTEGER)
    else:
        return []
    if not rows.size:
        return []
    return [
        FeatureIssue(
            "not_numeric",
            column,
            "beyond 2^53: a double cannot hold this INT64 exactly",
            tuple(rows.tolist()),
            tuple(values[rows[: schema.SAMPLE_VALUES]].tolist()),
        )
    ]


def _matrix_form(tensor: _Tensor, allow_out_of_range: bool) -> Validation:
    rows, width = tensor.shape
    if width != WIDTH:
        raise PayloadError(
            f"input {tensor.name!r}: shape {list(tensor.shape)}; a single tensor holds every "
            f"feature: shape [N, {WIDTH}], columns in the schema's order"
        )
    values = tensor.values()
    inexact: list[FeatureIssue] = []
    if tensor.datatype == "INT64":  # the only datatype a double may not hold exactly
        for j, name in enumerate(FEATURE_NAMES):
            inexact += _inexact(values[j::WIDTH], tensor.datatype, name)
    if values.dtype == object:  # a cell that is not a number: name it by row and column
        columns = {n: values[j::WIDTH] for j, n in enumerate(FEATURE_NAMES)}
        checked = schema.validate_columns(
            columns,
            n_rows=rows,
            allow_out_of_range=allow_out_of_range,
            unknown="error",
            allow_text=False,  # a V2 tensor's data are numbers, as its datatype says
        )
    else:
        matrix = values.astype(np.float64, copy=False).reshape(rows, WIDTH)  # row-major already
        checked = schema.validate_numeric(matrix, allow_out_of_range=allow_out_of_range)
    return _with_inexact(checked, inexact)


def _named_form(tensors: list[_Tensor], allow_out_of_range: bool) -> Validation:
    rows: set[int] = set()
    columns: dict[str, np.ndarray] = {}
    inexact: list[FeatureIssue] = []
    for tensor in tensors:
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise PayloadError(
                f"input {tensor.name!r}: shape {list(tensor.shape)}; a feature's tensor has "
                f"shape [N] or [N, 1] (or send one tensor of shape [N, {WIDTH}])"
            )
        rows.add(tensor.shape[0])
        values = tensor.values()
        inexact += _inexact(values, tensor.datatype, tensor.name)
        columns[tensor.name] = values if values.dtype == object else values.astype(np.float64)
    if len(rows) > 1:
        raise PayloadError(
            f"every feature's tensor must have the same number of rows; found {sorted(rows)}"
        )
    checked = schema.validate_columns(
        columns,
        n_rows=rows.pop(),
        column_order=[t.name for t in tensors],
        unknown="error",
        allow_out_of_range=allow_out_of_range,
        allow_text=False,
    )
    return _with_inexact(checked, inexact)


def _with_inexact(checked: Validation, inexact: list[FeatureIssue]) -> Validation:
    """The schema's check, with the INT64 cells a double cannot hold listed first."""
    if not inexact:
        return checked
    return Validation(checked.features, None, errors=inexact + checked.errors)
