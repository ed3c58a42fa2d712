"""Finding, fetching, reading and checking wine data, and the seeded split.

UCI's red and white files ship inside the package (gzip, verified by SHA-256 on every read), as
scikit-learn ships its small datasets: with no `--data`, nothing touches the network. `--data
uci` downloads UCI's archive once into the user cache (pooch), verifying the extracted file by
the same hash; `--data PATH|URL` reads any CSV. Three CSV layouts are read: UCI's (`;`-separated,
quoted header), the tutorial's copy (`,`-separated) and a French spreadsheet export (`;` with
decimal commas); the separator and decimal mark are detected from the file.
Knows nothing about models or MLflow.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from winequality.errors import DataError, SchemaError, first_line
from winequality.io import files
from winequality.schema import (
    FEATURE_NAMES,
    INPUT_EXAMPLE_ROWS,
    TARGET,
    FeatureIssue,
    validate_columns,
)

__all__ = [
    "ENV_CACHE",
    "ENV_DATA_URL",
    "UCI",
    "UCI_ARCHIVE_URL",
    "UCI_MEMBER_SHA256",
    "Resolved",
    "Table",
    "Wine",
    "WineData",
    "cache_dir",
    "download_failure",
    "embedded_bytes",
    "embedded_path",
    "fetch_uci",
    "fetch_url",
    "load",
    "member_name",
    "read_table",
    "require_rows",
    "resolve",
    "rows_needed",
    "sha256_of",
    "split",
    "write_csv_atomic",
]

Wine = Literal["red", "white"]

UCI = "uci"  # --data uci: download UCI's archive instead of using the embedded copy
UCI_ARCHIVE_URL = "https://archive.ics.uci.edu/static/public/186/wine+quality.zip"
# SHA-256 of UCI's CSV files. The embedded copies are these bytes, gzip-compressed; downloads
# are checked against the same hashes (UCI re-zips its archive from time to time, so the zip's
# own hash is not stable, its members are).
UCI_MEMBER_SHA256 = {
    "winequality-red.csv": "57050ed70cee37ffe2617ad7a7717e4fbe71514c42341c781c1bbba93a7a21f5",
    "winequality-white.csv": "3edb25c969af6efe4715ff60629542f4e7a49f6c52be1f662a12647b8f5b4f14",
}
ENV_DATA_URL = "WINEQUALITY_DATA_URL"  # where --data uci fetches the archive (mirrors, tests)
ENV_CACHE = "WINEQUALITY_CACHE"  # cache folder (default: the OS user cache)


@dataclass(frozen=True)
class WineData:
    """A checked training frame: 11 float64 features and the integer target, in schema order."""

    frame: pd.DataFrame
    path: Path  # the local file the rows came from (the package's .gz, or a cached download)
    name: str  # the CSV's file name, e.g. winequality-red.csv
    source: str  # what the user named: a path, a URL, or the UCI archive URL
    description: str  # for messages: the path, the URL, or which embedded copy
    sha256: str  # of the CSV's bytes (uncompressed)
    separator: str
    decimal: str
    duplicate_rows: int
    warnings: tuple[FeatureIssue, ...] = ()  # columns that were ignored

    @property
    def features(self) -> pd.DataFrame:
        return self.frame.loc[:, list(FEATURE_NAMES)]

    @property
    def target(self) -> pd.Series:
        return self.frame[TARGET.name]


@dataclass(frozen=True)
class Table:
    """A CSV read without judging it: cells that are not numbers stay text."""

    frame: pd.DataFrame
    separator: str
    decimal: str


def cache_dir() -> Path:
    import pooch

    return Path(os.environ.get(ENV_CACHE) or pooch.os_cache("winequality"))


def member_name(wine: Wine) -> str:
    return f"winequality-{wine}.csv"


def embedded_path(wine: Wine) -> Path:
    """The package's gzip copy of UCI's file for `wine` (read it with `io.files.read_bytes`)."""
    return Path(str(resources.files("winequality") / "datasets" / f"{member_name(wine)}.gz"))


def embedded_bytes(wine: Wine) -> bytes:
    """UCI's CSV for `wine`, from the package, verified against UCI's SHA-256."""
    name = member_name(wine)
    content = gzip.decompress(embedded_path(wine).read_bytes())
    digest = hashlib.sha256(content).hexdigest()
    if digest != UCI_MEMBER_SHA256[name]:
        raise DataError(
            f"the copy of {name} shipped with winequality is damaged (sha256 {digest[:12]}…, "
            f"expected {UCI_MEMBER_SHA256[name][:12]}…); reinstall winequality, or pass a file "
            f"with --data"
        )
    return content


def fetch_uci(wine: Wine = "red", url: str | None = None) -> Path:
    """Download UCI's archive once, verify the extracted CSV, return its cached path."""
    import pooch

    url = url or os.environ.get(ENV_DATA_URL) or UCI_ARCHIVE_URL
    member = member_name(wine)
    folder = cache_dir()
    try:
        extracted = pooch.retrieve(
            url,
            known_hash=None,
            fname="wine+quality.zip",
            path=folder,
            processor=pooch.Unzip(members=[member]),
            progressbar=False,
        )
    except Exception as exc:
        raise DataError(
            f"could not download the wine data from {url}: {download_failure(exc)}. "
            f"Omit --data to use the copy of {member} shipped with winequality, "
            f"or pass a local file: --data /path/to/{member}"
        ) from exc
    path = Path(extracted[0])
    digest = sha256_of(path.read_bytes())
    if digest != UCI_MEMBER_SHA256[member]:
        for stale in (path, folder / "wine+quality.zip"):
            stale.unlink(missing_ok=True)
        raise DataError(
            f"the downloaded {member} failed verification (sha256 {digest[:12]}…, expected "
            f"{UCI_MEMBER_SHA256[member][:12]}…); the cached copy was removed. Retry, or omit "
            f"--data to use the copy shipped with winequality."
        )
    return path


