"""winequality: train, track, evaluate, register and serve a wine-quality model with MLflow.

The public API, importable from here; each name is loaded on first use (importing the package
stays instant, and nothing happens at import):

    from winequality import TrainConfig, run_training
    result = run_training(TrainConfig(alpha=0.5))

Each stage is also a module of its own (`winequality.schema`, `winequality.data`, …); see the
README's architecture section.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    # the feature schema
    "FEATURES": "schema",
    "FEATURE_NAMES": "schema",
    "TARGET": "schema",
    "model_signature": "schema",
    "validate_columns": "schema",
    # data
    "load_data": "data",
    "WineData": "data",
    # training, sweeps, the registry
    "TrainConfig": "train",
    "TrainResult": "train",
    "run_training": "train",
    "SweepConfig": "sweeping",
    "SweepResult": "sweeping",
    "run_sweep": "sweeping",
    "list_versions": "registry",
    # scoring
    "Scorer": "scoring",
    "load_scorer": "scoring",
    "predict_file": "predict",
    "create_app": "serving",
    # errors
    "WinequalityError": "errors",
    "InputError": "errors",
    "DataError": "errors",
    "ParameterError": "errors",
    "PayloadError": "errors",
    "SchemaError": "errors",
    "SweepError": "errors",
    "NotFoundError": "errors",
    "TrackingError": "errors",
    "ModelLoadError": "errors",
    "ModelCheckError": "errors",
}
# Exports never reuse a module's name (`winequality.train` is a module, so the function that
# runs it is exported as `run_training`).
_RENAMED = {"load_data": "load", "run_training": "train"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'winequality' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"winequality.{module}"), _RENAMED.get(name, name))
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
