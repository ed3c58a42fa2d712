"""MLflow's JSON scoring protocol, and the JSON layouts files may hold.

`dataframe_split`, `dataframe_records`, `instances` and `inputs`, with a numpy fast path for
all-numeric bodies. Files may also hold a bare list of records or pandas' `orient="split"`
layout (`{"columns", "data"}`), which are unambiguous; HTTP bodies speak the protocol exactly,
as MLflow's server does.

Acceptance follows MLflow's own scoring server (numeric strings, booleans and ints convert to
double; extra columns are ignored with a warning), minus values outside the physical ranges.
Problems are cited by 0-based row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from winequality import schema
from winequality.errors import PayloadError
from winequality.io import bulk
from winequality.schema import FEATURE_NAMES, INTERVAL_PARAM, FeatureIssue, Validation

__all__ = [
    "FORMATS",
    "ScoringRequest",
    "collector_paused",
    "file_frame",
    "parse_body",
    "parse_json",
    "parse_payload",
    "parse_request",
    "request_params",
]

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
FEATURE_LIST = list(FEATURE_NAMES)
DATA_ROWS = "dataframe_split.data must be a list of rows (lists)"


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a body is decoded, as it was after.

    A parsed JSON body is thousands of lists (one per row) that hold no cycle, and every 700
    new lists start a collection that walks a heap holding MLflow, pandas and scikit-learn:
    measured, a 10,000-row `dataframe_split` body parses in 18 ms with it on, 3 ms with it off.
    The lists are freed by reference counting once the rows are a matrix, inside the block.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_json(content: bytes, what: str) -> Any:
    """The JSON value of `content`; PayloadError when it is not JSON.

    orjson first; Python's parser, which MLflow's server uses, for what only it reads: the
    `NaN`, `Infinity` and `-Infinity` that `json.dumps` writes (those cells are then refused by
    the schema check, by row and column, like any other bad value).
    """
    import json

    import orjson

    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError):  # (nested past its stack)
            raise PayloadError(f"{what} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class ScoringRequest:
    """A checked body of MLflow's protocol and its `params` (the signature's: `interval`)."""

    checked: Validation
    params: dict[str, Any]


def parse_body(content: bytes, *, allow_out_of_range: bool = False) -> Validation:
    """A request body in MLflow's JSON protocol, checked (its params checked, not returned)."""
    return parse_request(content, allow_out_of_range=allow_out_of_range).checked


def parse_request(content: bytes, *, allow_out_of_range: bool = False) -> ScoringRequest:
    """A request body in MLflow's JSON protocol, checked: `parse_payload(parse_json(...))`,
    except that a large `dataframe_split` body of numbers only is read straight into its
    matrix (`io.bulk`: the same answer, five times faster); with its params."""
    if len(content) >= bulk.MIN_BYTES:
        found = _bulk_split(content, allow_out_of_range)
        if found is not None:
            return found
    payload = parse_json(content, "the body")
    checked = parse_payload(payload, allow_out_of_range=allow_out_of_range)
    return ScoringRequest(checked, request_params(payload.get("params")))


def request_params(params: Any) -> dict[str, Any]:
    """A body's `params`: an object whose keys the model's signature declares."""
    if params is None:
        return {}
    if type(params) is dict and len(params) == 1 and INTERVAL_PARAM in params:
        return params  # the one param there is (checked further once the model is known)
    if not isinstance(params, dict):
        raise PayloadError(f"params must be an object such as {{{INTERVAL_PARAM!r}: 0.9}}")
    unknown = sorted(set(params) - {INTERVAL_PARAM})
    if unknown:
        raise PayloadError(f"unknown params {unknown}; this model takes {INTERVAL_PARAM!r}")
    return params


