"""Logged models: checked on the way in, loaded with our allow-list on the way out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import skops.io
from mlflow.models import Model

from winequality import logged_model, tracking
from winequality.errors import ModelCheckError, ModelLoadError
from winequality.schema import FEATURE_NAMES


class Custom:
    """A type no allow-list knows: what a tampered model file would smuggle in."""

    def predict(self, x):
        return x[:, 0]


def test_an_estimator_with_types_we_do_not_trust_is_never_logged() -> None:
    from sklearn.pipeline import Pipeline

    with pytest.raises(ModelCheckError, match="types winequality does not trust"):
        logged_model.skops_trusted_types(Pipeline([("custom", Custom())]))


@pytest.fixture
def model_copy(trained_model, tmp_path) -> Path:
    with tracking.activated(trained_model.tracking_uri):  # how MLflow resolves `models:/m-…`
        local = mlflow.artifacts.download_artifacts(trained_model.model_uri, dst_path=str(tmp_path))
    return Path(local)


def test_a_model_folder_loads_with_its_example_and_signature(model_copy, trained_model) -> None:
    loaded = logged_model.load(str(model_copy))
    assert loaded.run_id == trained_model.result.run_id
    assert loaded.input_example is not None
    assert loaded.input_example.shape == (5, 11)
    assert json.loads(loaded.signature["inputs"])[0]["name"] == "fixed acidity"


def test_mlflows_own_parser_reads_the_serving_example_as_the_signature_says(model_copy) -> None:
    """Pins the one private MLflow function we rely on (`logged_model.parse_serving_input`)."""
    from mlflow.models import Model

    meta = Model.load(str(model_copy))
    parsed = logged_model.parse_serving_input(meta.get_serving_input(str(model_copy)), meta)
    assert list(parsed.columns) == list(FEATURE_NAMES)
    assert parsed.shape == (5, 11)
    assert set(parsed.dtypes.astype(str)) == {"float64"}


def test_the_allow_list_in_the_file_is_not_trusted(model_copy, trained_model) -> None:
    skops_file = model_copy / Model.load(model_copy).flavors["sklearn"]["pickled_model"]
    assert skops_file.is_file()
    estimator = logged_model.load(str(model_copy)).estimator
    estimator.steps.append(("custom", Custom()))
    skops.io.dump(estimator, skops_file)  # the file now holds a type we never trusted
    with pytest.raises(
        ModelLoadError, match=r"contains types winequality does not trust: .*Custom"
    ):
        logged_model.load(str(model_copy))


def test_a_model_that_is_not_a_wine_model_is_refused(model_copy) -> None:
    mlmodel = model_copy / "MLmodel"
    text = mlmodel.read_text()
    mlmodel.write_text(text.replace("serialization_format: skops", "serialization_format: pickle"))
    with pytest.raises(ModelLoadError, match="only loads the safe 'skops' format"):
        logged_model.load(str(model_copy))
    mlmodel.write_text(text.replace('"name": "pH"', '"name": "ph"'))
    with pytest.raises(ModelLoadError, match="signature that is not the wine feature schema"):
        logged_model.load(str(model_copy))
    shutil.rmtree(model_copy)
    model_copy.mkdir()
    with pytest.raises(ModelLoadError, match="cannot load model"):
        logged_model.load(str(model_copy))


def test_requirements_are_pinned_from_this_environment() -> None:
    pins = logged_model.pip_requirements()
    assert [p.split("==")[0] for p in pins] == [
        "mlflow",
        "scikit-learn",
        "skops",
        "numpy",
        "pandas",
        "scipy",
    ]
    assert all("==" in p and p.split("==")[1] for p in pins)


def test_a_boosting_model_stores_every_type_its_file_holds(tracking_uri, red_csv) -> None:
    """Not skops' untrusted subset under the scikit-learn that wrote it: a scikit-learn that
    trusts less (1.8 does not trust the loss object) must still load it through MLflow."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    frame = pd.read_csv(red_csv, sep=";")
    features = frame[list(FEATURE_NAMES)]
    pipeline = Pipeline([("model", HistGradientBoostingRegressor(max_iter=5))])
    pipeline.fit(features, frame["quality"])
    tracking.connect(tracking_uri)
    # the store's default experiment, by id: an earlier test may leave another one active
    with tracking.activated(tracking_uri), mlflow.start_run(experiment_id="0"):
        info = logged_model.log_model(pipeline, features.head(5), None)
    stored = set(info.flavors["sklearn"]["skops_trusted_types"])
    assert "sklearn._loss._loss.CyHalfSquaredError" in stored
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in stored
    assert "sklearn.pipeline.Pipeline" in stored  # every type, trusted by default or not
