"""The feature schema: the one source of truth for what a wine looks like.

Names (the tutorial's and UCI's spelling), dtypes, physical ranges, units and descriptions live
here, and everything else is derived from them: the MLflow signature, the input example, the
training-data check, the validator that batch scoring and the REST server share, and the form
on the prediction page. No I/O and no MLflow tracking here; MLflow's *types* are imported lazily
so that this module stays cheap to import.

Validation works on columns, not cells, so a 10,000-row request costs a few numpy passes; every
problem is collected (never just the first) as a :class:`FeatureIssue` holding all offending row
positions (0-based, in frame order) and the first few offending values.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.signature import ModelSignature


__all__ = [
    "FEATURES",
    "FEATURES_BY_NAME",
    "FEATURE_NAMES",
    "INPUT_EXAMPLE_ROWS",
    "INTERVAL_PARAM",
    "NUMBER_TEXT",
    "SO2_RULE",
    "TARGET",
    "Feature",
    "FeatureIssue",
    "IssueKind",
    "Target",
    "Validation",
    "check_columns",
    "feature_table",
    "input_example",
    "model_signature",
    "validate_columns",
    "validate_numeric",
]


@dataclass(frozen=True)
class Feature:
    """One physicochemical measurement of a wine (UCI wine quality, Cortez et al. 2009)."""

    name: str
    unit: str
    description: str
    minimum: float
    maximum: float
    typical: float  # median of the red data, used as a form placeholder and in docs
    dtype: str = "double"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    minimum: int
    maximum: int


# Ranges are physical or chemical bounds, deliberately wider than any real wine, so they catch
# unit mix-ups (mg vs g), sentinel values (-1, 1e308) and typos without rejecting unusual wines.
FEATURES: tuple[Feature, ...] = (
    Feature(
        "fixed acidity",
        "g(tartaric acid)/dm³",
        "Non-volatile acids, mostly tartaric.",
        0.0,
        100.0,
        7.9,
    ),
    Feature(
        "volatile acidity",
        "g(acetic acid)/dm³",
        "Acetic acid; too much tastes of vinegar.",
        0.0,
        100.0,
        0.52,
    ),
    Feature(
        "citric acid", "g/dm³", "Adds freshness and flavour in small quantities.", 0.0, 100.0, 0.26
    ),
    Feature("residual sugar", "g/dm³", "Sugar left after fermentation stops.", 0.0, 1000.0, 2.2),
    Feature("chlorides", "g(sodium chloride)/dm³", "Salt content.", 0.0, 360.0, 0.079),
    Feature(
        "free sulfur dioxide",
        "mg/dm³",
        "Free SO₂; prevents microbial growth and oxidation.",
        0.0,
        100_000.0,
        14.0,
    ),
    Feature("total sulfur dioxide", "mg/dm³", "Free plus bound SO₂.", 0.0, 100_000.0, 38.0),
    Feature(
        "density",
        "g/cm³",
        "Close to water's, lower with more alcohol, higher with sugar.",
        0.8,
        1.3,
        0.9968,
    ),
    Feature("pH", "pH", "Acidity on the pH scale; wines sit between 2.7 and 4.", 0.0, 14.0, 3.31),
    Feature(
        "sulphates",
        "g(potassium sulphate)/dm³",
        "Additive contributing to SO₂ levels.",
        0.0,
        100.0,
        0.62,
    ),
    Feature("alcohol", "% vol", "Alcohol content by volume.", 0.0, 100.0, 10.2),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURES_BY_NAME: Mapping[str, Feature] = {f.name: f for f in FEATURES}
TARGET = Target(
    "quality", "Median of at least three expert sensory scores, 0 (very bad) to 10.", 0, 10
)

# Cross-column rule: bound SO₂ is total minus free, so free can never exceed total.
SO2_RULE = ("free sulfur dioxide", "total sulfur dioxide")


INTERVAL_PARAM = "interval"  # a request's params: the level of the range to add (0.9)


def model_signature() -> ModelSignature:
    """The MLflow signature: the 11 features as required doubles in, one double out, and one
    optional parameter, `interval` (a double: the level of the range to answer with).

    The target is never an input, and the output is a double (a regression score), not `long`.
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in FEATURE_NAMES]),
        outputs=Schema([ColSpec("double")]),
        params=ParamSchema([ParamSpec(INTERVAL_PARAM, "double", None)]),
    )


INPUT_EXAMPLE_ROWS = 5  # real training rows logged with every model as its input example


