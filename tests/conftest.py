"""Shared fixtures: the real UCI files beside the repo, synthetic frames, temp MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winequality.schema import FEATURES, TARGET

SHARED_DATA = Path(
    os.environ.get("WINEQUALITY_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def red_csv() -> Path:
    path = SHARED_DATA / "winequality-red.csv"
    if not path.is_file():
        pytest.fail(f"UCI data not found at {path}; set WINEQUALITY_TEST_DATA")
    return path


@pytest.fixture(scope="session")
def seed_csv() -> Path:
    return SHARED_DATA / "red-wine-quality.csv"


@pytest.fixture(scope="session")
def white_csv() -> Path:
    return SHARED_DATA / "winequality-white.csv"


def synthetic_wines(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    """Plausible wines: each feature drawn around its typical value, quality an int 3..8."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {f.name: np.abs(rng.normal(f.typical, f.typical * 0.2, rows)) for f in FEATURES}
    )
    frame["total sulfur dioxide"] = frame["free sulfur dioxide"] * 3
    frame["density"] = rng.uniform(0.99, 1.0, rows)
    frame["pH"] = rng.uniform(2.9, 3.8, rows)
    frame[TARGET.name] = rng.integers(3, 9, rows)
    return frame


@pytest.fixture
def wines() -> pd.DataFrame:
    return synthetic_wines()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run inside a temp folder: mlflow.db, mlruns/ and data/ land there, not in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WINEQUALITY_DATA", raising=False)
    monkeypatch.setenv("WINEQUALITY_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"
