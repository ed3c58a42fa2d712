"""The `winequality` command: parse flags, call the library, render with Rich.

Heavy modules (MLflow, scikit-learn) are imported inside commands so `--help` stays instant.
Every deliberate error (`WinequalityError`) is caught in one place and shown as one red block
with its exit code (2 for bad input); anything else is a bug and keeps its traceback (exit 1).
Output never wraps ids or URIs: results go to stdout unwrapped, messages to stderr.

Rooms: `app` (the Typer app, consoles, shared options, errors), one module per family of
commands: `train`, `sweep`, `score` (predict, drift), `serve`, `registry` (models, register,
promote, rollback). Importing this package registers them on `app`.
"""

from __future__ import annotations

# The order of these imports is the order of the commands in --help.
# isort: off
from winequality.cli.app import app
from winequality.cli.train import train
from winequality.cli.sweep import sweep
from winequality.cli.registry import models, promote, register, rollback
from winequality.cli.score import DRIFT_EXIT, drift, predict
from winequality.cli.serve import TOKEN_ENV, serve

# isort: on

__all__ = [
    "DRIFT_EXIT",
    "TOKEN_ENV",
    "app",
    "drift",
    "main",
    "models",
    "predict",
    "promote",
    "register",
    "rollback",
    "serve",
    "sweep",
    "train",
]


def main() -> None:
    app()