def input_example(features: pd.DataFrame, rows: int = INPUT_EXAMPLE_ROWS) -> pd.DataFrame:
    """The first `rows` real rows of a training feature frame, as float64 in schema order."""
    missing = [n for n in FEATURE_NAMES if n not in features.columns]
    if missing:
        raise ValueError(f"input example needs every feature; missing {missing}")
    if len(features) < rows:
        raise ValueError(f"input example needs {rows} rows, the frame has {len(features)}")
    return features.loc[:, list(FEATURE_NAMES)].head(rows).astype("float64").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

IssueKind = Literal[
    "missing_column",
    "unknown_column",
    "duplicate_column",
    "no_rows",
    "missing_value",
    "not_numeric",
    "not_finite",
    "out_of_range",
    "not_integer",
    "rule",
    "bad_row",
    "outside_training",
]
SAMPLE_VALUES = 5  # offending values kept per issue for messages
NO_ROWS = "no rows to check (the input is empty)"

# A number written as text that a cell may hold where text is allowed ("7.4", " 1e-3"), as the
# OpenAPI document states it (a JSON Schema pattern): ASCII decimal notation only. Python's
# float() alone would also take "1_0", "١٢" or "infinity", which no client means as a number.
NUMBER_TEXT = r"^[ \t\n\r]*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t\n\r]*$"
_NUMBER_TEXT = re.compile(NUMBER_TEXT)


@dataclass(frozen=True)
class FeatureIssue:
    """Every offending cell of one kind in one column (or a column-level problem)."""

    kind: IssueKind
    column: str | None
    reason: str
    rows: tuple[int, ...] = ()  # 0-based positions in the frame (the first ones, if capped)
    values: tuple[Any, ...] = ()  # the first few offending values, for messages
    total: int = 0  # offending cells when `rows` was capped (a big file); else len(rows)

    @property
    def count(self) -> int:
        return max(self.total, len(self.rows)) if self.rows else 1

    def describe(self, row_label: str = "row", row_offset: int = 0, limit: int = 5) -> str:
        """One line, e.g. `pH: 3 values out of range [0, 14] (row 4: 15.2, row 9: -1, ...)`."""
        where = f"{self.column}: " if self.column is not None else ""
        if not self.rows:
            return f"{where}{self.reason}"
        shown = ", ".join(
            f"{row_label} {r + row_offset}"
            + (
                f": {_show(self.values[i])}"
                if i < len(self.values) and self.kind != "missing_value"
                else ""
            )
            for i, r in enumerate(self.rows[:limit])
        )
        more = f", … {self.count - limit} more" if self.count > limit else ""
        plural = "value" if self.count == 1 else "values"
        return f"{where}{self.count} {plural} {self.reason} ({shown}{more})"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value}"


