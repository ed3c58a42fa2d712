"""The optional parts of an installation, and the error that names a missing one.

The base install is the serving set (the container image's): `winequality serve` on a model
folder or a tracking server. Anything else comes with an extra (pyproject.toml), and a command
that reaches for a module only an extra provides fails with `MissingExtra`, naming the extra to
install, instead of a traceback.
"""

from __future__ import annotations

import importlib.util

from winequality.errors import MissingExtra

__all__ = ["EXTRA_OF", "missing_extra", "require"]

# A module an extra provides -> the extra (pyproject.toml's optional dependencies).
EXTRA_OF = {
    "pyarrow": "files",
    "mlflow.server": "train",
    "sqlalchemy": "train",  # MLflow's SQL stores: sqlite:///mlflow.db, postgresql://
    "alembic": "train",
    "optuna": "train",
    "matplotlib": "train",
    "psycopg": "train",
    "pooch": "train",
    "pyspark": "spark",
}


def missing_extra(exc: BaseException, needed_for: str) -> MissingExtra | None:
    """The MissingExtra an import failure (or its cause) means, or None: then it is a bug."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            parts = seen.name.split(".")
            for depth in range(len(parts), 0, -1):
                extra = EXTRA_OF.get(".".join(parts[:depth]))
                if extra is not None:
                    return _missing(extra, seen.name, needed_for)
        seen = seen.__cause__ or seen.__context__
    return None


def require(module: str, needed_for: str) -> None:
    """Raise MissingExtra unless `module` (one of EXTRA_OF's) can be imported; imports nothing."""
    if importlib.util.find_spec(module) is None:
        raise _missing(EXTRA_OF[module], module, needed_for)


def _missing(extra: str, module: str, needed_for: str) -> MissingExtra:
    return MissingExtra(
        f"{needed_for} needs the {extra!r} extra, which this installation lacks "
        f"(no module {module!r}): pip install 'winequality[{extra}]'"
    )
