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
    "sqlalchemy": "train",  # MLflow's SQL stores: sqlite:///mlflow.db, postgresql://
    "alembic": "train",
    "flask": "train",  # MLflow's server (`mlflow.server` imports it first)
    "optuna": "train",
    "matplotlib": "train",
    "psycopg": "train",
    "pooch": "train",
    "pyspark": "spark",
}


def missing_extra(exc: BaseException, needed_for: str) -> MissingExtra | None:
    """The MissingExtra an import failure means, or None: then it is a bug.

    Only a module an extra provides, and only when that package is truly absent: a broken
    install of it (pyarrow without its CSV module) or a misspelt import of ours stays a bug.
    An error raised *from* the import failure (`raise … from exc`) counts; one merely raised
    while handling it does not.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            top = seen.name.partition(".")[0]
            extra = EXTRA_OF.get(top)
            if extra is not None and importlib.util.find_spec(top) is None:
                return _missing(extra, seen.name, needed_for)
            return None
        seen = seen.__cause__
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
