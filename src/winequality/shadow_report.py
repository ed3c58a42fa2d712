"""What a shadow log says: how far apart two models were on live traffic, and who was right.

`serve --shadow … --shadow-log DIR` writes the sampled rows with both predictions
(`serving.shadow`). `shadow_report(DIR)` reads every whole file there and reports:

- how far apart the models were: the mean and quantiles of |shadow − champion|, the mean signed
  difference, and the mean difference per bin of the champion's reference profile, feature by
  feature (where on the feature's range the two disagree);
- with `truth` (a CSV or Parquet file of `request_id`, `row`, `quality`: the true grades, known
  later), joined on (request id, row): each model's RMSE on the same rows and a paired test of
  their squared errors (the mean difference, its 95 % interval and the two-sided p-value of a
  paired t-test), which `promote --evidence` can use as one more check of the gate.

A report is a plain dataclass, written as JSON (`to_dict`), so it can travel with a version.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from winequality.errors import DataError, ParameterError
from winequality.schema import FEATURE_NAMES, TARGET

__all__ = [
    "LOG_PROFILE_KEY",
    "REPORT_FORMAT",
    "BinDifference",
    "LiveComparison",
    "ShadowReport",
    "read_report",
    "shadow_report",
]

REPORT_FORMAT = "winequality.shadow_report/1"
# in each log file's Parquet metadata: the champion's reference bins' edges (serving.shadow)
LOG_PROFILE_KEY = b"winequality.reference_edges"
QUANTILES = (0.5, 0.9, 0.99)
JOIN_KEYS = ("request_id", "row")
LOGGED_COLUMNS = [
    "time", "request_id", "row", "champion_version", "champion_model_id", "shadow_version",
    "shadow_model_id", "champion", "shadow",
]  # fmt: skip


@dataclass(frozen=True)
class BinDifference:
    feature: str
    bin: int  # 0 .. len(edges): below the first edge, …, at or above the last
    low: float | None  # the bin's edges in the reference profile (None: unbounded)
    high: float | None
    rows: int
    mean_abs_difference: float


@dataclass(frozen=True)
class LiveComparison:
    """Both models on the same live rows whose true grade is known."""

    rows: int  # sampled rows joined to a true grade
    unmatched_truth: int  # truth rows with no sampled row (not sampled, or another server)
    champion_rmse: float
    shadow_rmse: float
    mse_difference: float  # mean of (shadow error² − champion error²): > 0, the shadow worse
    mse_difference_ci95: tuple[float, float]
    p_value: float  # paired t-test, two-sided (NaN with fewer than 2 rows)


@dataclass(frozen=True)
class ShadowReport:
    files: int
    rows: int
    requests: int
    champion_versions: tuple[str, ...]
    shadow_versions: tuple[str, ...]
    champion_model_ids: tuple[str, ...]  # the logged models behind those versions
    shadow_model_ids: tuple[str, ...]
    mean_abs_difference: float
    mean_difference: float  # shadow − champion
    quantiles: dict[str, float]  # "0.5" -> the quantile of |shadow − champion|
    max_abs_difference: float
    by_bin: tuple[BinDifference, ...]
    live: LiveComparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, **asdict(self)}

    def write(self, path: Path) -> None:
        """The report as JSON, written whole (a temporary file renamed)."""
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))
        partial.replace(path)


def read_report(path: Path) -> ShadowReport:
    """A report `write` wrote; DataError saying what is wrong otherwise."""
    try:
        data = orjson.loads(path.read_bytes())
        if data.get("format") != REPORT_FORMAT:
            raise ValueError(f"not a {REPORT_FORMAT} document")
        live = data.get("live")
        return ShadowReport(
            files=int(data["files"]),
            rows=int(data["rows"]),
            requests=int(data["requests"]),
            champion_versions=tuple(data["champion_versions"]),
            shadow_versions=tuple(data["shadow_versions"]),
            champion_model_ids=tuple(data["champion_model_ids"]),
            shadow_model_ids=tuple(data["shadow_model_ids"]),
            mean_abs_difference=float(data["mean_abs_difference"]),
            mean_difference=float(data["mean_difference"]),
            quantiles={str(k): float(v) for k, v in data["quantiles"].items()},
            max_abs_difference=float(data["max_abs_difference"]),
            by_bin=tuple(BinDifference(**b) for b in data["by_bin"]),
            live=None
            if live is None
            else LiveComparison(
                **{
                    **live,
                    # JSON has no NaN (too few rows for a test): written as null, read as NaN
                    "p_value": _number(live["p_value"]),
                    "mse_difference_ci95": tuple(_number(v) for v in live["mse_difference_ci95"]),
                }
            ),
        )
    except OSError as exc:
        raise DataError(f"cannot read the shadow report {path}: {exc.strerror}") from exc
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a shadow report: {exc}") from exc


def shadow_report(log_dir: Path, truth: Path | None = None) -> ShadowReport:
    """The report of every whole log file in `log_dir` (see the module's docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not log_dir.is_dir():
        raise ParameterError(f"--log {log_dir} is not a folder")
    paths = sorted(log_dir.glob("*.parquet"))  # whole files only: open ones are hidden
    if not paths:
        raise DataError(f"{log_dir} holds no shadow log file yet (serve --shadow-log writes them)")
    tables = [pq.read_table(path) for path in paths]
    # each file's bins are of its champion's profile (a new profile starts a new file): binned
    # per file, merged where the ranges are the same
    sums: dict[tuple[str, int, float | None, float | None], list[float]] = {}
    for table in tables:
        edges = _edges(table)
        if edges is None:
            continue
        absolute_here = np.abs(
            table["shadow"].to_numpy().astype(np.float64)
            - table["champion"].to_numpy().astype(np.float64)
        )
        for j, name in enumerate(FEATURE_NAMES):
            if f"bin {name}" not in table.column_names:
                continue
            bins = table[f"bin {name}"].to_numpy()
            feature_edges = edges[j]
            for b in np.unique(bins).tolist():
                inside = bins == b
                key = (
                    name,
                    int(b),
                    float(feature_edges[b - 1]) if b > 0 else None,
                    float(feature_edges[b]) if b < len(feature_edges) else None,
                )
                total = sums.setdefault(key, [0.0, 0.0])
                total[0] += float(absolute_here[inside].sum())
                total[1] += int(inside.sum())
    by_bin = [
        BinDifference(name, b, low, high, int(rows), total / rows)
        for (name, b, low, high), (total, rows) in sums.items()
    ]
    table = pa.concat_tables(
        [t.select(LOGGED_COLUMNS) for t in tables], promote_options="permissive"
    )
    frame = table.to_pandas()
    champion = frame["champion"].to_numpy(np.float64)
    shadow = frame["shadow"].to_numpy(np.float64)
    difference = shadow - champion
    absolute = np.abs(difference)
    live = _compare(frame, truth) if truth is not None else None
    return ShadowReport(
        files=len(paths),
        rows=len(frame),
        requests=int(frame["request_id"].nunique()),
        champion_versions=tuple(sorted(frame["champion_version"].unique())),
        shadow_versions=tuple(sorted(frame["shadow_version"].unique())),
        champion_model_ids=tuple(sorted(frame["champion_model_id"].unique())),
        shadow_model_ids=tuple(sorted(frame["shadow_model_id"].unique())),
        mean_abs_difference=float(absolute.mean()),
        mean_difference=float(difference.mean()),
        quantiles={f"{q:g}": float(np.quantile(absolute, q)) for q in QUANTILES},
        max_abs_difference=float(absolute.max()),
        by_bin=tuple(by_bin),
        live=live,
    )


def _edges(table: Any) -> list[list[float]] | None:
    """The reference bins' edges a log file's rows were binned with, if any."""
    metadata = table.schema.metadata or {}
    if LOG_PROFILE_KEY not in metadata:
        return None
    edges: list[list[float]] = orjson.loads(metadata[LOG_PROFILE_KEY])
    return edges


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _compare(frame: Any, truth_path: Path) -> LiveComparison:
    import pandas as pd
    from scipy import stats

    truth = _read_truth(truth_path)
    twice = int(frame.duplicated(list(JOIN_KEYS)).sum())
    if twice:  # a client that reused its ids: a truth row would be joined to several rows
        raise DataError(
            f"{twice} logged rows share a (request_id, row) with another: clients reused their "
            "X-Request-Id, so true grades cannot be joined on it unambiguously"
        )
    joined = frame.merge(truth, on=list(JOIN_KEYS), how="inner", validate="many_to_one")
    if joined.empty:
        raise DataError(
            f"no row of {truth_path} matches a logged row on (request_id, row): are they the "
            "ids the server answered with (X-Request-Id)?"
        )
    actual = joined[TARGET.name].to_numpy(np.float64)
    champion_sq = (joined["champion"].to_numpy(np.float64) - actual) ** 2
    shadow_sq = (joined["shadow"].to_numpy(np.float64) - actual) ** 2
    paired = shadow_sq - champion_sq
    n = len(paired)
    mean = float(paired.mean())
    if n > 1 and paired.std(ddof=1) > 0:
        sem = float(paired.std(ddof=1) / math.sqrt(n))
        margin = float(stats.t.ppf(0.975, n - 1)) * sem
        p_value = float(stats.ttest_rel(shadow_sq, champion_sq).pvalue)
    else:  # one row, or identical errors everywhere: nothing to test
        margin = math.nan if n < 2 else 0.0
        p_value = math.nan if n < 2 else 1.0
    keys = pd.MultiIndex.from_frame(truth[list(JOIN_KEYS)])
    logged = pd.MultiIndex.from_frame(frame[list(JOIN_KEYS)])
    return LiveComparison(
        rows=n,
        unmatched_truth=int((~keys.isin(logged)).sum()),
        champion_rmse=float(math.sqrt(champion_sq.mean())),
        shadow_rmse=float(math.sqrt(shadow_sq.mean())),
        mse_difference=mean,
        mse_difference_ci95=(mean - margin, mean + margin),
        p_value=p_value,
    )


def _read_truth(path: Path) -> Any:
    """`request_id`, `row`, `quality` from a CSV or Parquet file; every problem named at once."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            truth = pd.read_parquet(path)
        else:
            truth = pd.read_csv(
                path,
                sep=None,
                engine="python",
                dtype={"request_id": str},
                keep_default_na=False,  # an id such as NA or null is an id
            )
    except OSError as exc:
        raise DataError(f"cannot read --truth {path}: {exc.strerror or exc}") from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read --truth {path}: {exc}") from exc
    needed = [*JOIN_KEYS, TARGET.name]
    problems = [f"no column {c!r}" for c in needed if c not in truth.columns]
    if not problems:
        truth = truth[needed].copy()
        truth["request_id"] = truth["request_id"].astype(str)
        for column in ("row", TARGET.name):
            values = pd.to_numeric(truth[column].replace("", None), errors="coerce")
            invalid = values.isna()
            if column == "row":  # a position: a whole number
                invalid |= values.notna() & (values % 1 != 0)
            bad = invalid.to_numpy().nonzero()[0]
            if bad.size:
                lines = ", ".join(str(i + 2) for i in bad[:5])  # line 1 holds the header
                more = f" and {bad.size - 5} more" if bad.size > 5 else ""
                what = "a whole number" if column == "row" else "a number"
                problems.append(f"{column}: not {what} on line(s) {lines}{more}")
            truth[column] = values
        duplicated = truth.duplicated(list(JOIN_KEYS)).to_numpy().nonzero()[0]
        if duplicated.size:
            lines = ", ".join(str(i + 2) for i in duplicated[:5])
            problems.append(f"(request_id, row) given twice on line(s) {lines}")
    if problems:
        raise DataError(f"--truth {path}: " + "; ".join(problems))
    truth["row"] = truth["row"].astype(np.int32)
    return truth
