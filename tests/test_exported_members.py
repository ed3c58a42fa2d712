"""The public API is declared and pinned, as httpx pins its own.

Every module declares `__all__`; it must name exactly the public things the module defines.
The package exports a pinned set of names, each loaded lazily from its module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import winequality

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(winequality.__path__) if not m.name.startswith("_")
)


def test_every_module_is_covered() -> None:
    assert MODULES == [
        "cli",
        "codecs",
        "data",
        "drift",
        "errors",
        "evaluate",
        "logged_model",
        "metrics",
        "model",
        "predict",
        "registry",
        "schema",
        "serve",
        "spark",
        "streaming",
        "studies",
        "sweep",
        "tracking",
        "train",
    ]


@pytest.mark.parametrize("name", MODULES)
def test_each_module_declares_exactly_what_it_defines(name: str) -> None:
    module = importlib.import_module(f"winequality.{name}")
    declared = module.__all__
    assert (
        declared == sorted(declared, key=lambda n: (not n.isupper(), n))
        or declared == sorted(declared)
        or len(set(declared)) == len(declared)
    )
    assert len(set(declared)) == len(declared)
    for exported in declared:
        assert hasattr(module, exported), f"{name}.__all__ names {exported}, which is missing"
    defined = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and getattr(v, "__module__", None) == module.__name__
    }
    assert defined <= set(declared), f"public but undeclared in {name}: {defined - set(declared)}"


def test_the_package_exports_are_pinned() -> None:
    assert winequality.__all__ == [
        "DataError",
        "FEATURES",
        "FEATURE_NAMES",
        "InputError",
        "ModelCheckError",
        "ModelLoadError",
        "NotFoundError",
        "ParameterError",
        "PayloadError",
        "SchemaError",
        "Scorer",
        "SweepConfig",
        "SweepError",
        "SweepResult",
        "TARGET",
        "TrackingError",
        "TrainConfig",
        "TrainResult",
        "WineData",
        "WinequalityError",
        "create_app",
        "list_versions",
        "load_data",
        "load_scorer",
        "model_signature",
        "predict_file",
        "run_sweep",
        "run_training",
        "validate_columns",
    ]
    assert not set(winequality.__all__) & set(MODULES)  # a module name would shadow it
    for name in winequality.__all__:
        assert getattr(winequality, name) is not None
    assert winequality.load_data is importlib.import_module("winequality.data").load
    assert winequality.run_training is importlib.import_module("winequality.train").train
    with pytest.raises(AttributeError):
        _ = winequality.no_such_name


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, winequality, winequality.cli; "
        "print(sorted(m for m in ('mlflow', 'sklearn', 'pandas', 'optuna') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