def _bulk_split(content: bytes, allow_out_of_range: bool) -> ScoringRequest | None:
    """What `_from_rows`' fast path answers, for a body simdjson reads; None for any other."""
    body = bulk.document(content)
    if not bulk.plain_object(body) or [k for k in FORMATS if k in body] != ["dataframe_split"]:
        return None
    split = body["dataframe_split"]
    if not bulk.plain_object(split) or "columns" not in split or "data" not in split:
        return None
    columns = bulk.python(split["columns"])
    if (
        not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or len(set(columns)) != len(columns)
        or not set(FEATURE_LIST) <= set(columns)
    ):
        return None
    matrix = bulk.matrix(split["data"], len(columns))
    # A cell that is itself an array ([3.2]) would be flattened into place: bodies whose only
    # brackets are the columns', the data's and its rows' have none (any other: general path).
    if matrix is None or content.count(b"[") != len(matrix) + 2:
        return None
    if columns != FEATURE_LIST:
        matrix = matrix[:, [columns.index(n) for n in FEATURE_LIST]]
    params = request_params(bulk.python(body["params"]) if "params" in body else None)
    return ScoringRequest(_checked_matrix(matrix, columns, allow_out_of_range), params)


def file_frame(content: bytes, what: str) -> pd.DataFrame:
    """A JSON file's rows as given (every column): the protocol's forms, a bare list of
    records, or pandas' split layout. Raises PayloadError when it is none of them."""
    payload = parse_json(content, what)
    if isinstance(payload, list):
        payload = {"dataframe_records": payload}
    elif (
        isinstance(payload, dict)
        and set(payload) >= {"columns", "data"}
        and not any(k in payload for k in FORMATS)
    ):
        payload = {"dataframe_split": {"columns": payload["columns"], "data": payload["data"]}}
    parse_payload(payload)  # the shape is the protocol's (values are checked by the reader)
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        return pd.DataFrame(split["data"], columns=split["columns"])
    return pd.DataFrame(next(payload[k] for k in FORMATS if k in payload))


def parse_payload(payload: Any, *, allow_out_of_range: bool = False) -> Validation:
    """Check a decoded JSON body in MLflow's scoring protocol; raise PayloadError if malformed."""
    if not isinstance(payload, dict):
        raise PayloadError(
            "the body must be a JSON object with one of the keys " + ", ".join(FORMATS)
        )
    keys = [k for k in FORMATS if k in payload]
    if len(keys) != 1:
        raise PayloadError(
            f"the body must have exactly one of the keys {', '.join(FORMATS)}; "
            f"found {keys if keys else sorted(payload)}"
        )
    form = keys[0]
    body = payload[form]
    if form == "dataframe_split":
        if not isinstance(body, dict) or "data" not in body:
            raise PayloadError("dataframe_split must be an object with 'columns' and 'data'")
        columns, data = body.get("columns"), body["data"]
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise PayloadError("dataframe_split.columns must be a list of column names")
        if not isinstance(data, list):
            raise PayloadError(DATA_ROWS)
        return _from_rows(columns, data, allow_out_of_range)
    if isinstance(body, dict):  # instances/inputs as an object of columns
        return _from_column_dict(body, allow_out_of_range)
    if isinstance(body, list) and all(isinstance(r, dict) for r in body):
        return _from_records(body, allow_out_of_range)
    if isinstance(body, list) and body and all(isinstance(r, list) for r in body):
        raise PayloadError(
            f"{form} rows must name their columns (objects), not be positional "
            "lists; use dataframe_split for column names plus rows"
        )
    raise PayloadError(f"{form} must be a list of records (objects) or an object of columns")


def _fast_matrix(rows: Any, order: np.ndarray | None, width: int) -> np.ndarray | None:
    """All cells numbers (or booleans, which MLflow converts to 1 and 0): one numpy call.

    None unless every row has exactly `width` values; `order` picks the features' columns.
    Text cells, numbers written as text included, go the slow way: numpy would take whatever
    float() takes, and the schema's NUMBER_TEXT says what a number written as text is.
    """
    try:
        found = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return None
    if found.ndim != 2 or found.shape[1] != width or found.dtype.kind not in "biuf":
        return None
    matrix = found.astype(np.float64, copy=False)
    return matrix if order is None else matrix[:, order]


