"""`winequality models`, `register`, `promote`, `rollback`: the registry's verbs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from winequality.registry import DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    pass

from winequality.cli.app import ModelOption, TrackingOption, app, guard, number, out

__all__ = ["models", "promote", "register", "rollback"]


@app.command(short_help="List registered versions with aliases and held-out metrics.")
def models(
    name: Annotated[
        str, typer.Option("--name", help="Registered model name.")
    ] = DEFAULT_MODEL_NAME,
    tracking_uri: TrackingOption = None,
) -> None:
    """List the registered versions with their aliases and held-out metrics."""
    from winequality.registry import list_versions
    from winequality.tracking import FAMILY_TAG, STUDY_TAG

    versions = guard(lambda: list_versions(name, tracking_uri))
    table = Table(title=f"registered model {name}", header_style="bold")
    columns = ("version", "aliases", "family", "study", "test rmse", "test r2", "cv rmse")
    for column in (*columns, "crowned (UTC)"):
        table.add_column(
            column,
            justify="right" if column.endswith(("rmse", "r2")) else "left",
            overflow="fold",  # a narrow terminal folds a cell; it never cuts it
        )
    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.tags.get(FAMILY_TAG, ""),
            v.tags.get(STUDY_TAG, ""),
            *(number(v.tags.get(tag)) for tag in ("test_rmse", "test_r2", "cv_rmse")),
            "; ".join(_period(since, until) for since, until in v.champion_periods),
        )
    out.print(table)


def _period(since: str, until: str | None) -> str:
    def short(stamp: str) -> str:
        return stamp.replace("T", " ")[:16]

    return f"since {short(since)}" if until is None else f"{short(since)} → {short(until)}"


@app.command(short_help="Register a logged model (train's) as a new version, without alias.")
def register(
    model: ModelOption,
    name: Annotated[
        str, typer.Option("--name", help="Registered model name.")
    ] = DEFAULT_MODEL_NAME,
    tracking_uri: TrackingOption = None,
) -> None:
    """Register a logged model (the models:/m-… URI `train` prints) as a new version, with
    how its run was evaluated and its held-out metrics; `promote` then decides its alias."""
    from winequality.registry import register_logged

    version = guard(lambda: register_logged(model, name, tracking_uri))
    out.print(
        f"Registered {model} as {name} v{version}; promote it with: "
        f"winequality promote {name} {version}"
    )


@app.command(short_help="Make a version champion if it passes the gate's checks.")
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to promote.")],
    force: Annotated[
        str | None,
        typer.Option(
            "--force",
            metavar="REASON",
            help="Promote past failed checks; the reason is recorded on the version.",
        ),
    ] = None,
    evidence: Annotated[
        Path | None,
        typer.Option(
            metavar="REPORT",
            help="A `shadow-report --truth` report (JSON) of VERSION as the champion's shadow: "
            "one more check, no worse on live rows; recorded on the version.",
        ),
    ] = None,
    live_margin: Annotated[
        str,
        typer.Option(
            metavar="MARGIN",
            help="How much worse on live rows VERSION may be: an RMSE margin (0: none) or "
            "'paired' (refused only when the paired test says it is worse).",
        ),
    ] = "0",
    tracking_uri: TrackingOption = None,
) -> None:
    """Make VERSION the champion if it was judged on the same data, split and seed as the
    champion and beats it there (and, with --evidence, was no worse on live rows); every
    failed check is named otherwise (exit 2)."""
    from winequality.registry import promote as promote_version
    from winequality.shadow_report import read_report

    margin = guard(lambda: _live_margin(live_margin, evidence is not None))
    report = guard(lambda: read_report(evidence)) if evidence is not None else None
    decision = guard(
        lambda: promote_version(
            name,
            version,
            force=force,
            tracking_uri=tracking_uri,
            evidence=report,
            live_margin=margin,
        )
    )
    for check in decision.checks:
        mark = "[green]passed[/]" if check.passed else "[yellow]failed (forced)[/]"
        out.print(f"  {check.name}: {mark}: {check.reason}")
    out.print(f"{name} v{version} is now [green]champion[/]: {decision.reason}")


@app.command(short_help="Make the previous champion champion again.")
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    tracking_uri: TrackingOption = None,
) -> None:
    """The champion goes back to the one before it (`models` shows who was champion when)."""
    from winequality.registry import rollback as roll_back

    decision = guard(lambda: roll_back(name, tracking_uri=tracking_uri))
    out.print(f"{name} v{decision.version} is champion again (v{decision.previous_version} was)")


def _live_margin(text: str, evidence: bool) -> float | Literal["paired"]:
    """--live-margin: a non-negative RMSE margin, or "paired" (only with --evidence)."""
    from winequality.errors import ParameterError

    if not evidence and text != "0":
        raise ParameterError("--live-margin applies to --evidence REPORT, which is not given")
    if text.strip().lower() == "paired":
        return "paired"
    try:
        margin = float(text)
    except ValueError:
        margin = math.nan
    if not math.isfinite(margin) or margin < 0:
        raise ParameterError(f"--live-margin must be 0 or more, or 'paired'; got {text!r}")
    return margin
