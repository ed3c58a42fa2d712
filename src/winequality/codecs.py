"""Decoders and encoders: bytes or a file + a media type → a validated frame, and back.

One module owns how wine measurements arrive and leave, so that batch scoring (`predict`), the
REST server (`serve`) and Spark agree on every input. One decoder per media type, in the
manner of MLServer's codecs:

- `text/csv`: the CSV layouts `data` reads (`,` or `;`, decimal commas), cells checked one by one;
- `application/vnd.apache.parquet`;
- `application/json`: MLflow's scoring protocol (`dataframe_split`, `dataframe_records`,
  `instances`, `inputs`), with a numpy fast path for all-numeric bodies. Files may also hold a
  bare list of records or pandas' `orient="split"` layout (`{"columns", "data"}`), which are
  unambiguous; HTTP bodies speak the protocol exactly, as MLflow's server does.

Acceptance follows MLflow's own scoring server (numeric strings, booleans and ints convert to
double; extra columns are ignored with a warning), minus values outside the physical ranges.
Problems in files are cited by line (CSV) or 0-based row (Parquet, JSON); in HTTP bodies by
0-based row. Knows nothing about models or HTTP.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winequality import schema
from winequality.data import atomic_write, read_bytes, read_table
from winequality.errors import DataError, PayloadError, SchemaError, first_line
from winequality.schema import FEATURE_NAMES, FeatureIssue, Validation

__all__ = [
    "CSV",
    "EXTENSIONS",
    "FORMATS",
    "JSON",
    "MEDIA_TYPES",
    "PARQUET",
    "STDIO",
    "Decoded",
    "decode",
    "decode_file",
    "encode",
    "media_type_for",
    "parse_payload",
    "sniff",
    "write_file",
]

CSV = "text/csv"
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = (JSON, CSV, PARQUET)
EXTENSIONS = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET, ".json": JSON}
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
FEATURE_LIST = list(FEATURE_NAMES)


@dataclass(frozen=True)
class Decoded:
    """Checked features, and the input's own columns when the caller keeps them."""

    validation: Validation
    frame: pd.DataFrame | None  # the rows as given (all columns), if asked for
    row_label: str  # how problems cite rows: "line" (CSV files) or "row" (0-based)
    row_offset: int
    what: str  # what the input is called in messages: a path, "standard input", "the body"

    def raise_for_errors(self, what: str | None = None) -> None:
        """SchemaError listing every problem, if any (`what` renames the input)."""
        if not self.validation.ok:
            raise SchemaError(
                self.validation.errors,
                what=what or self.what,
                row_label=self.row_label,
                row_offset=self.row_offset,
            )


def media_type_for(path: Path) -> str:
    """The media type a file's extension names; an unknown extension is refused."""
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(EXTENSIONS)
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(none)'!r}; winequality reads and "
            f"writes {known}"
        ) from None


def decode(
    content: bytes,
    media_type: str,
    *,
    what: str = "the input",
    allow_out_of_range: bool = False,
    keep_frame: bool = False,
    from_file: bool = False,
) -> Decoded:
    """Decode and validate one body or file; raise DataError/PayloadError if unreadable.

    Values that break the schema do not raise: they are in `validation.errors`.
    """
    if media_type == JSON:
        return _decode_json(content, what, allow_out_of_range, keep_frame, from_file)
    if media_type == CSV:
        frame = read_table(content, what).frame
        label, offset = ("line", 2) if from_file else ("row", 0)
    elif media_type == PARQUET:
        try:
            frame = pd.read_parquet(io.BytesIO(content))
        except Exception as exc:
            raise DataError(f"{what} is not readable Parquet: {first_line(exc)}") from exc
        label, offset = "row", 0
    else:
        raise DataError(f"unsupported media type {media_type!r}; use {', '.join(MEDIA_TYPES)}")
    checked = schema.validate_columns(frame, unknown="warn", allow_out_of_range=allow_out_of_range)
    return Decoded(checked, frame if keep_frame else None, label, offset, what)


STDIO = Path("-")  # `--input -` / `--output -`: standard input or output, as Unix tools do