def _from_rows(columns: list[str], data: list[list[Any]], allow_out_of_range: bool) -> Validation:
    if data and len(set(columns)) == len(columns) and set(FEATURE_LIST) <= set(columns):
        order = (
            None if columns == FEATURE_LIST else np.array([columns.index(n) for n in FEATURE_LIST])
        )
        matrix = _fast_matrix(data, order, len(columns))
        if matrix is not None:  # (a row that is not a list never makes a 2-D matrix)
            return _checked_matrix(matrix, columns, allow_out_of_range)
    if not all(isinstance(row, list) for row in data):
        raise PayloadError(DATA_ROWS)
    width = len(columns)
    ragged = [i for i, row in enumerate(data) if len(row) != width]
    if ragged:
        issue = FeatureIssue(
            "bad_row",
            None,
            f"has a different number of values than the {width} columns",
            tuple(ragged),
        )
        return Validation(np.empty((0, len(FEATURE_LIST))), None, errors=[issue])
    cells = np.empty((len(data), width), dtype=object)
    for i, row in enumerate(data):
        for j, cell in enumerate(row):  # element by element: a cell may itself be a list
            cells[i, j] = cell
    return _checked_cells(
        dict(zip(columns, cells.T, strict=True)), columns, len(data), allow_out_of_range
    )


def _checked_matrix(matrix: np.ndarray, names: list[str], allow_out_of_range: bool) -> Validation:
    """Fast-path values check, plus a warning for each column the model will ignore."""
    result = schema.validate_numeric(matrix, allow_out_of_range=allow_out_of_range)
    if names != FEATURE_LIST:  # exactly the features: nothing to warn about
        _, unknown = schema.check_columns(names, require_target=False, unknown="warn")
        result = dataclasses.replace(result, warnings=unknown + result.warnings)
    return result


def _from_records(records: list[dict[str, Any]], allow_out_of_range: bool) -> Validation:
    try:
        rows = [[record[name] for name in FEATURE_LIST] for record in records]
    except KeyError:
        rows = None
    if rows:
        matrix = _fast_matrix(rows, None, len(FEATURE_LIST))
        if matrix is not None:
            extra = sorted({k for r in records for k in r} - set(FEATURE_LIST))
            return _checked_matrix(matrix, FEATURE_LIST + extra, allow_out_of_range)
    names = list(dict.fromkeys(k for record in records for k in record))
    columns = {n: np.array([r.get(n) for r in records], dtype=object) for n in names}
    return _checked_cells(columns, names, len(records), allow_out_of_range)


def _from_column_dict(body: dict[str, Any], allow_out_of_range: bool) -> Validation:
    names = list(body)
    lengths = {len(v) if isinstance(v, list) else -1 for v in body.values()}
    if -1 in lengths or len(lengths) > 1:
        raise PayloadError(
            "an object of columns needs every value to be a list, all of the same length"
        )
    n_rows = lengths.pop() if lengths else 0
    columns = {}
    for name in names:
        column = np.empty(n_rows, dtype=object)
        column[:] = body[name]
        columns[name] = column
    return _checked_cells(columns, names, n_rows, allow_out_of_range)


def _checked_cells(
    columns: Mapping[str, np.ndarray], names: Sequence[str], n_rows: int, allow_out_of_range: bool
) -> Validation:
    """The slow path: cell by cell, converting booleans as MLflow does, naming every problem."""
    converted = {name: _bools_to_float(col) for name, col in columns.items()}
    return schema.validate_columns(
        converted,
        n_rows=n_rows,
        column_order=list(names),
        unknown="warn",
        allow_out_of_range=allow_out_of_range,
    )


def _bools_to_float(column: np.ndarray) -> np.ndarray:
    if column.dtype != object:
        return column
    out = column.copy()
    for i, cell in enumerate(out):
        if isinstance(cell, bool):
            out[i] = float(cell)
    return out