def fetch_url(url: str) -> Path:
    """Download a CSV from a URL once into the cache (keyed by URL) and return its path."""
    import pooch

    name = hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + (url.rsplit("/", 1)[-1] or "data")
    try:
        return Path(
            pooch.retrieve(
                url, known_hash=None, fname=name, path=cache_dir() / "urls", progressbar=False
            )
        )
    except Exception as exc:
        raise DataError(
            f"could not download {url}: {download_failure(exc)}. Download it yourself and pass "
            f"the local path: --data /path/to/file.csv"
        ) from exc


def download_failure(exc: BaseException) -> str:
    """What went wrong with a download, in words (never the HTTP library's internals)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"the server answered HTTP {exc.response.status_code}"
    if isinstance(exc, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (no network, or the server is down)"
    if isinstance(exc, (OSError, ValueError)):
        return first_line(exc)
    return type(exc).__name__


@dataclass(frozen=True)
class Resolved:
    path: Path
    name: str
    source: str
    description: str
    content: bytes


def resolve(data: str | os.PathLike[str] | None, wine: Wine = "red") -> Resolved:
    """Turn --data (nothing, `uci`, a URL or a path) into bytes and where they came from."""
    if data is None:
        name = member_name(wine)
        return Resolved(
            embedded_path(wine),
            name,
            UCI_ARCHIVE_URL,
            f"UCI {name} (shipped with winequality)",
            embedded_bytes(wine),
        )
    text = os.fspath(data)
    if text.lower() == UCI:
        path = fetch_uci(wine)
        return Resolved(
            path,
            path.name,
            os.environ.get(ENV_DATA_URL) or UCI_ARCHIVE_URL,
            f"UCI {path.name} (downloaded, {path})",
            path.read_bytes(),
        )
    if text.startswith(("http://", "https://")):
        path = fetch_url(text)
        return Resolved(path, text.rsplit("/", 1)[-1] or path.name, text, text, path.read_bytes())
    path = Path(text).expanduser()
    if not path.is_file():
        raise DataError(
            f"no such data file: {path} (omit --data to use the UCI data shipped with "
            f"winequality, or --data uci to download it)"
        )
    return Resolved(path, path.name, str(path), str(path), files.read_bytes(path))


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def read_table(content: bytes, what: str) -> Table:
    """Read CSV bytes in any of the layouts without judging the cells."""
    separator, decimal = files.detect_layout(content, what)
    try:
        frame = pd.read_csv(
            io.BytesIO(content),
            sep=separator,
            decimal=decimal,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{what} is empty: expected a header line and rows") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} is not a readable CSV file: {first_line(exc)}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    # Blank lines inside the file are rows with missing values (reported by line); blank lines
    # at the end are just how editors save files.
    filled = np.flatnonzero(frame.notna().any(axis=1).to_numpy())
    end = int(filled[-1]) + 1 if filled.size else 0
    return Table(frame.iloc[:end], separator, decimal)


def load(data: str | os.PathLike[str] | None = None, wine: Wine = "red") -> WineData:
    """Find, read and check a training file; raise SchemaError listing every problem.

    Problems are reported with file line numbers (the header is line 1). Columns other than
    the features and the target are ignored, and named in `warnings`.
    """
    resolved = resolve(data, wine)
    table = read_table(resolved.content, resolved.description)
    # pandas renames a repeated header name (`pH`, `pH.1`): check the names as written
    names = _header(resolved.content, table.separator)
    if len(names) != table.frame.shape[1]:
        names = list(table.frame.columns)
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        columns.setdefault(name, table.frame.iloc[:, i].to_numpy())
    checked = validate_columns(
        columns,
        n_rows=len(table.frame),
        column_order=names,
        require_target=True,
        unknown="warn",
    )
    if not checked.ok:
        raise SchemaError(
            checked.errors,
            what=f"training data {resolved.description}",
            row_label="line",
            row_offset=2,
        )
    frame = pd.DataFrame(checked.features, columns=list(FEATURE_NAMES))
    assert checked.target is not None
    frame[TARGET.name] = checked.target.astype(np.int64)
    return WineData(
        frame=frame,
        path=resolved.path,
        name=resolved.name,
        source=resolved.source,
        description=resolved.description,
        sha256=sha256_of(resolved.content),
        separator=table.separator,
        decimal=table.decimal,
        duplicate_rows=int(frame.duplicated().sum()),
        warnings=tuple(checked.warnings),
    )


def _header(content: bytes, separator: str) -> list[str]:
    """The header's names as written (stripped), duplicates kept."""
    import csv

    first = content[:65536].decode("utf-8-sig", errors="replace").splitlines()[:1]
    return [name.strip() for name in next(csv.reader(first, delimiter=separator), [])]


