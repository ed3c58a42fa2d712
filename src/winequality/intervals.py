"""Prediction intervals calibrated when a model is made: cross-conformal, absolute residuals.

`calibrate` splits the rows a model is fitted on into grouped folds (exact duplicates kept in
one fold), fits a fresh copy of the estimator on all folds but one, and scores the fold it left
out: every row gets a residual from a model that never saw it (nor a twin of it). For a level
`1 - alpha`, the half-width is the ceil((n + 1)(1 - alpha))-th smallest absolute residual;
the interval of a new wine is the model's prediction (the model fitted on all the rows) plus or
minus that half-width. This is MAPIE's `CrossConformalRegressor(method="base")`
(tests/test_intervals.py pins the numbers against MAPIE fed the same folds).

This method ("base": one model's prediction plus or minus a quantile of out-of-fold residuals)
has no finite-sample guarantee (the "plus" variant's 1 - 2·alpha needs every fold's model at
serving time); its coverage is empirical, close to 1 - alpha in practice and slightly wide,
*marginal* (over wines like the training ones, not for every grade or every wine), and nothing
for wines unlike them. What is checked is the held-out coverage, logged per level with the mean
width and a table by grade, and gated at 0.9 (`registry.coverage_check`).

What serving needs travels in the model's folder (`intervals.json`: the half-width per level):
scoring a range costs two additions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from winequality.errors import ModelLoadError, ParameterError, first_line

__all__ = [
    "CALIBRATION_FOLDS",
    "CALIBRATION_SEED_OFFSET",
    "DEFAULT_LEVELS",
    "INTERVALS_FILE",
    "METHOD",
    "Intervals",
    "asked_level",
    "bound_names",
    "calibrate",
    "coverage",
    "coverage_by_grade",
    "half_width",
    "level_label",
    "out_of_fold",
    "parse_levels",
    "rows_needed",
]

INTERVALS_FILE = "intervals.json"
DEFAULT_LEVELS = (0.8, 0.9, 0.95)
CALIBRATION_FOLDS = 5
# Calibration folds are seeded apart from the split and from a sweep's selection folds: fresh
# folds of the training rows (the folds a trial was chosen on give optimistic residuals).
CALIBRATION_SEED_OFFSET = 1000
METHOD = "cross-conformal, absolute residuals (MAPIE CrossConformalRegressor, method='base')"


def level_label(level: float) -> str:
    """How a level is written everywhere: 0.9 -> "0.9"."""
    return f"{level:g}"


def bound_names(level: float) -> tuple[str, str]:
    """The names of a level's bounds, the same in files, JSON keys and V2 outputs."""
    return f"lower_{level_label(level)}", f"upper_{level_label(level)}"


def rows_needed(level: float) -> int:
    """The fewest calibration rows for which the level's quantile exists: n >= level/(1-level)."""
    return math.ceil(round(level / (1.0 - level), 9))


def parse_levels(levels: Iterable[float], rows: int | None = None) -> tuple[float, ...]:
    """Levels sorted and checked: each within (0, 1), and calibratable on `rows` rows."""
    found = sorted(set(levels))
    bad = [level for level in found if not 0.0 < level < 1.0]
    if bad:
        raise ParameterError(f"interval levels must be within (0, 1), got {bad}")
    blurred = [level for level in found if float(level_label(level)) != level]
    if blurred:  # two levels must never share a name (lower_0.9)
        raise ParameterError(f"interval levels take at most 6 significant digits, got {blurred}")
    if rows is not None:
        short = [level for level in found if rows_needed(level) > rows]
        if short:
            needs = ", ".join(f"{level:g} needs {rows_needed(level)}" for level in short)
            raise ParameterError(
                f"too few calibration rows ({rows}) for the interval level(s) {needs}"
            )
    return tuple(found)


