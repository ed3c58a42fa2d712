"""Model families: raw features in, parameters validated once, search spaces used."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from winequality import model
from winequality.errors import ParameterError


def test_the_tutorials_elasticnet() -> None:
    pipeline = model.elasticnet()
    assert [name for name, _ in pipeline.steps] == ["elasticnet"]
    params = pipeline[-1].get_params()
    assert (params["alpha"], params["l1_ratio"], params["random_state"]) == (0.7, 0.7, 42)
    assert [name for name, _ in model.elasticnet(scale=True).steps] == ["scale", "elasticnet"]


@pytest.mark.parametrize(
    ("alpha", "l1_ratio", "message"),
    [(0.0, 0.5, "alpha must be > 0"), (-1, 0.5, "alpha"), (0.5, 1.5, "l1_ratio must be within")],
)
def test_parameters_are_validated_once_with_a_clear_error(alpha, l1_ratio, message) -> None:
    with pytest.raises(ParameterError, match=message):
        model.elasticnet(alpha, l1_ratio)


def test_an_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ParameterError, match="choose from elasticnet, svr, random-forest"):
        model.family("deep-net")


@pytest.mark.parametrize("name", list(model.FAMILIES))
def test_every_family_fits_raw_features_from_its_own_search_space(name, wines) -> None:
    family = model.family(name)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = family.suggest(trial)
    assert set(params) >= set(family.axes)
    assert set(params) == set(family.grid)
    x = wines.drop(columns="quality").to_numpy()
    fitted = family.build(params).fit(x, wines["quality"])
    assert fitted.predict(x).shape == (len(wines),)
    assert np.isfinite(fitted.predict(x)).all()
