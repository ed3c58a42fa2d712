"""Finding, fetching, caching, reading and checking wine data, and the seeded split.

Two CSV layouts exist: UCI's (`;`-separated, quoted header) and the seed's copy (`,`-separated);
the separator is detected from the header. With no path given, the UCI archive is downloaded
once into the user cache by pooch and each extracted file is verified by SHA-256.
Knows nothing about models or MLflow.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from winequality.errors import first_line
from winequality.schema import FEATURE_NAMES, TARGET, SchemaError, validate_columns

Wine = Literal["red", "white"]

UCI_ARCHIVE_URL = "https://archive.ics.uci.edu/static/public/186/wine+quality.zip"
# SHA-256 of the files inside UCI's archive: we verify what we use, since UCI re-zips the
# archive from time to time (the zip's own hash is not stable, its members are).
UCI_MEMBER_SHA256 = {
    "winequality-red.csv": "57050ed70cee37ffe2617ad7a7717e4fbe71514c42341c781c1bbba93a7a21f5",
    "winequality-white.csv": "3edb25c969af6efe4715ff60629542f4e7a49f6c52be1f662a12647b8f5b4f14",
}
ENV_DATA = "WINEQUALITY_DATA"  # a path or URL used when --data is not given
ENV_DATA_URL = "WINEQUALITY_DATA_URL"  # where the UCI archive is fetched from (mirrors, tests)
ENV_CACHE = "WINEQUALITY_CACHE"  # cache folder (default: the OS user cache)
SEPARATORS = (",", ";")


class DataError(ValueError):
    """The data could not be found, fetched or parsed; the message says what to do."""


@dataclass(frozen=True)
class WineData:
    """A checked training frame: 11 float64 features and the integer target, in schema order."""

    frame: pd.DataFrame
    path: Path  # the local file the rows came from (a cached download for URLs)
    source: str  # what the user named: a path, a URL, or the UCI archive URL
    sha256: str
    separator: str
    duplicate_rows: int

    @property
    def features(self) -> pd.DataFrame:
        return self.frame.loc[:, list(FEATURE_NAMES)]

    @property
    def target(self) -> pd.Series:
        return self.frame[TARGET.name]


def cache_dir() -> Path:
    import pooch

    return Path(os.environ.get(ENV_CACHE) or pooch.os_cache("winequality"))


def fetch_uci(wine: Wine = "red", url: str | None = None) -> Path:
    """Download UCI's archive once, verify the extracted CSV, return its cached path."""
    import pooch

    url = url or os.environ.get(ENV_DATA_URL) or UCI_ARCHIVE_URL
    member = f"winequality-{wine}.csv"
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
            f"could not download the wine data from {url} ({first_line(exc)}). "
            f"Pass a local copy instead: --data /path/to/{member} "
            f"(or set {ENV_DATA}=/path/to/{member})."
        ) from exc
    path = Path(extracted[0])
    digest = sha256_of(path)
    if digest != UCI_MEMBER_SHA256[member]:
        for stale in (path, folder / "wine+quality.zip"):
            stale.unlink(missing_ok=True)
        raise DataError(
            f"the downloaded {member} failed verification (sha256 {digest[:12]}…, expected "
            f"{UCI_MEMBER_SHA256[member][:12]}…); the cached copy was removed. Retry, or pass a "
            f"trusted local file with --data."
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
            f"could not download {url} ({first_line(exc)}). Download it yourself and pass the "
            f"local path: --data /path/to/file.csv"
        ) from exc


def resolve(data: str | os.PathLike[str] | None, wine: Wine = "red") -> tuple[Path, str]:
    """Turn --data (a path, a URL, or nothing) into a local file and a description of it."""
    data = data if data is not None else os.environ.get(ENV_DATA) or None
    if data is None:
        return fetch_uci(wine), os.environ.get(ENV_DATA_URL) or UCI_ARCHIVE_URL
    text = os.fspath(data)
    if text.startswith(("http://", "https://")):
        return fetch_url(text), text
    path = Path(text).expanduser()
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    return path, str(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_separator(path: Path) -> str:
    """`;` for UCI's layout, `,` for the seed's: whichever splits the header into more fields."""
    with path.open("r", encoding="utf-8-sig", errors="replace") as handle:
        header = ""
        for line in handle:
            if line.strip():
                header = line
                break
    if not header:
        raise DataError(f"{path} is empty: expected a header line and rows of wine measurements")
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    if counts[best] == 0:
        other = next((s for s in ("\t", "|", " ") if s in header.strip()), None)
        found = f" it looks {'tab' if other == chr(9) else repr(other)}-separated;" if other else ""
        raise DataError(
            f"{path}: cannot find the column separator in the header;{found} winequality reads "
            f"',' (the seed's layout) or ';' (UCI's layout)"
        )
    return best


def read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a CSV in either layout without judging it: cells that are not numbers stay text."""
    separator = detect_separator(path)
    try:
        frame = pd.read_csv(path, sep=separator, skip_blank_lines=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty: expected a header line and rows") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV file: {first_line(exc)}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    # Blank lines inside the file are rows with missing values (reported by line); blank lines
    # at the end are just how editors save files.
    filled = np.flatnonzero(frame.notna().any(axis=1).to_numpy())
    end = int(filled[-1]) + 1 if filled.size else 0
    return frame.iloc[:end], separator


def load(data: str | os.PathLike[str] | None = None, wine: Wine = "red") -> WineData:
    """Find, read and check a training file; raise SchemaError listing every problem.

    Problems are reported with file line numbers (the header is line 1).
    """
    path, source = resolve(data, wine)
    raw, separator = read_table(path)
    checked = validate_columns(raw, require_target=True, unknown="error")
    if not checked.ok:
        raise SchemaError(
            checked.errors, what=f"training data {path}", row_label="line", row_offset=2
        )
    frame = pd.DataFrame(checked.features, columns=list(FEATURE_NAMES))
    assert checked.target is not None
    frame[TARGET.name] = checked.target.astype(np.int64)
    return WineData(
        frame=frame,
        path=path,
        source=source,
        sha256=sha256_of(path),
        separator=separator,
        duplicate_rows=int(frame.duplicated().sum()),
    )


def split(
    frame: pd.DataFrame, test_size: float = 0.25, seed: int = 40
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seed's split: scikit-learn's shuffled 75/25 split; seed 40 reproduces the seed's."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=test_size, random_state=seed)
    return train, test


def write_csv_atomic(frame: pd.DataFrame, path: Path, *, index: bool = False) -> None:
    """Write next to the target then rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        frame.to_csv(partial, index=index)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
