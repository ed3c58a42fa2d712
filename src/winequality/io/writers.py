"""Outputs written batch by batch onto a temporary file beside the target, renamed onto it
only when every batch passed: Arrow's CSV writer, Parquet's writer, orjson for JSON."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa

from winequality.io import files
from winequality.schema import FEATURE_NAMES

__all__ = ["Writer", "open_writer"]


class Writer:
    """Takes Arrow tables, in order, until closed."""

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _CsvWriter(Writer):
    """Arrow's CSV writer. Text is quoted only where a cell needs it (a separator, a quote or a
    line break in it), as pandas does; Arrow's own "needed" style quotes every text cell."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.header_written = sink, False

    def write(self, table: pa.Table) -> None:
        import pyarrow.csv as pcsv

        if not self.header_written:
            header = io.StringIO()
            csv.writer(header, lineterminator="\n").writerow(table.column_names)
            self.sink.write(header.getvalue().encode())
            self.header_written = True
        style = "none"
        if _needs_quotes(table):  # Arrow would quote every text cell: features go as numbers
            import pyarrow.compute as pc

            style = "needed"
            for index, name in enumerate(table.column_names):
                if name in FEATURE_NAMES and pa.types.is_string(table.schema.field(index).type):
                    number = pc.cast(table.column(index), pa.float64())
                    table = table.set_column(index, name, number)
        options = pcsv.WriteOptions(include_header=False, quoting_style=style)
        pcsv.write_csv(table, self.sink, write_options=options)

    def close(self) -> None:
        pass


def _needs_quotes(table: pa.Table) -> bool:
    import pyarrow.compute as pc

    for name, column in zip(table.column_names, table.columns, strict=True):
        if name in FEATURE_NAMES and pa.types.is_string(column.type):
            continue  # checked: every cell parsed as a number
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            if pc.any(pc.match_substring_regex(column, '[,"\r\n]')).as_py():
                return True
        elif not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            return True  # dates, booleans…: let Arrow decide
    return False


class _ParquetWriter(Writer):
    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.writer = sink, cast(Any, None)

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.sink, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _JsonWriter(Writer):
    """A JSON list of records, written batch by batch (orjson per batch)."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.first = sink, True
        sink.write(b"[")

    def write(self, table: pa.Table) -> None:
        import orjson

        if table.num_rows == 0:
            return
        body = orjson.dumps(table.to_pylist(), option=orjson.OPT_SERIALIZE_NUMPY)
        self.sink.write(b"\n" if self.first else b",\n")
        self.sink.write(body[1:-1])
        self.first = False

    def close(self) -> None:
        self.sink.write(b"\n]\n")


class _Background(Writer):
    """Writes on a thread of its own, so that formatting the output (Arrow's writers work
    without the GIL) overlaps reading, checking and scoring the next batch. At most two
    batches wait: memory stays flat."""

    def __init__(self, inner: Writer) -> None:
        import queue
        import threading

        self.inner = inner
        self.queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="winequality-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (table := self.queue.get()) is not None:
            if self.failure is None:
                try:
                    self.inner.write(table)
                except BaseException as exc:  # raised in the caller's thread
                    self.failure = exc

    def write(self, table: pa.Table) -> None:
        self._raise()
        self.queue.put(table)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()
        self.inner.close()

    def _raise(self) -> None:
        if self.failure is not None:
            raise self.failure


@contextlib.contextmanager
def open_writer(path: Path, media_type: str | None = None) -> Iterator[Writer]:
    """A batch writer on a temporary file beside `path`, renamed onto it if the block ends
    without an exception; otherwise no file is left."""
    media_type = media_type or files.media_type_for(path)
    kinds = {files.CSV: _CsvWriter, files.PARQUET: _ParquetWriter, files.JSON: _JsonWriter}
    with files.atomic_write(path) as partial, open(partial, "wb") as sink:
        writer = _Background(kinds[media_type](sink))
        writer_closed = False
        try:
            yield writer
            writer.close()
            writer_closed = True
        finally:
            if not writer_closed:  # stop the thread; the partial file is deleted anyway
                with contextlib.suppress(BaseException):
                    writer.close()
