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
    m.name.removeprefix("winequality.")
    for m in pkgutil.walk_packages(winequality.__path__, prefix="winequality.")
    if not m.name.rsplit(".", 1)[-1].startswith("_")
)


def isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each alphabetical (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_every_module_is_covered() -> None:
    assert MODULES == [
        "cli",
        "cli.app",
        "cli.registry",
        "cli.score",
        "cli.serve",
        "cli.sweep",
        "cli.train",
        "data",
        "drift",
        "errors",
        "evaluate",
        "export",
        "extras",
        "intervals",
        "io",
        "io.bulk",
        "io.files",
        "io.inference",
        "io.protocol",
        "io.reader",
        "io.writers",
        "logged_model",
        "model",
        "predict",
        "processes",
        "registry",
        "schema",
        "scoring",
        "serving",
        "serving.access_log",
        "serving.admission",
        "serving.app",
        "serving.canary",
        "serving.connections",
        "serving.documents",
        "serving.door",
        "serving.draining",
        "serving.endpoints_mlflow",
        "serving.endpoints_server",
        "serving.endpoints_v2",
        "serving.follower",
        "serving.heap",
        "serving.http",
        "serving.lifecycle",
        "serving.metrics",
        "serving.recorder",
        "serving.run",
        "serving.scoring",
        "serving.shadow",
        "serving.shadow_process",
        "shadow_report",
        "spark",
        "sweeping",
        "sweeping.config",
        "sweeping.final",
        "sweeping.runs",
        "sweeping.studies",
        "sweeping.sweep",
        "sweeping.workers",
        "tracking",
        "train",
    ]


@pytest.mark.parametrize("name", MODULES)
def test_each_module_declares_exactly_what_it_defines(name: str) -> None:
    module = importlib.import_module(f"winequality.{name}")
    declared = getattr(module, "__all__", [])
    if not declared and module.__doc__ and hasattr(module, "__path__"):
        return  # a package that only describes its rooms
    assert declared == sorted(declared, key=isort_order)
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
