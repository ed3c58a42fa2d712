"""Batch scoring with full validation, and the pieces the REST server shares with it.

- `load_scorer(uri)` resolves any MLflow model URI, checks that the model's signature is the
  wine schema's, and loads the skops file with *our* allow-list of types (MLflow would trust the
  list stored inside the model file). Linear pipelines are folded into one weight vector so a
  request costs a dot product.
- `parse_payload(obj)` turns MLflow's JSON scoring protocol (`dataframe_split`,
  `dataframe_records`, `instances`, `inputs`) into checked features, with a numpy fast path.
- `predict_file(...)` scores CSV/Parquet/JSON files and writes the output atomically, or nothing.

Acceptance follows MLflow's own scoring server (numeric strings, booleans and ints convert to
double; extra columns are ignored with a warning), minus values outside the physical ranges.
Knows nothing about HTTP.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from winequality import schema
from winequality.errors import first_line
from winequality.model import TRUSTED_TYPES
from winequality.schema import FEATURE_NAMES, FeatureIssue, SchemaError, Validation

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
FEATURE_LIST = list(FEATURE_NAMES)


class ModelLoadError(RuntimeError):
    """The model URI does not resolve, or the model is not a wine-quality model we can trust."""


class PayloadError(ValueError):
    """The request is not in MLflow's scoring protocol (before any value is looked at)."""


@dataclass
class Scorer:
    """A loaded wine-quality model, ready to score validated (n, 11) float64 matrices."""

    model_uri: str
    estimator: Any
    run_id: str | None
    model_id: str | None
    signature: dict[str, Any]
    input_example: pd.DataFrame | None
    weights: np.ndarray | None = None  # set when the pipeline folds into x @ w + b
    bias: float = 0.0
    flavor: dict[str, Any] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.weights is not None:
            return features @ self.weights + self.bias
        import sklearn

        with warnings.catch_warnings(), sklearn.config_context(assume_finite=True):
            # fitted on a named frame; the matrix is already in schema order and validated
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(self.estimator.predict(features), dtype=np.float64).ravel()

    def metadata(self) -> dict[str, Any]:
        example = None
        if self.input_example is not None:
            example = {
                "columns": list(self.input_example.columns),
                "data": self.input_example.to_numpy().tolist(),
            }
        return {
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "model_id": self.model_id,
            "estimator": type(self.estimator).__name__
            + (
                f"({', '.join(n for n, _ in self.estimator.steps)})"
                if hasattr(self.estimator, "steps")
                else ""
            ),
            "signature": self.signature,
            "input_example": example,
            "features": schema.feature_table(),
            "target": {
                "name": schema.TARGET.name,
                "description": schema.TARGET.description,
                "minimum": schema.TARGET.minimum,
                "maximum": schema.TARGET.maximum,
            },
        }


def load_scorer(model_uri: str, tracking_uri: str | None = None) -> Scorer:
    """Resolve `runs:/…`, `models:/name@alias`, `models:/name/N`, `models:/m-…` or a folder."""
    import mlflow
    from mlflow.models import Model

    from winequality import tracking

    if not Path(model_uri).expanduser().is_dir():
        tracking.connect(tracking_uri)  # registry and run URIs need the store
    try:
        local = Path(model_uri).expanduser()
        if not local.is_dir():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        meta = Model.load(str(local))
    except Exception as exc:
        first = first_line(exc)
        raise ModelLoadError(f"cannot load model {model_uri}: {first}") from exc
    flavor = meta.flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(
            f"{model_uri} is not a scikit-learn model (flavors: {', '.join(meta.flavors)})"
        )
    if flavor.get("serialization_format") != "skops":
        raise ModelLoadError(
            f"{model_uri} is stored as {flavor.get('serialization_format')!r}; "
            "winequality only loads the safe 'skops' format "
            "(retrain it with `winequality train`)"
        )
    _check_signature(model_uri, meta.signature)
    estimator = _load_skops(local / flavor["pickled_model"], model_uri)
    example = meta.load_input_example(str(local))
    scorer = Scorer(
        model_uri=model_uri,
        estimator=estimator,
        run_id=meta.run_id,
        model_id=getattr(meta, "model_id", None),
        signature=meta.signature.to_dict() if meta.signature else {},
        input_example=pd.DataFrame(example) if example is not None else None,
        flavor=flavor,
    )
    folded = fold_linear(estimator)
    if folded is not None:
        scorer.weights, scorer.bias = folded
    return scorer


