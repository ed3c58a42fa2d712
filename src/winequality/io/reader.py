"""The reader: wine measurements from a file or a body, in validated batches, in flat memory.

- `open_input(path)` reads a CSV file with Arrow's streaming CSV reader (blocks parsed on
  Arrow's threads while the previous batch is scored), a Parquet file by row groups. A JSON
  document is one value, so JSON files and standard input are read whole, then cut into
  batches.
- Every batch goes through the same schema check as `serve` and the in-memory decoders
  (`schema.validate_columns`); `Problems` gathers what the batches found, with row positions
  across the whole file, keeping the first `MAX_ROWS_PER_ISSUE` rows of each problem and
  counting the rest. CSV problems cite physical line numbers, blank and malformed lines
  included.
- `open_bytes(content, media_type)` reads a request body the same way (`serve`).

Arrow infers a column's type from the first block; a later cell that does not fit (a word in a
number column) ends that read, so the read starts again with the column as text, which the
schema check then reports cell by cell. That retry is the reader's own: `Input.read(each_pass)`
runs the caller's pass over the batches, and runs it again from the start when the reader
must read again (whatever the pass opened, such as an output file, is closed and dropped by
its own `with` blocks as the retry passes through them). Knows nothing about models.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from winequality import schema
from winequality.errors import DataError, SchemaError, first_line
from winequality.io import files, protocol
from winequality.schema import FEATURE_NAMES, FeatureIssue, Validation

__all__ = [
    "BATCH_BYTES",
    "MAX_ROWS_PER_ISSUE",
    "Batch",
    "Checked",
    "Input",
    "Problems",
    "open_bytes",
    "open_input",
    "validate_table",
]

T = TypeVar("T")

BATCH_BYTES = 4 << 20  # CSV block (about 70,000 rows of wine measurements)
BATCH_ROWS = 65_536  # Parquet and in-memory inputs
MAX_ROWS_PER_ISSUE = 1000  # rows kept per problem; the rest are counted


@dataclass(frozen=True)
class Batch:
    """Rows as read (Arrow, columns named as in the input) and their schema check."""

    columns: pa.Table
    validation: Validation
    start: int  # position of the batch's first row in the whole input (0-based)


@dataclass(frozen=True)
class _Plan:
    """How to read a file: Arrow types for some columns, and whether to parse on one thread
    (Arrow numbers malformed lines only then)."""

    types: dict[str, pa.DataType] = field(default_factory=dict)
    numbered: bool = False


class _ReadAgain(Exception):  # the reader's own signal, never seen outside `Input.read`
    """A cell did not fit the type Arrow inferred for its column: read again with `plan`."""

    def __init__(self, plan: _Plan) -> None:
        super().__init__(f"read again with {plan}")
        self.plan = plan


@dataclass(frozen=True)
class Checked:
    """A whole input read and checked: its features (n, 11) and its warnings."""

    features: np.ndarray
    warnings: list[FeatureIssue]
    rows: int


@dataclass
class Problems:
    """Errors and warnings of every batch, merged per (kind, column, reason)."""

    errors: dict[tuple[Any, ...], FeatureIssue] = field(default_factory=dict)
    warnings: dict[tuple[Any, ...], FeatureIssue] = field(default_factory=dict)

    def add(self, validation: Validation, start: int) -> None:
        for found, into in ((validation.errors, self.errors), (validation.warnings, self.warnings)):
            for issue in found:
                _merge(into, issue, start)

    def add_warning(self, issue: FeatureIssue, start: int) -> None:
        _merge(self.warnings, issue, start)

    @property
    def ok(self) -> bool:
        return not self.errors

    def listed(self, which: str, line_of: Callable[[int], int] | None) -> list[FeatureIssue]:
        """The merged issues, rows turned into line numbers when `line_of` is given."""
        issues = list((self.errors if which == "errors" else self.warnings).values())
        if line_of is None:
            return issues
        return [replace(i, rows=tuple(line_of(r) for r in i.rows)) for i in issues]


def _merge(into: dict[tuple[Any, ...], FeatureIssue], issue: FeatureIssue, start: int) -> None:
    key = (issue.kind, issue.column, issue.reason)
    rows = tuple(r + start for r in issue.rows[:MAX_ROWS_PER_ISSUE])
    known = into.get(key)
    if known is None:
        into[key] = replace(issue, rows=rows, total=issue.count if issue.rows else 0)
        return
    if not issue.rows:
        return  # a column-level problem, found again in the next batch
    room = MAX_ROWS_PER_ISSUE - len(known.rows)
    into[key] = replace(
        known,
        rows=known.rows + rows[: max(room, 0)],
        values=(known.values + issue.values)[: schema.SAMPLE_VALUES],
        total=known.count + issue.count,
    )


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class Input:
    """One input, read batch by batch: `read(each_pass)` runs a pass over its batches."""

    what: str  # how messages name it: the path, or "standard input"
    media_type: str
    names: list[str]  # the input's columns, stripped of surrounding spaces
    size: int  # bytes, for progress
    allow_out_of_range: bool
    _open: Callable[[_Plan], Iterator[pa.RecordBatch]]
    _position: Callable[[], int] = lambda: 0
    row_label: str = "row"
    skipped_lines: list[int] = field(default_factory=list)  # CSV lines not read as rows
    malformed: list[FeatureIssue] = field(default_factory=list)  # CSV lines, by number
    default_types: dict[str, pa.DataType] = field(default_factory=dict)  # Arrow types to read

    def bytes_read(self) -> int:
        return self._position()

    def read(self, each_pass: Callable[[Iterator[Batch]], T]) -> T:
        """`each_pass(batches)`'s result, after the read that went through the whole input.

        When a cell does not fit the type Arrow inferred for its column, the reader starts
        again from the first row with that column as text: `each_pass` is then called again
        with fresh batches, so it must start from nothing each time (the exception that ends
        a pass closes what it opened on its way out).
        """
        plan = _Plan(dict(self.default_types))
        while True:
            try:
                return each_pass(self._batches(plan))
            except _ReadAgain as again:
                plan = again.plan

    def check_all(self) -> Checked:
        """The whole input checked at once (a request body, a batch for drift): its features
        and warnings; SchemaError with every problem."""

        def each_pass(batches: Iterator[Batch]) -> Checked:
            problems, parts, rows = Problems(), [], 0
            for batch in batches:
                problems.add(batch.validation, batch.start)
                rows = batch.start + batch.columns.num_rows
                if problems.ok:
                    parts.append(batch.validation.features)
            warnings = self.finish(problems, rows)
            features = np.concatenate(parts) if parts else np.empty((0, len(FEATURE_NAMES)))
            return Checked(features, warnings, rows)

        return self.read(each_pass)

    def _batches(self, plan: _Plan) -> Iterator[Batch]:
        """Validated batches; raises _ReadAgain when a column needs another type."""
        self.skipped_lines.clear()
        self.malformed.clear()
        start = 0
        pending_blank: list[pa.Table] = []  # blank CSV lines: trailing ones are not rows
        for record_batch in self._open(plan):
            table = pa.Table.from_batches([record_batch]).rename_columns(self.names)
            if table.num_rows == 0:
                continue
            if self.media_type == files.CSV:
                table, blank_tail = _split_blank_tail(table)
                if table.num_rows and pending_blank:  # blank lines inside the file are rows
                    table = pa.concat_tables([*pending_blank, table])
                    pending_blank = []
                if blank_tail is not None:
                    pending_blank.append(blank_tail)
                if table.num_rows == 0:
                    continue
            yield Batch(table, self._validate(table), start)
            start += table.num_rows

    def finish(self, problems: Problems, rows: int) -> list[FeatureIssue]:
        """After a whole read: raise SchemaError with every problem (a file with no rows
        included), cited by line for CSV; otherwise the warnings, cited the same way."""
        if rows == 0:
            problems.add(self.empty_check(), 0)
        line_of = self.line_of if self.row_label == "line" else None
        if not problems.ok or self.malformed:
            raise SchemaError(
                problems.listed("errors", line_of) + list(self.malformed),  # already numbered
                what=self.what,
                row_label=self.row_label,
            )
        return problems.listed("warnings", line_of)

    def empty_check(self) -> Validation:
        """The check of a file with a header and no rows (what is missing, and no rows)."""
        frame = {name: np.empty(0, dtype=object) for name in self.names}
        return schema.validate_columns(
            frame, n_rows=0, column_order=self.names, allow_out_of_range=self.allow_out_of_range
        )

    def line_of(self, position: int) -> int:
        """The physical line of data row `position` (the header is line 1)."""
        line = position + 2
        for skipped in self.skipped_lines:  # sorted, and few: malformed lines
            if skipped <= line:
                line += 1
        return line

    def _validate(self, table: pa.Table) -> Validation:
        return validate_table(table, self.names, allow_out_of_range=self.allow_out_of_range)


def validate_table(
    table: pa.Table, names: list[str], *, allow_out_of_range: bool = False, decimal: str = "."
) -> Validation:
    """The schema check of an Arrow table whose columns are `names` (as `predict`, `serve` and
    the Spark executors all check): text cells are parsed as numbers, and where a column has a
    cell that is not one, checked cell by cell so that each problem is named."""
    import pyarrow.compute as pc

    frame: dict[str, np.ndarray] = {}
    for name, column in zip(names, table.columns, strict=True):
        if name not in FEATURE_NAMES or name in frame:  # only features are checked
            continue
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            if decimal != ".":  # a spreadsheet export's decimal commas
                column = pc.replace_substring(column, decimal, ".")
            with contextlib.suppress(pa.ArrowInvalid):
                column = pc.cast(column, pa.float64())
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            frame[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        else:  # cell by cell, each problem named
            frame[name] = np.asarray(column.to_pylist(), dtype=object)
    return schema.validate_columns(
        frame,
        n_rows=table.num_rows,
        column_order=names,
        unknown="warn",
        allow_out_of_range=allow_out_of_range,
    )


def _split_blank_tail(table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """(rows up to the last non-blank one, the blank rows after it or None)."""
    import pyarrow.compute as pc

    if table.num_columns == 0:
        return table, None
    last = table.slice(table.num_rows - 1)
    if any(_filled(column)[0].as_py() for column in last.columns):  # the usual case: no tail
        return table, None
    filled = None
    for column in table.columns:
        valid = _filled(column)
        filled = valid if filled is None else pc.or_(filled, valid)
    assert filled is not None
    where = np.flatnonzero(filled.to_numpy(zero_copy_only=False))
    end = int(where[-1]) + 1 if where.size else 0
    if end == table.num_rows:
        return table, None
    return table.slice(0, end), table.slice(end)


def _filled(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a cell holds something (not null, not only spaces)."""
    import pyarrow.compute as pc

    valid = pc.is_valid(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        valid = pc.and_(valid, pc.not_equal(pc.utf8_trim_whitespace(column), ""))
    return pc.fill_null(valid, False)


def open_input(path: Path, *, allow_out_of_range: bool = False) -> Input:
    """An input file (CSV, Parquet or JSON by extension; `-` is standard input, sniffed)."""
    if path == files.STDIO:
        content = sys.stdin.buffer.read()
        return open_bytes(content, files.sniff(content), "standard input", allow_out_of_range)
    media_type, what = files.media_type_for(path), str(path)
    if not path.is_file():
        raise DataError(f"no such input file: {path}")
    if media_type == files.CSV:
        return _csv_input(path, what, allow_out_of_range)
    if media_type == files.PARQUET:
        return _parquet_input(path, what, allow_out_of_range)
    return open_bytes(files.read_bytes(path), media_type, what, allow_out_of_range)


def _csv_input(source: Path | bytes, what: str, allow_out_of_range: bool) -> Input:
    import pyarrow.csv as pcsv

    head = source[:65536] if isinstance(source, bytes) else _head(source)
    separator, decimal = files.detect_layout(head, what)
    header_line = head.decode("utf-8-sig", errors="replace").splitlines()[0]
    raw = next(csv.reader([header_line], delimiter=separator))
    names = [name.strip() for name in raw]
    generated = [f"c{i}" for i in range(len(raw))]  # ours: duplicates and spaces are allowed
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    state: dict[str, Any] = {"file": None}
    result: Input

    def position() -> int:
        handle = state["file"]
        with contextlib.suppress(Exception):
            return int(handle.tell()) if handle is not None else 0
        return size

    def batches(plan: _Plan) -> Iterator[pa.RecordBatch]:
        types, numbered = plan.types, plan.numbered
        malformed: list[tuple[int | None, str, int, int]] = []

        def on_invalid(row: Any) -> str:
            malformed.append((row.number, row.text, row.actual_columns, row.expected_columns))
            return "skip"

        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        state["file"] = handle
        try:
            try:
                reader = pcsv.open_csv(
                    handle,
                    read_options=pcsv.ReadOptions(
                        column_names=generated,
                        skip_rows=1,
                        block_size=BATCH_BYTES,
                        use_threads=not numbered,
                    ),
                    parse_options=pcsv.ParseOptions(
                        delimiter=separator,
                        ignore_empty_lines=False,
                        invalid_row_handler=on_invalid,
                    ),
                    convert_options=pcsv.ConvertOptions(
                        column_types={generated[names.index(n)]: t for n, t in types.items()},
                        decimal_point=decimal,
                        strings_can_be_null=True,
                    ),
                )
                for batch in reader:
                    if malformed and malformed[0][0] is None:
                        # Arrow numbers malformed lines only when parsing on one thread
                        raise _ReadAgain(replace(plan, numbered=True))
                    yield batch
            except pa.ArrowInvalid as exc:
                column = _failed_column(str(exc))
                if column is None or types.get(names[column]) == pa.string():  # not a type
                    problem = first_line(exc)
                    raise DataError(f"{what} is not a readable CSV file: {problem}") from exc
                retyped = {**types, names[column]: pa.string()}
                raise _ReadAgain(replace(plan, types=retyped)) from exc
            if malformed and malformed[0][0] is None:
                raise _ReadAgain(replace(plan, numbered=True))
            result.skipped_lines[:] = sorted(int(n) for n, *_ in malformed if n is not None)
            for number, text, actual, expected in malformed:
                result.malformed.append(
                    FeatureIssue(
                        "bad_row",
                        None,
                        f"has {actual} values where the header has {expected}",
                        (int(number or 0),),
                        (text[:60],),
                    )
                )
        finally:
            state["file"] = None
            handle.close()

    result = Input(
        what,
        files.CSV,
        names,
        size,
        allow_out_of_range,
        batches,
        position,
        row_label="line",
    )
    if len(set(names)) == len(names):  # the features as numbers from the start
        # Features are read as text and parsed once checked: a CSV output then repeats the
        # cells as written (formatting millions of numbers again is most of a CSV writer's
        # work). With decimal commas, Arrow parses them as numbers from the start.
        kind = pa.string() if decimal == "." else pa.float64()
        result.default_types = {n: kind for n in FEATURE_NAMES if n in names}
    return result


_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): CSV conversion error")


