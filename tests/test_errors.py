"""One error hierarchy: every deliberate error carries its exit code and HTTP status."""

from __future__ import annotations

import inspect

import pytest

from winequality import errors
from winequality.errors import SchemaError, WinequalityError
from winequality.schema import FeatureIssue


def test_every_error_of_the_package_derives_from_the_base() -> None:
    classes = [
        v
        for v in vars(errors).values()
        if inspect.isclass(v) and issubclass(v, Exception) and v.__module__ == errors.__name__
    ]
    assert len(classes) == 17
    assert all(issubclass(c, WinequalityError) for c in classes)
    for cls in classes:  # never a builtin base: a stray ValueError must stay a bug
        assert not issubclass(cls, (ValueError, RuntimeError))


@pytest.mark.parametrize(
    ("cls", "exit_code", "status", "code"),
    [
        (errors.DataError, 2, 400, "BAD_REQUEST"),
        (errors.ParameterError, 2, 400, "BAD_REQUEST"),
        (errors.PayloadError, 2, 400, "BAD_REQUEST"),
        (errors.PayloadTooLarge, 2, 413, "PAYLOAD_TOO_LARGE"),
        (errors.UnsupportedMedia, 2, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (errors.SweepError, 2, 400, "BAD_REQUEST"),
        (errors.NotFoundError, 2, 404, "NOT_FOUND"),
        (errors.TrackingError, 2, 503, "STORE_UNAVAILABLE"),
        (errors.ModelLoadError, 2, 503, "MODEL_UNAVAILABLE"),
        (errors.ModelCheckError, 1, 500, "MODEL_CHECK_FAILED"),
    ],
)
def test_each_error_carries_how_it_reaches_people(cls, exit_code, status, code) -> None:
    error = cls("something: explained\nmore")
    assert (error.exit_code, error.http_status, error.error_code) == (exit_code, status, code)
    assert error.summary == "something: explained"
    assert str(error) == error.message
    assert error.entries() == []


def test_a_schema_error_lists_every_cell_and_caps_the_http_list() -> None:
    issues = [
        FeatureIssue("out_of_range", "pH", "outside [0, 14]", tuple(range(1500)), (15.0, -1.0)),
        FeatureIssue("missing_column", "alcohol", "required column is missing"),
    ]
    error = SchemaError(issues, what="the body")
    assert (error.http_status, error.error_code, error.exit_code) == (422, "INVALID_INPUT", 2)
    assert error.summary == "the body does not fit the wine feature schema (1501 problems)"
    entries = error.entries()
    assert len(entries) == SchemaError.max_entries
    assert entries[:2] == [
        {"row": 0, "column": "pH", "reason": "outside [0, 14]", "value": 15.0},
        {"row": 1, "column": "pH", "reason": "outside [0, 14]", "value": -1.0},
    ]
    assert entries[2] == {"row": 2, "column": "pH", "reason": "outside [0, 14]"}
    files = SchemaError(issues[:1], what="x.csv", row_label="line", row_offset=2)
    assert "(line 2: 15.0, line 3: -1.0, line 4, line 5, line 6, … 1495 more)" in str(files)


def test_first_line_is_short() -> None:
    assert errors.first_line(OSError("a\nb")) == "a"
    assert errors.first_line(KeyError()) == "KeyError"
    assert len(errors.first_line(ValueError("x" * 500))) == 200