def _check_signature(model_uri: str, signature: Any) -> None:
    if signature is None:
        raise ModelLoadError(
            f"{model_uri} has no signature; winequality serves only models "
            "whose inputs are the wine feature schema"
        )
    names = signature.inputs.input_names()
    types = {spec["type"] for spec in signature.inputs.to_dict()}
    if list(names) != FEATURE_LIST or types != {"double"}:
        raise ModelLoadError(
            f"{model_uri} has a signature that is not the wine feature schema (inputs {names})"
        )


def _load_skops(path: Path, model_uri: str) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    unknown = sorted(set(untrusted) - TRUSTED_TYPES)  # our list, not the one in the file
    if unknown:
        raise ModelLoadError(
            f"{model_uri} contains types winequality does not trust: {', '.join(unknown)}"
        )
    return skops.io.load(path, trusted=untrusted)


def fold_linear(estimator: Any) -> tuple[np.ndarray, float] | None:
    """Fold [StandardScaler] + linear model into (w, b) with x @ w + b equal to predict(x)."""
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    *before, last = steps
    if type(last) not in (ElasticNet, Lasso, Ridge, LinearRegression):
        return None
    weights = np.asarray(last.coef_, dtype=np.float64).ravel().copy()
    bias = float(np.ravel(last.intercept_)[0])
    for step in reversed(before):
        if type(step) is not StandardScaler:
            return None
        scale = step.scale_ if step.with_std and step.scale_ is not None else 1.0
        mean = step.mean_ if step.with_mean and step.mean_ is not None else 0.0
        weights = weights / scale
        bias -= float(np.dot(mean * np.ones_like(weights), weights))
    return weights, bias


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


def _from_rows(columns: list[str], data: list[list[Any]], allow: bool) -> Validation:
    if data and len(set(columns)) == len(columns) and set(FEATURE_LIST) <= set(columns):
        order = (
            None if columns == FEATURE_LIST else np.array([columns.index(n) for n in FEATURE_LIST])
        )
        matrix = _fast_matrix(data, order, len(columns))
        if matrix is not None:
            return _checked_matrix(matrix, columns, allow)
    width = len(columns)
    ragged = [i for i, row in enumerate(data) if len(row) != width]
    if ragged:
        issue = FeatureIssue(
            "bad_row",
            None,
            f"has a different number of values than the {width} columns",
            tuple(ragged),
        )
        return Validation(np.empty((0, len(FEATURE_LIST))), None, errors=[issue], n_rows=len(data))
    cells = np.empty((len(data), width), dtype=object)
    for i, row in enumerate(data):
        for j, cell in enumerate(row):  # element by element: a cell may itself be a list
            cells[i, j] = cell
    return _lenient(dict(zip(columns, cells.T, strict=True)), columns, len(data), allow)


def _checked_matrix(matrix: np.ndarray, names: list[str], allow: bool) -> Validation:
    """Fast-path values check, plus a warning for each column the model will ignore."""
    result = schema.validate_numeric(matrix, allow_out_of_range=allow)
    if names != FEATURE_LIST:  # exactly the features: nothing to warn about
        _, unknown = schema.check_columns(names, require_target=False, unknown="warn")
        result.warnings = unknown + result.warnings
    return result


def _from_records(records: list[dict[str, Any]], allow: bool) -> Validation:
    try:
        rows = [[record[name] for name in FEATURE_LIST] for record in records]
    except KeyError:
        rows = None
    if rows:
        matrix = _fast_matrix(rows, None, len(FEATURE_LIST))
        if matrix is not None:
            extra = sorted({k for r in records for k in r} - set(FEATURE_LIST))
            return _checked_matrix(matrix, FEATURE_LIST + extra, allow)
    names = list(dict.fromkeys(k for record in records for k in record))
    columns = {n: np.array([r.get(n) for r in records], dtype=object) for n in names}
    return _lenient(columns, names, len(records), allow)


def _from_column_dict(body: dict[str, Any], allow: bool) -> Validation:
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
    return _lenient(columns, names, n_rows, allow)