@dataclass(frozen=True)
class Intervals:
    """A model's calibrated intervals: the half-width for each level."""

    half_widths: dict[str, float]  # level_label -> half-width, in quality points
    calibration_rows: int
    folds: int
    seed: int
    method: str = METHOD
    # level -> (half-width, lower name, upper name): what a request needs, looked up once
    _by_level: dict[float, tuple[float, str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_level = {
            float(label): (half, *bound_names(float(label)))
            for label, half in self.half_widths.items()
        }
        object.__setattr__(self, "_by_level", by_level)

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(sorted(self._by_level))

    def level(self, asked: Any) -> float:
        """The calibrated level `asked` names (as the model writes it); ParameterError naming
        those there are."""
        if type(asked) is float and asked in self._by_level:
            return asked  # what nearly every request sends: 0.9
        if isinstance(asked, bool) or not isinstance(asked, int | float | str):
            raise ParameterError(f"interval must be a number such as 0.9, got {asked!r}")
        try:
            value = float(asked)
        except (ValueError, OverflowError):  # (an integer of 400 digits overflows a float)
            value = math.nan
        if not math.isfinite(value):
            shown = asked if len(repr(asked)) <= 40 else f"{repr(asked)[:37]}..."
            raise ParameterError(f"interval must be a number such as 0.9, got {shown!r}")
        if float(level_label(value)) not in self._by_level:
            raise ParameterError(
                f"no interval calibrated at {asked}; this model has "
                + ", ".join(level_label(level) for level in self.levels)
            )
        return float(level_label(value))

    def bounds(self, predictions: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The bounds of each prediction at a calibrated `level` (as `level()` returns it)."""
        half = self._by_level[self.level(level) if level not in self._by_level else level][0]
        return predictions - half, predictions + half

    def named_bounds(self, predictions: np.ndarray, level: float) -> dict[str, np.ndarray]:
        """`bounds` under their names: {"lower_0.9": …, "upper_0.9": …}."""
        half, lower, upper = self._by_level[level]
        return {lower: predictions - half, upper: predictions + half}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "half_widths": self.half_widths,
            "calibration_rows": self.calibration_rows,
            "folds": self.folds,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intervals:
        return cls(
            half_widths={level_label(float(k)): float(v) for k, v in data["half_widths"].items()},
            calibration_rows=int(data["calibration_rows"]),
            folds=int(data["folds"]),
            seed=int(data["seed"]),
            method=str(data.get("method", METHOD)),
        )

    @classmethod
    def read(cls, folder: Path) -> Intervals | None:
        """The intervals in a model folder, or None (a model logged before intervals)."""
        import orjson

        path = folder / INTERVALS_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(orjson.loads(path.read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            why = first_line(exc)
            raise ModelLoadError(f"{folder}: unreadable {INTERVALS_FILE}: {why}") from exc


def asked_level(calibrated: Intervals | None, asked: Any, what: str) -> float | None:
    """The calibrated level a request or a command asks for (None: it asks none);
    ParameterError for a model without intervals (`what` names it) or a level it lacks."""
    if asked is None:
        return None
    if calibrated is None:
        raise ParameterError(
            f"{what} has no calibrated intervals (it was logged before winequality calibrated "
            "them); retrain it with `winequality train` or `sweep`"
        )
    return calibrated.level(asked)


def out_of_fold(
    make_estimator: Callable[[], Any],
    x: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Each row's prediction by the estimator fitted on the folds it is not in.

    The folds must leave each row out exactly once: a row scored twice or never is an error,
    since its residual would then not be out of fold.
    """
    import warnings

    predicted = np.full(len(y), np.nan)
    scored = np.zeros(len(y), dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter, as in cross-validation
        for fit_rows, left_out in folds:
            if np.intersect1d(fit_rows, left_out).size:
                raise ValueError("a fold fits on rows it leaves out")
            estimator = make_estimator().fit(x[fit_rows], y[fit_rows])
            predicted[left_out] = np.asarray(estimator.predict(x[left_out]), dtype=float).ravel()
            scored[left_out] += 1
    if not (scored == 1).all():
        raise ValueError("the folds must leave every row out exactly once")
    return predicted


def half_width(residuals: np.ndarray, level: float) -> float:
    """The conformal quantile: the ceil((n + 1)·level)-th smallest absolute residual."""
    scores = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    rank = math.ceil(round((len(scores) + 1) * level, 9))
    if rank > len(scores):
        raise ParameterError(f"too few calibration rows ({len(scores)}) for the level {level:g}")
    return float(scores[rank - 1])


def calibrate(
    make_estimator: Callable[[], Any],
    frame: Any,
    target: Any,
    levels: Iterable[float] = DEFAULT_LEVELS,
    *,
    seed: int,
    folds: int = CALIBRATION_FOLDS,
) -> Intervals:
    """Intervals for the estimator `make_estimator()` fitted on all of `frame`'s rows, from
    out-of-fold residuals over grouped folds (duplicates in one fold) seeded by `seed`."""
    from winequality.evaluate import make_folds

    x = np.asarray(frame, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    checked = parse_levels(levels, len(y))
    splits = make_folds(frame, "grouped", folds=folds, seed=seed)
    residuals = y - out_of_fold(make_estimator, x, y, splits)
    return Intervals(
        half_widths={level_label(level): half_width(residuals, level) for level in checked},
        calibration_rows=len(y),
        folds=folds,
        seed=seed,
    )


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """The share of `actual` within [lower, upper]."""
    actual = np.asarray(actual, dtype=float)
    return float(np.mean((lower <= actual) & (actual <= upper)))


def coverage_by_grade(
    actual: np.ndarray, predicted: np.ndarray, intervals: Intervals
) -> dict[str, list[Any]]:
    """A table (columns -> values) of coverage per quality grade and level, with row counts:
    marginal coverage can hide a grade that is never covered."""
    actual = np.asarray(actual, dtype=float)
    grades = sorted({int(g) for g in actual})
    table: dict[str, list[Any]] = {"quality": grades, "rows": []}
    for grade in grades:
        table["rows"].append(int((actual == grade).sum()))
    for level in intervals.levels:
        lower, upper = intervals.bounds(predicted, level)
        column = []
        for grade in grades:
            rows = actual == grade
            column.append(coverage(actual[rows], lower[rows], upper[rows]))
        table[f"coverage_{level_label(level)}"] = column
    return table