def _failed_column(message: str) -> int | None:
    found = _COLUMN_ERROR.search(message)
    return int(found.group(1)) if found else None


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(65536)


def _parquet_input(path: Path, what: str, allow_out_of_range: bool) -> Input:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{what} is not readable Parquet: {first_line(exc)}") from exc
    names = [str(n).strip() for n in parquet.schema_arrow.names]
    done = {"rows": 0}
    total_rows = max(parquet.metadata.num_rows, 1)
    size = path.stat().st_size

    def batches(plan: _Plan) -> Iterator[pa.RecordBatch]:
        done["rows"] = 0
        try:
            # one row group at a time: a single `iter_batches` over the whole file keeps what
            # it read allocated until the end (apache/arrow#39808: 1.7x the peak at 5x the rows)
            for group in range(parquet.num_row_groups):
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
                    done["rows"] += batch.num_rows
                    yield batch
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{what} is not readable Parquet: {first_line(exc)}") from exc

    return Input(
        what,
        files.PARQUET,
        names,
        size,
        allow_out_of_range,
        batches,
        lambda: size * done["rows"] // total_rows,
    )


def open_bytes(
    content: bytes,
    media_type: str,
    what: str = "the body",
    allow_out_of_range: bool = False,
    *,
    cite_lines: bool = True,
) -> Input:
    """Bytes in memory (a request body, standard input, a JSON file): CSV through the same
    Arrow reader as files; Parquet and JSON decoded whole, then cut into batches.

    `cite_lines=False` cites CSV problems by 0-based row, as HTTP bodies do."""
    if media_type == files.CSV:
        try:  # Arrow decodes a malformed row's text for its callback and cannot say why
            content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{what} is not UTF-8 text (byte {content[exc.start]:#04x} at offset {exc.start})"
            ) from None
        source = _csv_input(content, what, allow_out_of_range)
        if not cite_lines:
            source.row_label = "row"
        return source
    if media_type == files.PARQUET:
        buffer = pa.BufferReader(content)
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(buffer)
        except Exception as exc:
            raise DataError(f"{what} is not readable Parquet: {first_line(exc)}") from exc
    else:
        table = _arrow_table(protocol.file_frame(content, what))
    names = [str(n).strip() for n in table.column_names]
    return Input(
        what,
        media_type,
        names,
        len(content),
        allow_out_of_range,
        lambda plan: iter(table.to_batches(max_chunksize=BATCH_ROWS)),
    )


def _arrow_table(frame: Any) -> pa.Table:
    """A decoded JSON frame as Arrow; mixed columns (numbers and words) stay Python objects."""
    columns = {}
    for name in frame.columns:
        try:
            columns[str(name)] = pa.array(frame[name], from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            columns[str(name)] = pa.array([repr(v) for v in frame[name]], type=pa.string())
    if len(set(columns)) != len(frame.columns):  # duplicated names: keep them all
        return pa.Table.from_arrays(
            [pa.array(frame.iloc[:, i], from_pandas=True) for i in range(frame.shape[1])],
            names=[str(n) for n in frame.columns],
        )
    return pa.table(columns)