def _lenient(
    columns: Mapping[str, np.ndarray], names: Sequence[str], n_rows: int, allow: bool
) -> Validation:
    """The slow path: per-cell checks, converting booleans as MLflow does."""
    converted = {name: _bools_to_float(col) for name, col in columns.items()}
    return schema.validate_columns(
        converted, n_rows=n_rows, column_order=list(names), unknown="warn", allow_out_of_range=allow
    )


def _bools_to_float(column: np.ndarray) -> np.ndarray:
    if column.dtype != object:
        return column
    out = column.copy()
    for i, cell in enumerate(out):
        if isinstance(cell, bool):
            out[i] = float(cell)
    return out


# ---------------------------------------------------------------------------------------------
# Batch scoring of files
# ---------------------------------------------------------------------------------------------

InputFormat = Literal["csv", "parquet", "json"]


@dataclass(frozen=True)
class PredictResult:
    rows: int
    output: Path | None
    predictions: np.ndarray
    warnings: list[FeatureIssue]
    frame: pd.DataFrame  # what was (or would be) written


def file_format(path: Path) -> InputFormat:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".json", ".jsonl"):
        return "json"
    raise ValueError(f"{path}: unknown file type {suffix!r}; use .csv, .parquet or .json")


def read_input(
    path: Path, *, allow_out_of_range: bool = False
) -> tuple[pd.DataFrame, Validation, str, int]:
    """Read and check an input file; returns (frame, validation, row label, row offset)."""
    import orjson

    from winequality.data import DataError, read_table

    if not path.is_file():
        raise DataError(f"no such input file: {path}")
    kind = file_format(path)
    if kind == "csv":
        frame, _ = read_table(path)
        checked = schema.validate_columns(
            frame, unknown="warn", allow_out_of_range=allow_out_of_range
        )
        return frame, checked, "line", 2
    if kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise DataError(f"{path} is not a readable Parquet file: {exc}") from exc
        checked = schema.validate_columns(
            frame, unknown="warn", allow_out_of_range=allow_out_of_range
        )
        return frame, checked, "row", 0
    try:
        payload = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(payload, list):  # a bare list of records
        payload = {"dataframe_records": payload}
    try:
        checked = parse_payload(payload, allow_out_of_range=allow_out_of_range)
    except PayloadError as exc:
        raise DataError(f"{path}: {exc}") from exc
    frame = _payload_frame(payload)
    return frame, checked, "row", 0


def _payload_frame(payload: dict[str, Any]) -> pd.DataFrame:
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        return pd.DataFrame(split["data"], columns=split["columns"])
    body = next(payload[k] for k in FORMATS if k in payload)
    return pd.DataFrame(body)


def predict_file(
    model_uri: str,
    input_path: Path,
    output_path: Path | None = None,
    *,
    id_column: str | None = None,
    allow_out_of_range: bool = False,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Score a file; write `prediction` next to the inputs (or only next to `id_column`).

    Raises SchemaError listing every problem, and writes nothing, if any row is invalid.
    """
    frame, checked, row_label, offset = read_input(
        input_path, allow_out_of_range=allow_out_of_range
    )
    if id_column is not None and id_column not in frame.columns:
        raise SchemaError(
            [FeatureIssue("missing_column", id_column, "the --id-column is not in the input")],
            what=str(input_path),
        )
    if not checked.ok:
        raise SchemaError(
            checked.errors, what=str(input_path), row_label=row_label, row_offset=offset
        )
    if output_path is not None:
        file_format(output_path)  # reject an unknown output type before the model loads
    scorer = load_scorer(model_uri, tracking_uri)
    predictions = scorer.predict(checked.features)
    result = frame[[id_column]].copy() if id_column is not None else frame.copy()
    result["prediction"] = predictions
    if output_path is not None:
        write_atomic(result, output_path)
    return PredictResult(len(result), output_path, predictions, checked.warnings, result)


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """CSV, Parquet or JSON records by extension; a reader never sees a partial file."""
    kind = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if kind == "csv":
            frame.to_csv(partial, index=False)
        elif kind == "parquet":
            frame.to_parquet(partial, index=False)
        else:
            partial.write_bytes(frame_to_json(frame))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def frame_to_json(frame: pd.DataFrame) -> bytes:
    import orjson

    buffer = io.BytesIO()
    buffer.write(
        orjson.dumps(
            frame.to_dict(orient="records"), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2
        )
    )
    return buffer.getvalue()
