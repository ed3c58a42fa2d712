"""`winequality train`: the tutorial's run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from winequality.tracking import TRAIN_EXPERIMENT

if TYPE_CHECKING:
    pass

from winequality.cli.app import (
    DataOption,
    IntervalLevelsOption,
    TrackingOption,
    WineColour,
    WineOption,
    app,
    guard,
    interval_levels,
    metrics_table,
    out,
    warn,
)

__all__ = ["train"]


@app.command(short_help="Train the tutorial's ElasticNet and log it with its signature.")
def train(
    data: DataOption = None,
    wine: WineOption = WineColour.red,
    alpha: Annotated[float, typer.Option(help="ElasticNet penalty strength, > 0.")] = 0.7,
    l1_ratio: Annotated[
        float,
        typer.Option(
            "--l1-ratio", "--l1_ratio", min=0, max=1, help="L1 share of the penalty, in [0, 1]."
        ),
    ] = 0.7,
    scale: Annotated[
        bool, typer.Option("--scale", help="Standardise features inside the pipeline.")
    ] = False,
    test_size: Annotated[float, typer.Option(help="Held-out share, within (0, 1).")] = 0.25,
    seed: Annotated[int, typer.Option(help="Split seed; 40 reproduces the tutorial's split.")] = 40,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment, created if absent.")
    ] = TRAIN_EXPERIMENT,
    tracking_uri: TrackingOption = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="Run tag KEY=VALUE, repeatable; overrides the tutorial's tags."),
    ] = None,
    output_dir: Annotated[
        Path, typer.Option(help="Where the copy of the data and the split go.")
    ] = Path("data"),
    run_name: Annotated[str | None, typer.Option(help="MLflow run name.")] = None,
    levels: IntervalLevelsOption = "0.8,0.9,0.95",
) -> None:
    """Train the tutorial's ElasticNet, log it to MLflow with its signature, check it serves."""
    from winequality.train import DEFAULT_TAGS, TrainConfig
    from winequality.train import train as run_training

    config = TrainConfig(
        data=data,
        wine=wine.value,
        alpha=alpha,
        l1_ratio=l1_ratio,
        scale=scale,
        test_size=test_size,
        seed=seed,
        experiment=experiment,
        tracking_uri=tracking_uri,
        tags={**DEFAULT_TAGS, **_parse_tags(tag or [])},
        output_dir=output_dir,
        run_name=run_name,
        interval_levels=guard(lambda: interval_levels(levels)),
    )
    result = guard(lambda: run_training(config))
    for issue in result.warnings:
        warn(issue.describe())
    if result.constant:
        warn(
            f"every coefficient is zero: the model predicts {result.intercept:.4f} for every "
            f"wine (R² ≈ 0); alpha={alpha:g} is too strong{' for scaled features' if scale else ''}"
            f" — try a smaller --alpha (e.g. 0.05)"
        )
    exp = result.experiment
    out.print(f"The set tracking uri is {result.tracking_uri}")
    info = Table.grid(padding=(0, 2))
    for key, value in (
        ("Name", exp.name),
        ("Experiment_id", exp.experiment_id),
        ("Artifact Location", exp.artifact_location),
        ("Tags", exp.tags),
        ("Lifecycle_stage", exp.lifecycle_stage),
        ("Creation timestamp", exp.creation_time),
    ):
        info.add_row(f"[bold]{key}[/]", str(value))
    out.print(info)
    out.print(
        f"Data: {result.data} ({result.rows} rows, {result.duplicate_rows} exact "
        f"duplicates; split {result.train_rows} train / {result.test_rows} test)"
    )
    unseen = result.test_rows - result.test_twins
    out.print(
        f"Held-out: {result.test_twins} of the {result.test_rows} test rows have an exact twin "
        f"in training; on the {unseen} unseen rows RMSE is "
        f"{result.unseen_metrics['rmse']:.6f} (logged as unseen_*)"
    )
    out.print(f"[bold]Elasticnet model (alpha={alpha:f}, l1_ratio={l1_ratio:f}):[/]")
    metrics_table(result.metrics)
    out.print(f"The artifact path is {result.artifact_uri}")
    out.print(f"Model: {result.model_uri}  (also {result.run_model_uri})")
    out.print(f"Active run id is {result.run_id}")
    out.print(f"Active run name is {result.run_name}")


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--tag")
        tags[key.strip()] = value
    return tags
