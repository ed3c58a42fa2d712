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


class TrainedModel:
    """One model trained on the red data in a temp store, registered as `wine-test` v1."""

    def __init__(self, result, tracking_uri: str, folder: Path) -> None:
        self.result, self.tracking_uri, self.folder = result, tracking_uri, folder
        self.model_uri = result.model_uri


@pytest.fixture(scope="session")
def trained_model(red_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    import mlflow

    from winequality.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("model")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = train(TrainConfig(data=str(red_csv), tracking_uri=uri, output_dir=None))
    client = mlflow.MlflowClient(uri)
    version = mlflow.register_model(result.model_uri, "wine-test")
    client.set_registered_model_alias("wine-test", "champion", version.version)
    return TrainedModel(result, uri, folder)


@pytest.fixture(scope="session")
def scorer(trained_model: TrainedModel):
    from winequality.predict import load_scorer

    return load_scorer(trained_model.model_uri, trained_model.tracking_uri)


@pytest.fixture(scope="session")
def mlflow_pyfunc(trained_model: TrainedModel):
    """MLflow's own loaded model: the oracle for parity tests."""
    import mlflow

    from winequality.train import allow_model_deserialization

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    with allow_model_deserialization():
        return mlflow.pyfunc.load_model(trained_model.model_uri)
