"""Schemathesis hooks for winequality's OpenAPI document: bodies that are valid for the server.

JSON Schema cannot say everything the server checks: that a V2 tensor's `data` holds exactly
`prod(shape)` values, that each value lies within its feature's physical range (in an `[N, 11]`
tensor the feature is the position modulo 11), that a `dataframe_split` row has one value per
column, that an object of columns has columns of one length, that free sulfur dioxide never
exceeds the total, or what a valid CSV or Parquet body is. This hook mends each *positive* case
(one the document says must be accepted) to be such a body, keeping what was generated where it
can; negative cases are left as generated, so the server is still checked to refuse them. Use it
with schemathesis's command line too:

    SCHEMATHESIS_HOOKS=tests.schemathesis_hooks schemathesis run \\
        http://127.0.0.1:8080/openapi.json --checks all --max-examples 500
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import schemathesis

from winequality.schema import FEATURE_NAMES, FEATURES, SO2_RULE

LOW = np.array([f.minimum for f in FEATURES])
HIGH = np.array([f.maximum for f in FEATURES])
FREE, TOTAL = (FEATURE_NAMES.index(n) for n in SO2_RULE)
MAX_ROWS = 50  # a generated shape may ask for millions
TYPICAL = [f.typical for f in FEATURES]


def valid_rows(values: list[Any], rows: int) -> np.ndarray:
    """`rows` wines from whatever numbers were generated: cycled, put within each feature's
    range, free sulfur dioxide at most the total."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    cells = np.resize(np.array(numbers or TYPICAL, dtype=np.float64), rows * len(FEATURES))
    matrix = np.clip(cells.reshape(rows, len(FEATURES)), LOW, HIGH)
    matrix[:, FREE] = np.minimum(matrix[:, FREE], matrix[:, TOTAL])
    return matrix


def _mend_v2(body: dict[str, Any]) -> dict[str, Any]:
    inputs = [t for t in body.get("inputs", []) if isinstance(t, dict)]
    if not inputs:
        return body
    values = [v for t in inputs for v in _flat(t.get("data"))]
    if len(inputs) == 1 and inputs[0].get("name") not in FEATURE_NAMES:
        rows = min(MAX_ROWS, max(1, int((inputs[0].get("shape") or [1])[0])))
        matrix = valid_rows(values, rows)
        tensor = {**inputs[0], "shape": [rows, 11], "datatype": "FP64"}
        return {**body, "inputs": [{**tensor, "data": matrix.ravel().tolist()}]}
    rows = min(MAX_ROWS, max(1, int((inputs[0].get("shape") or [1])[0])))
    matrix = valid_rows(values, rows)
    mended = []
    for j, name in enumerate(FEATURE_NAMES):
        template = inputs[j] if j < len(inputs) else inputs[0]
        shape = [rows, 1] if len(template.get("shape") or []) == 2 else [rows]
        mended.append(
            {**template, "name": name, "shape": shape, "datatype": "FP64",
             "data": matrix[:, j].tolist()}
        )  # fmt: skip
    return {**body, "inputs": mended}


def _mend_mlflow(body: dict[str, Any]) -> dict[str, Any]:
    if isinstance(body.get("dataframe_split"), dict):
        split = body["dataframe_split"]
        data = [v for row in split.get("data") or [] for v in _flat(row)]
        rows = max(1, len(split.get("data") or []))
        frame = valid_rows(data, rows)
        return {**body, "dataframe_split": {**split, "columns": list(FEATURE_NAMES),
                                             "data": frame.tolist()}}  # fmt: skip
    for key in ("instances", "inputs"):
        columns = body.get(key)
        if isinstance(columns, dict):  # an object of columns: equal lengths, every feature
            lengths = [len(v) for v in columns.values() if isinstance(v, list)]
            rows = min(MAX_ROWS, max([1, *lengths]))
            values = [v for column in columns.values() for v in _flat(column)]
            frame = valid_rows(values, rows)
            return {**body, key: {n: frame[:, j].tolist() for j, n in enumerate(FEATURE_NAMES)}}
    for key in ("dataframe_records", "instances", "inputs"):
        records = body.get(key)
        if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
            values = [r.get(n) for r in records for n in FEATURE_NAMES]
            frame = valid_rows(values, len(records))
            mended = [{**r, **dict(zip(FEATURE_NAMES, row, strict=True))}
                      for r, row in zip(records, frame.tolist(), strict=True)]  # fmt: skip
            return {**body, key: mended}
    return body


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [v for item in data for v in _flat(item)]
    return [data]


def _csv() -> str:
    return ",".join(f'"{n}"' for n in FEATURE_NAMES) + "\n" + ",".join(map(str, TYPICAL)) + "\n"


def _parquet() -> bytes:
    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame([TYPICAL], columns=list(FEATURE_NAMES)).to_parquet(buffer)
    return buffer.getvalue()


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    if meta is not None and not meta.generation.mode.is_positive:
        return case  # a case meant to be refused stays as generated
    path = case.operation.path
    if path.endswith("/infer") and isinstance(case.body, dict):
        case.body = _mend_v2(case.body)
    elif path == "/invocations":
        if isinstance(case.body, dict):
            case.body = _mend_mlflow(case.body)
        elif case.media_type == "text/csv":
            case.body = _csv()
        elif case.media_type == "application/vnd.apache.parquet":
            case.body = _parquet()
    return case
