"""The feature schema: one source for the signature, the example and the validator."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from winequality import schema
from winequality.data import load
from winequality.errors import SchemaError
from winequality.schema import FEATURE_NAMES, FEATURES, TARGET, validate_columns

SEED_SPELLING = [
    "fixed acidity",
    "volatile acidity",
    "citric acid",
    "residual sugar",
    "chlorides",
    "free sulfur dioxide",
    "total sulfur dioxide",
    "density",
    "pH",
    "sulphates",
    "alcohol",
]


def test_feature_names_are_the_seeds_in_order() -> None:
    assert list(FEATURE_NAMES) == SEED_SPELLING
    assert TARGET.name == "quality"
    assert TARGET.name not in FEATURE_NAMES


def test_every_feature_is_documented_with_a_sane_range() -> None:
    for feature in FEATURES:
        assert feature.dtype == "double"
        assert feature.unit
        assert feature.description.endswith(".")
        assert feature.minimum < feature.typical < feature.maximum
    by_name = schema.FEATURES_BY_NAME
    assert (by_name["pH"].minimum, by_name["pH"].maximum) == (0, 14)
    assert (by_name["alcohol"].minimum, by_name["alcohol"].maximum) == (0, 100)
    assert all(f.minimum >= 0 for f in FEATURES)


@pytest.mark.parametrize("name", ["red_csv", "white_csv"])
def test_all_real_wines_lie_within_the_physical_ranges(name: str, request) -> None:
    data = load(request.getfixturevalue(name))  # raises SchemaError on any violation
    assert len(data.frame) in (1599, 4898)


def test_signature_has_the_features_in_and_one_double_out() -> None:
    signature = schema.model_signature()
    inputs = signature.inputs.to_dict()
    assert [c["name"] for c in inputs] == SEED_SPELLING
    assert {c["type"] for c in inputs} == {"double"}
    assert "quality" not in signature.inputs.input_names()
    assert signature.outputs.to_dict() == [{"type": "double", "required": True}]


def test_input_example_is_real_rows_and_passes_mlflows_schema_check(wines) -> None:
    from mlflow.models import validate_schema

    example = schema.input_example(wines[list(FEATURE_NAMES)])
    assert example.shape == (5, 11)
    assert (example.dtypes == "float64").all()
    np.testing.assert_array_equal(example.to_numpy(), wines[list(FEATURE_NAMES)].head(5))
    validate_schema(example, schema.model_signature().inputs)  # raises if it does not fit
    with pytest.raises(ValueError, match="missing"):
        schema.input_example(wines.drop(columns=["pH"]))


# --- the validator -------------------------------------------------------------------------


def in_range_values(feature: schema.Feature):
    return st.floats(feature.minimum, min(feature.maximum, 1e6), allow_nan=False)


@st.composite
def valid_frames(draw) -> pd.DataFrame:
    rows = draw(st.integers(1, 20))
    columns = {
        f.name: draw(st.lists(in_range_values(f), min_size=rows, max_size=rows)) for f in FEATURES
    }
    free, total = columns["free sulfur dioxide"], columns["total sulfur dioxide"]
    columns["total sulfur dioxide"] = [max(a, b) for a, b in zip(free, total, strict=True)]
    return pd.DataFrame(columns)


@given(valid_frames())
@settings(max_examples=200, deadline=None)
def test_frames_within_the_ranges_are_accepted_unchanged(frame: pd.DataFrame) -> None:
    checked = validate_columns(frame)
    assert checked.ok, checked.errors
    np.testing.assert_array_equal(checked.features, frame[list(FEATURE_NAMES)].to_numpy())
    fast = schema.validate_numeric(frame[list(FEATURE_NAMES)].to_numpy())
    assert fast.ok


BAD_CELLS = st.sampled_from(
    [
        (None, "missing_value"),
        (math.nan, "missing_value"),
        ("", "missing_value"),
        ("abc", "not_numeric"),
        (True, "not_numeric"),
        (math.inf, "not_finite"),
        (-1.0, "out_of_range"),
        (1e308, "out_of_range"),
    ]
)


@given(valid_frames(), st.data())
@settings(max_examples=200, deadline=None)
def test_every_bad_cell_is_reported_with_its_row_and_column(frame, data) -> None:
    frame = frame.astype(object)
    spoiled = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(frame) - 1), st.sampled_from(FEATURE_NAMES), BAD_CELLS),
            min_size=1,
            max_size=5,
            unique_by=lambda t: (t[0], t[1]),
        )
    )
    for row, column, (value, _) in spoiled:
        frame.iloc[row, frame.columns.get_loc(column)] = value
    checked = validate_columns(frame)
    assert not checked.ok
    reported = {(row, issue.column, issue.kind) for issue in checked.errors for row in issue.rows}
    for row, column, (_, kind) in spoiled:
        assert (row, column, kind) in reported
    # and nothing else: the SO₂ rule may fire only on a row we spoiled
    spoiled_rows = {row for row, _, _ in spoiled}
    assert {row for row, _, _ in reported} <= spoiled_rows


def test_out_of_range_becomes_a_warning_when_allowed(wines) -> None:
    wines.loc[3, "alcohol"] = 150.0
    assert not validate_columns(wines).ok
    allowed = validate_columns(wines, allow_out_of_range=True)
    assert allowed.ok
    assert allowed.warnings[0].rows == (3,)


def test_free_sulfur_dioxide_cannot_exceed_total(wines) -> None:
    wines.loc[7, "free sulfur dioxide"] = wines.loc[7, "total sulfur dioxide"] + 1
    issue = validate_columns(wines).errors[0]
    assert (issue.kind, issue.rows) == ("rule", (7,))


def test_columns_missing_unknown_misspelled_and_duplicated(wines) -> None:
    frame = wines.rename(columns={"citric acid": "citric acd"})
    frame["colour"] = "red"
    errors, warnings = schema.check_columns(
        list(frame.columns), require_target=True, unknown="error"
    )
    text = " | ".join(f"{e.column}: {e.reason}" for e in errors)
    assert "citric acid: required column is missing (found 'citric acd'" in text
    assert "citric acd: unknown column (did you mean 'citric acid'?)" in text
    assert "colour: unknown column" in text
    assert not warnings
    errors, warnings = schema.check_columns(
        [*list(FEATURE_NAMES), "id"], require_target=False, unknown="warn"
    )
    assert not errors
    assert warnings[0].column == "id"
    errors, _ = schema.check_columns(
        [*list(FEATURE_NAMES), "pH"], require_target=False, unknown="warn"
    )
    assert errors[0].kind == "duplicate_column"


def test_target_must_be_an_integer_score(wines) -> None:
    wines = wines.astype({TARGET.name: float})
    wines.loc[2, TARGET.name] = 5.5
    wines.loc[4, TARGET.name] = 11
    issue = validate_columns(wines, require_target=True).errors[0]
    assert issue.kind == "not_integer"
    assert issue.rows == (2, 4)


def test_an_empty_frame_is_an_error() -> None:
    checked = validate_columns(pd.DataFrame(columns=list(FEATURE_NAMES)))
    assert [i.kind for i in checked.errors] == ["no_rows"]


def test_schema_error_message_lists_every_problem_with_rows(wines) -> None:
    wines.loc[1, "pH"] = 15.0
    wines.loc[2, "pH"] = -3.0
    wines = wines.astype({"density": object})
    wines.loc[0, "density"] = "heavy"
    error = SchemaError(
        validate_columns(wines).errors, what="x.csv", row_label="line", row_offset=2
    )
    text = str(error)
    assert "x.csv does not fit the wine feature schema (3 problems)" in text
    assert "density: 1 value not a number (line 2: 'heavy')" in text
    assert "pH: 2 values outside the physical range [0, 14] pH (line 3: 15.0, line 4: -3.0)" in text
