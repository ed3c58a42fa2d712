"""The `winequality` command's shared parts: the Typer app, the consoles, the options every
command spells the same way, and the one place a deliberate error becomes a red block."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from enum import StrEnum
from importlib.metadata import version
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from winequality.errors import WinequalityError
from winequality.evaluate import PROTOCOLS
from winequality.extras import missing_extra
from winequality.model import FAMILIES

if TYPE_CHECKING:
    pass

__all__ = [
    "DataOption",
    "Engine",
    "FamilyChoice",
    "IntervalLevelsOption",
    "ModelOption",
    "ProtocolChoice",
    "Switch",
    "TrackingOption",
    "WineColour",
    "WineOption",
    "app",
    "err",
    "fail",
    "guard",
    "interval_levels",
    "metrics_table",
    "number",
    "out",
    "warn",
]

app = typer.Typer(
    name="winequality",
    help="Train, track, evaluate, register and serve a wine-quality model with MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: no type badges, nothing cut at 80 columns
)


def _console(stderr: bool = False) -> Console:
    """Text never wraps (ids and URIs stay whole); piped, tables keep their natural width."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 1000
    return console


out, err = _console(), _console(stderr=True)

T = TypeVar("T")

# Choices come from the library's registries, never a second copy of them.


class Engine(StrEnum):
    local = "local"
    spark = "spark"


class Switch(StrEnum):
    on = "on"
    off = "off"


WineColour = StrEnum("WineColour", [("red", "red"), ("white", "white")])
FamilyChoice = StrEnum(  # type: ignore[misc]
    "FamilyChoice", [(name.replace("-", "_"), name) for name in FAMILIES]
)
ProtocolChoice = StrEnum(  # type: ignore[misc]
    "ProtocolChoice", [(f"{name}_protocol", name) for name in PROTOCOLS]
)

DataOption = Annotated[
    str | None,
    typer.Option(
        "--data",
        envvar="WINEQUALITY_DATA",
        show_envvar=True,
        help="A CSV path or URL (',' or ';' separated, decimal commas too), or 'uci' to "
        "download UCI's archive once into the user cache. Default: UCI's data, shipped with "
        "winequality (no network).",
    ),
]
WineOption = Annotated[
    WineColour,
    typer.Option(help="Which UCI file: with no --data, or with --data uci."),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking store. Default: MLflow's variable MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the current folder.",
    ),
]
IntervalLevelsOption = Annotated[
    str,
    typer.Option(
        "--interval-levels",
        help="Levels of the prediction intervals calibrated with the model, comma-separated "
        "(each needs level/(1-level) calibration rows: 0.95 needs 19).",
    ),
]


def interval_levels(text: str) -> tuple[float, ...]:
    """`--interval-levels 0.8,0.9`: the levels, or ParameterError naming the bad one."""
    from winequality.errors import ParameterError
    from winequality.intervals import parse_levels

    levels = []
    for part in text.split(","):
        try:
            levels.append(float(part))
        except ValueError:
            raise ParameterError(
                f"--interval-levels: {part.strip()!r} is not a number such as 0.9"
            ) from None
    return parse_levels(levels)


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version>, "
        "models:/m-<id> or a folder.",
    ),
]


def guard(action: Callable[[], T]) -> T:
    """Run a library call; a deliberate error becomes one red block and its exit code."""
    try:
        return action()
    except WinequalityError as exc:
        fail(exc)
    except ModuleNotFoundError as exc:  # a part of an extra this installation lacks
        lacking = missing_extra(exc, "this command")
        if lacking is None:
            raise  # a bug: keeps its traceback
        fail(lacking)


def fail(exc: WinequalityError) -> NoReturn:
    """A deliberate error as one red block, and its exit code."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)  # its [..] are text
    raise typer.Exit(exc.exit_code) from None


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"winequality {version('winequality')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    # MLflow draws download progress bars on stderr for every local artifact copy.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs schema migrations and experiment creation at INFO (our output says it better);
    # it configures its loggers when first imported, from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Against a tracking server MLflow prints a "View run" link for every run it ends, which is
    # hundreds of lines in a sweep; the sweep prints one link to its parent run instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # It cannot find pip's version inside a uv environment, which only matters to conda users.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)


def number(text: str | None) -> str:
    return f"{float(text):.4f}" if text else ""


def metrics_table(metrics: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for key, value in metrics.items():
        table.add_row(
            key.upper() if key in ("rmse", "mae", "r2") else key,
            f"{value:.6f}" if isinstance(value, float) else str(value),
        )
    out.print(table)