def sniff(content: bytes) -> str:
    """The media type of unnamed bytes (standard input): Parquet's magic, JSON's bracket, CSV."""
    if content[:4] == b"PAR1":
        return PARQUET
    return JSON if content.lstrip()[:1] in (b"{", b"[") else CSV


def decode_file(path: Path, *, allow_out_of_range: bool = False) -> Decoded:
    """Read a CSV, Parquet or JSON file (by extension; `-` is standard input, its format
    sniffed) and validate it, keeping its columns."""
    if path == STDIO:
        import sys

        content = sys.stdin.buffer.read()
        media_type, what = sniff(content), "standard input"
    else:
        media_type, what = media_type_for(path), str(path)
        if not path.is_file():
            raise DataError(f"no such input file: {path}")
        content = read_bytes(path)
    return decode(
        content,
        media_type,
        what=what,
        allow_out_of_range=allow_out_of_range,
        keep_frame=True,
        from_file=True,
    )


def _decode_json(
    content: bytes, what: str, allow_out_of_range: bool, keep_frame: bool, from_file: bool
) -> Decoded:
    import orjson

    try:
        payload = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        payload = _lenient_json(content)  # NaN, Infinity: as MLflow's server parses them
        if payload is _INVALID:
            raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    if from_file:  # files may hold what pandas and people write; both are unambiguous
        if isinstance(payload, list):
            payload = {"dataframe_records": payload}
        elif (
            isinstance(payload, dict)
            and set(payload) >= {"columns", "data"}
            and not any(k in payload for k in FORMATS)
        ):
            payload = {"dataframe_split": {"columns": payload["columns"], "data": payload["data"]}}
    checked = parse_payload(payload, allow_out_of_range=allow_out_of_range)
    frame = _payload_frame(payload) if keep_frame else None
    return Decoded(checked, frame, "row", 0, what)


_INVALID = object()


def _lenient_json(content: bytes) -> Any:
    """Python's JSON parser, which MLflow's server uses: it also reads the `NaN`, `Infinity`
    and `-Infinity` that `json.dumps` writes. Those cells are then refused by the schema
    check, by row and column, like any other bad value."""
    import json

    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return _INVALID


def _payload_frame(payload: dict[str, Any]) -> pd.DataFrame:
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        return pd.DataFrame(split["data"], columns=split["columns"])
    body = next(payload[k] for k in FORMATS if k in payload)
    return pd.DataFrame(body)


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------


def encode(frame: pd.DataFrame, media_type: str) -> bytes:
    """A frame as CSV, Parquet or JSON records."""
    if media_type == CSV:
        return frame.to_csv(index=False).encode()
    if media_type == PARQUET:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    import orjson

    return orjson.dumps(
        frame.to_dict(orient="records"), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2
    )


def write_file(frame: pd.DataFrame, path: Path) -> None:
    """Write by extension, atomically: a reader never sees a partial file."""
    media_type = media_type_for(path)
    with atomic_write(path) as partial:
        partial.write_bytes(encode(frame, media_type))


# ---------------------------------------------------------------------------------------------
# MLflow's JSON scoring protocol
# ---------------------------------------------------------------------------------------------


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
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise PayloadError("dataframe_split.data must be a list of rows (lists)")
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
    """All cells numbers (or numeric strings/booleans, as MLflow converts them): one numpy call.

    None unless every row has exactly `width` values; `order` picks the features' columns.
    """
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if matrix.ndim != 2 or matrix.shape[1] != width:
        return None
    return matrix if order is None else matrix[:, order]


def _from_rows(columns: list[str], data: list[list[Any]], allow_out_of_range: bool) -> Validation:
    if data and len(set(columns)) == len(columns) and set(FEATURE_LIST) <= set(columns):
        order = (
            None if columns == FEATURE_LIST else np.array([columns.index(n) for n in FEATURE_LIST])
        )
        matrix = _fast_matrix(data, order, len(columns))
        if matrix is not None:
            return _checked_matrix(matrix, columns, allow_out_of_range)
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
