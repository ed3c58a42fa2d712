"""The `winequality` command: parse flags, call the library, render with Rich.

Heavy modules (MLflow, scikit-learn) are imported inside commands so `--help` stays instant.
Every deliberate error (`WinequalityError`) is caught in one place and shown as one red block
with its exit code (2 for bad input); anything else is a bug and keeps its traceback (exit 1).
Output never wraps ids or URIs: results go to stdout unwrapped, messages to stderr.

Rooms: `app` (the Typer app, consoles, shared options, errors), one module per family of
commands: `train`, `sweep`, `score` (predict, drift), `serve` (serve, export, shadow-report),
`registry` (models, register, promote, rollback). Importing this package registers them on `app`.
"""

from __future__ import annotations

import typer

# The order of these imports is the order of the commands in --help.
# isort: off
from winequality.cli.app import app
from winequality.cli.train import train
from winequality.cli.sweep import sweep
from winequality.cli.registry import models, promote, register, rollback
from winequality.cli.score import DRIFT_EXIT, drift, predict
from winequality.cli.serve import ENV_PREFIX, TOKEN_ENV, export, serve, shadow_report

# isort: on

__all__ = [
    "DRIFT_EXIT",
    "ENV_PREFIX",
    "TOKEN_ENV",
    "app",
    "drift",
    "export",
    "main",
    "models",
    "predict",
    "promote",
    "register",
    "rollback",
    "serve",
    "shadow_report",
    "sweep",
    "train",
]


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as exc:  # imported by a command before `guard` ran
        from winequality.cli.app import fail
        from winequality.extras import missing_extra

        lacking = missing_extra(exc, f"`winequality {_command()}`")
        if lacking is None:
            raise  # a bug: keeps its traceback
        try:
            fail(lacking)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None


def _command() -> str:
    import sys

    return next((a for a in sys.argv[1:] if not a.startswith("-")), "")
