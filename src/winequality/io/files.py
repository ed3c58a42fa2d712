"""Files: media types, bytes from disk, the CSV layout, and writes a reader never sees half of."""

from __future__ import annotations

import contextlib
import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from winequality.errors import DataError

__all__ = [
    "CSV",
    "EXTENSIONS",
    "JSON",
    "MEDIA_TYPES",
    "PARQUET",
    "SEPARATORS",
    "STDIO",
    "atomic_write",
    "detect_layout",
    "media_type_for",
    "read_bytes",
    "sniff",
]

CSV = "text/csv"
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = (JSON, CSV, PARQUET)
EXTENSIONS = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET, ".json": JSON}
STDIO = Path("-")  # `--input -` / `--output -`: standard input or output, as Unix tools do
SEPARATORS = (",", ";")
_DECIMAL_COMMA = re.compile(r"\d,\d")


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


def sniff(content: bytes) -> str:
    """The media type of unnamed bytes (standard input): Parquet's magic, JSON's bracket, CSV."""
    if content[:4] == b"PAR1":
        return PARQUET
    return JSON if content.lstrip()[:1] in (b"{", b"[") else CSV


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when it is gzip (`.gz`)."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def detect_layout(content: bytes, what: str) -> tuple[str, str]:
    """(separator, decimal mark) from the header and the first rows.

    `;` for UCI's layout and French exports, `,` for the tutorial's: whichever splits the
    header into more fields. A `;` file whose numbers have a comma between digits (`7,4;0,7`)
    is a spreadsheet export with decimal commas.
    """
    text = content[:65536].decode("utf-8-sig", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{what} is empty: expected a header line and rows of wine measurements")
    header = lines[0]
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    separator = max(counts, key=lambda s: counts[s])
    if counts[separator] == 0:
        other = next((s for s in ("\t", "|", " ") if s in header.strip()), None)
        found = f" it looks {'tab' if other == chr(9) else repr(other)}-separated;" if other else ""
        raise DataError(
            f"{what}: cannot find the column separator in the header;{found} winequality reads "
            f"',' (the tutorial's layout) or ';' (UCI's layout)"
        )
    rows = lines[1:21]
    decimal = "," if separator == ";" and any(_DECIMAL_COMMA.search(r) for r in rows) else "."
    return separator, decimal


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; renamed onto it only if the block succeeds.

    A reader never sees half a file, and a failure leaves no file at all.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