def rows_needed(test_size: float, folds: int = 0) -> tuple[int, int]:
    """(rows a training file needs, rows left to train on): once the held-out share is set
    aside, the training rows must hold the input example and, to cross-validate, two rows per
    fold. The one definition `train` and `sweep` check against."""
    train_rows = max(INPUT_EXAMPLE_ROWS, 2 * folds)
    total = train_rows + 1
    while total - math.ceil(total * test_size) < train_rows:
        total += 1
    return total, train_rows


def require_rows(wine: WineData, test_size: float, folds: int = 0) -> None:
    """DataError, in one line, when `wine` has too few rows to train and test on."""
    total, train_rows = rows_needed(test_size, folds)
    rows = len(wine.frame)
    if rows >= total:
        return
    why = f"the input example's {INPUT_EXAMPLE_ROWS} rows" + (
        f" and 2 per fold for {folds} folds" if 2 * folds > INPUT_EXAMPLE_ROWS else ""
    )
    raise DataError(
        f"training data {wine.description} has {rows} rows; at least {total} are needed "
        f"({train_rows} to train on after the {test_size:.0%} held-out share: {why})"
    )


def split(
    frame: pd.DataFrame, test_size: float = 0.25, seed: int = 40
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tutorial's split: scikit-learn's shuffled 75/25 split; seed 40 reproduces it."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=test_size, random_state=seed)
    return train, test


def write_csv_atomic(frame: pd.DataFrame, path: Path, *, index: bool = False) -> None:
    with files.atomic_write(path) as partial:
        frame.to_csv(partial, index=index)