@dataclass(frozen=True)
class Validation:
    """The outcome of checking a frame: clean float64 features, or every problem found."""

    features: np.ndarray  # (n_rows, 11) float64 in schema order; meaningless if errors
    target: np.ndarray | None
    errors: list[FeatureIssue] = field(default_factory=list)
    warnings: list[FeatureIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _close_match(name: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return found[0] if found else None


def check_columns(
    columns: Sequence[str], *, require_target: bool, unknown: Literal["error", "warn"]
) -> tuple[list[FeatureIssue], list[FeatureIssue]]:
    """Column-level problems: missing, unknown (with a 'did you mean'), duplicated."""
    errors: list[FeatureIssue] = []
    warnings: list[FeatureIssue] = []
    expected = list(FEATURE_NAMES) + ([TARGET.name] if require_target else [])
    present = [str(c) for c in columns]
    seen: set[str] = set()
    for name in present:
        if name in seen:
            errors.append(FeatureIssue("duplicate_column", name, "column appears more than once"))
        seen.add(name)
    unknown_names = [c for c in dict.fromkeys(present) if c not in expected]
    missing_names = [c for c in expected if c not in seen]
    for name in missing_names:
        hint = _close_match(name, unknown_names)
        reason = "required column is missing" + (f" (found {hint!r}: misspelled?)" if hint else "")
        errors.append(FeatureIssue("missing_column", name, reason))
    for name in unknown_names:
        if name == TARGET.name:  # scoring a labelled file is fine: the label is just ignored
            continue
        hint = _close_match(name, missing_names) or _close_match(name, expected)
        reason = "unknown column" + (f" (did you mean {hint!r}?)" if hint else "")
        if unknown == "error":
            errors.append(FeatureIssue("unknown_column", name, reason))
        else:
            warnings.append(FeatureIssue("unknown_column", name, reason + ", ignored"))
    return errors, warnings


def _as_float_column(
    name: str, values: np.ndarray, allow_text: bool = True
) -> tuple[np.ndarray, list[FeatureIssue]]:
    """Convert one column to float64, collecting null and non-numeric cells.

    Ints are accepted for double columns (as MLflow does); booleans are not; text is, when it
    is a number in NUMBER_TEXT's notation and `allow_text`.
    """
    issues: list[FeatureIssue] = []
    if values.dtype.kind in "fiu":
        out = values.astype(np.float64, copy=False)
        missing = np.flatnonzero(np.isnan(out))
        if missing.size:
            issues.append(
                FeatureIssue(
                    "missing_value", name, "missing (null or empty)", tuple(missing.tolist())
                )
            )
        return out, issues
    out = np.empty(values.shape[0], dtype=np.float64)
    missing_rows: list[int] = []
    bad_rows: list[int] = []
    bad_values: list[Any] = []
    for i, cell in enumerate(values.tolist()):
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            missing_rows.append(i)
            out[i] = np.nan
        elif (
            isinstance(cell, bool)
            or not isinstance(cell, (int, float, str, np.number))
            or (isinstance(cell, str) and not allow_text)
        ):
            bad_rows.append(i)
            if len(bad_values) < SAMPLE_VALUES:
                bad_values.append(cell)
            out[i] = np.nan
        elif isinstance(cell, str):
            text = cell.strip()
            if not text or text.lower() in ("na", "nan", "null", "none"):
                missing_rows.append(i)
                out[i] = np.nan
                continue
            try:
                if not _NUMBER_TEXT.fullmatch(cell):
                    raise ValueError(cell)
                out[i] = float(cell)
            except ValueError:
                bad_rows.append(i)
                if len(bad_values) < SAMPLE_VALUES:
                    bad_values.append(cell)
                out[i] = np.nan
        else:
            try:
                out[i] = float(cell)
            except OverflowError:  # an integer beyond double range
                out[i] = math.inf
    if missing_rows:
        issues.append(
            FeatureIssue("missing_value", name, "missing (null or empty)", tuple(missing_rows))
        )
    if bad_rows:
        issues.append(
            FeatureIssue("not_numeric", name, "not a number", tuple(bad_rows), tuple(bad_values))
        )
    return out, issues


def _range_issues(feature: Feature, column: np.ndarray) -> list[FeatureIssue]:
    issues = []
    with np.errstate(invalid="ignore"):
        infinite = np.flatnonzero(np.isinf(column))
        outside = np.flatnonzero(
            np.isfinite(column) & ((column < feature.minimum) | (column > feature.maximum))
        )
    if infinite.size:
        issues.append(
            FeatureIssue(
                "not_finite",
                feature.name,
                "not finite",
                tuple(infinite.tolist()),
                tuple(column[infinite[:SAMPLE_VALUES]].tolist()),
            )
        )
    if outside.size:
        issues.append(
            FeatureIssue(
                "out_of_range",
                feature.name,
                f"outside the physical range [{feature.minimum:g}, {feature.maximum:g}] "
                f"{feature.unit}",
                tuple(outside.tolist()),
                tuple(column[outside[:SAMPLE_VALUES]].tolist()),
            )
        )
    return issues


def _rule_issues(matrix: np.ndarray) -> list[FeatureIssue]:
    free_i, total_i = (FEATURE_NAMES.index(n) for n in SO2_RULE)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(matrix[:, free_i] > matrix[:, total_i])
    if not bad.size:
        return []
    pairs = tuple(f"{matrix[r, free_i]:g} > {matrix[r, total_i]:g}" for r in bad[:SAMPLE_VALUES])
    return [
        FeatureIssue(
            "rule", SO2_RULE[0], f"greater than {SO2_RULE[1]!r}", tuple(bad.tolist()), pairs
        )
    ]


def validate_numeric(matrix: np.ndarray, *, allow_out_of_range: bool = False) -> Validation:
    """Fast path: a float64 (n, 11) matrix already in schema order (e.g. parsed JSON numbers).

    Only values can be wrong here (non-finite, out of range, the SO₂ rule) or there may be no
    row at all, as `validate_columns` says; the clean case costs a handful of vectorised
    comparisons.
    """
    if not matrix.shape[0]:
        return Validation(matrix, None, errors=[FeatureIssue("no_rows", None, NO_ROWS)])
    with np.errstate(invalid="ignore"):
        clean = bool(np.all((matrix >= _LOWER) & (matrix <= _UPPER)))
        if clean and not np.any(matrix[:, _FREE_I] > matrix[:, _TOTAL_I]):
            return Validation(matrix, None)
    errors: list[FeatureIssue] = []
    soft: list[FeatureIssue] = []
    for j, feature in enumerate(FEATURES):
        column = matrix[:, j]
        nan_rows = np.flatnonzero(np.isnan(column))
        if nan_rows.size:
            errors.append(
                FeatureIssue(
                    "missing_value",
                    feature.name,
                    "missing (null or empty)",
                    tuple(nan_rows.tolist()),
                )
            )
        for issue in _range_issues(feature, column):
            (soft if allow_out_of_range and issue.kind == "out_of_range" else errors).append(issue)
    rule = _rule_issues(matrix)
    (soft if allow_out_of_range else errors).extend(rule)
    return Validation(matrix, None, errors=errors, warnings=soft)


_LOWER = np.array([f.minimum for f in FEATURES])
_UPPER = np.array([f.maximum for f in FEATURES])
_FREE_I, _TOTAL_I = (FEATURE_NAMES.index(n) for n in SO2_RULE)


def validate_columns(
    columns: Mapping[str, np.ndarray] | pd.DataFrame,
    *,
    n_rows: int | None = None,
    column_order: Sequence[str] | None = None,
    require_target: bool = False,
    unknown: Literal["error", "warn"] = "warn",
    allow_out_of_range: bool = False,
    allow_text: bool = True,
) -> Validation:
    """Check named columns (a DataFrame or name → 1-D array) against the schema.

    Returns clean float64 features in schema order, or every problem: column-level ones
    (missing, unknown, duplicated) and cell-level ones with their row positions.
    `require_target` also checks `quality` (integer score within 0..10), for training data.
    Out-of-range values and the SO₂ rule are warnings with `allow_out_of_range`; text cells
    holding numbers are read (as MLflow's protocol does) unless `allow_text` is False.
    """
    names = list(column_order if column_order is not None else columns.keys())
    errors, warnings = check_columns(names, require_target=require_target, unknown=unknown)
    if n_rows is None:
        if hasattr(columns, "shape"):  # a DataFrame
            n_rows = int(columns.shape[0])
        else:
            first = next(iter(columns.values()), None)
            n_rows = 0 if first is None else len(first)
    matrix = np.full((n_rows, len(FEATURES)), np.nan)
    target = None
    if n_rows == 0 and not any(i.kind == "missing_column" for i in errors):
        errors.append(FeatureIssue("no_rows", None, NO_ROWS))
    present = set(names)
    duplicated = {i.column for i in errors if i.kind == "duplicate_column"}
    for j, feature in enumerate(FEATURES):
        if feature.name not in present or feature.name in duplicated:
            continue
        column, issues = _as_float_column(
            feature.name, np.asarray(columns[feature.name]), allow_text
        )
        matrix[:, j] = column
        errors += issues
        for issue in _range_issues(feature, column):
            (warnings if allow_out_of_range and issue.kind == "out_of_range" else errors).append(
                issue
            )
    if all(n in present for n in SO2_RULE):
        (warnings if allow_out_of_range else errors).extend(_rule_issues(matrix))
    if require_target and TARGET.name in present:
        target, issues = _as_float_column(TARGET.name, np.asarray(columns[TARGET.name]))
        errors += issues
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(
                np.isfinite(target)
                & (
                    (target != np.round(target))
                    | (target < TARGET.minimum)
                    | (target > TARGET.maximum)
                )
            )
        if bad.size:
            errors.append(
                FeatureIssue(
                    "not_integer",
                    TARGET.name,
                    f"not an integer score within {TARGET.minimum}..{TARGET.maximum}",
                    tuple(bad.tolist()),
                    tuple(target[bad[:SAMPLE_VALUES]].tolist()),
                )
            )
    return Validation(matrix, target, errors=errors, warnings=warnings)


def feature_table() -> list[dict[str, Any]]:
    """The schema as plain data (for /metadata, the OpenAPI document and the page)."""
    return [
        {
            "name": f.name,
            "type": f.dtype,
            "unit": f.unit,
            "description": f.description,
            "minimum": f.minimum,
            "maximum": f.maximum,
            "typical": f.typical,
        }
        for f in FEATURES
    ]
