"""The `winequality` command: parse flags, call the library, render with Rich.

Heavy modules (MLflow, scikit-learn) are imported inside commands so `--help` stays instant.
Bad input exits with code 2 and one red block naming every problem; nothing is half-written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="winequality",
    help="Train, track, evaluate, register and serve a wine-quality model with MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

T = TypeVar("T")
BAD_INPUT = 2


class WineColour(StrEnum):
    red = "red"
    white = "white"


DataOption = Annotated[
    str | None,
    typer.Option(
        "--data",
        envvar="WINEQUALITY_DATA",
        show_envvar=True,
        help="CSV path or URL, ',' or ';' separated. Default: the UCI archive, "
        "downloaded once into the user cache.",
    ),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="MLflow tracking store. Default: sqlite:///mlflow.db",
    ),
]


def _guard(action: Callable[[], T]) -> T:
    """Run a library call; turn known bad-input errors into one red block and exit 2."""
    from winequality.data import DataError
    from winequality.schema import SchemaError
    from winequality.tracking import TrackingError

    try:
        return action()
    except (SchemaError, DataError, TrackingError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(BAD_INPUT) from None


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--tag")
        tags[key.strip()] = value
    return tags


@app.callback()
def _quiet_libraries() -> None:
    # MLflow draws download progress bars on stderr for every local artifact copy.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs schema migrations and experiment creation at INFO (our output says it better);
    # it configures its loggers when first imported, from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # It cannot find pip's version inside a uv environment, which only matters to conda users.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)


@app.command()
def train(
    data: DataOption = None,
    wine: Annotated[
        WineColour, typer.Option(help="Which UCI file when no --data.")
    ] = WineColour.red,
    alpha: Annotated[float, typer.Option(help="ElasticNet penalty strength.")] = 0.7,
    l1_ratio: Annotated[
        float,
        typer.Option("--l1-ratio", "--l1_ratio", min=0, max=1, help="L1 share of the penalty."),
    ] = 0.7,
    scale: Annotated[bool, typer.Option(help="Standardise features inside the pipeline.")] = False,
    test_size: Annotated[float, typer.Option(help="Held-out share, within (0, 1).")] = 0.25,
    seed: Annotated[int, typer.Option(help="Split seed; 40 reproduces the seed's split.")] = 40,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment, created if absent.")
    ] = "experiment_signature",
    tracking_uri: TrackingOption = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="Run tag KEY=VALUE, repeatable; overrides the seed's defaults."),
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the data copy and the split go.")] = Path(
        "data"
    ),
    run_name: Annotated[str | None, typer.Option(help="MLflow run name.")] = None,
) -> None:
    """Train the seed's ElasticNet, log it to MLflow with its signature, and check it serves."""
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
    )
    result = _guard(lambda: run_training(config))
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
        f"Data: {result.data_path} ({result.rows} rows, {result.duplicate_rows} exact "
        f"duplicates; split {result.train_rows} train / {result.test_rows} test)"
    )
    out.print(f"[bold]Elasticnet model (alpha={alpha:f}, l1_ratio={l1_ratio:f}):[/]")
    _metrics_table(result.metrics)
    out.print(f"The artifact path is {result.artifact_uri}")
    out.print(f"Model: {result.model_uri}  (also {result.run_model_uri})")
    out.print(f"Active run id is {result.run_id}")
    out.print(f"Active run name is {result.run_name}")


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="runs:/<id>/model, models:/<name>@<alias>, "
            "models:/<name>/<version>, models:/m-<id> or a folder.",
        ),
    ],
    input: Annotated[
        Path,
        typer.Option(
            "--input", help="CSV (',' or ';'), Parquet or JSON (records or dataframe_split)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", help="CSV, Parquet or JSON by extension; default: CSV on stdout."),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            help="Write only this column and the prediction (default: all input columns)."
        ),
    ] = None,
    allow_out_of_range: Annotated[
        bool, typer.Option(help="Score values outside the physical ranges, with a warning.")
    ] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Score a file with a logged model; every invalid cell is listed and nothing is written."""
    from winequality.predict import ModelLoadError, predict_file

    def run() -> Any:
        try:
            return predict_file(
                model,
                input,
                output,
                id_column=id_column,
                allow_out_of_range=allow_out_of_range,
                tracking_uri=tracking_uri,
            )
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc

    result = _guard(run)
    for issue in result.warnings:
        err.print(f"[yellow]warning:[/] {issue.describe()}", soft_wrap=True)
    if output is None:
        typer.echo(result.frame.to_csv(index=False), nl=False)
    else:
        err.print(f"wrote {result.rows} predictions to {output}")


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", help="Any model URI `predict` accepts.")],
    host: Annotated[
        str, typer.Option(help="Interface; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Processes, each with the model.")] = 1,
    max_body_mb: Annotated[float, typer.Option(help="Larger bodies get 413.")] = 8.0,
    allow_out_of_range: Annotated[
        bool, typer.Option(help="Score values outside the physical ranges (warned in a header).")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Serve a model over HTTP: MLflow's /invocations protocol, a page at /, OpenAPI."""
    from winequality.predict import ModelLoadError, load_scorer

    def check() -> Any:
        try:
            return load_scorer(model, tracking_uri)
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc

    scorer = _guard(check)  # a bad URI is exit 2 before any socket opens
    from winequality.serve import serve as run_server

    err.print(
        f"serving {model} on http://{host}:{port}/ ({workers} worker"
        f"{'s' if workers > 1 else ''}); Ctrl+C or SIGTERM stops it"
    )
    run_server(
        model,
        scorer=scorer,
        host=host,
        port=port,
        workers=workers,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        allow_out_of_range=allow_out_of_range,
        tracking_uri=tracking_uri,
        access_log=access_log,
    )


class Family(StrEnum):
    elasticnet = "elasticnet"
    svr = "svr"
    random_forest = "random-forest"
    extra_trees = "extra-trees"
    hist_gradient_boosting = "hist-gradient-boosting"


class ProtocolChoice(StrEnum):
    grouped = "grouped"
    random = "random"
    single_split = "split"  # a member named `split` would shadow str.split


@app.command()
def sweep(
    data: DataOption = None,
    wine: Annotated[
        WineColour, typer.Option(help="Which UCI file when no --data.")
    ] = WineColour.red,
    model: Annotated[Family, typer.Option("--model", help="Model family.")] = Family.elasticnet,
    trials: Annotated[
        int,
        typer.Option(min=1, help="Finished trials the study should hold, all workers together."),
    ] = 50,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel workers in this process.")] = 1,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after N s.")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Grid search instead of TPE.")] = False,
    study: Annotated[
        str | None,
        typer.Option(
            help="Study name; the same name resumes or joins it. Default: <model>-<protocol>."
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            envvar="WINEQUALITY_STORAGE",
            show_envvar=True,
            help="Optuna storage, e.g. postgresql://host/db. Default: sqlite:///optuna.db",
        ),
    ] = None,
    protocol: Annotated[ProtocolChoice, typer.Option(help="CV protocol.")] = ProtocolChoice.grouped,
    folds: Annotated[int, typer.Option(min=2)] = 5,
    repeats: Annotated[int, typer.Option(min=1)] = 1,
    seed: Annotated[int, typer.Option(help="Split, folds and sampler seed.")] = 40,
    experiment: Annotated[str, typer.Option()] = "winequality-sweep",
    tracking_uri: TrackingOption = None,
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = "wine-quality",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Make the new version champion even if it does not beat the current one.",
        ),
    ] = False,
) -> None:
    """Tune a model family with Optuna; every trial is a nested MLflow run; the best is
    refit, tested once on held-out rows, registered, and promoted only if it wins."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from winequality.sweep import SweepConfig, SweepError, TrialEvent, run_sweep

    config = SweepConfig(
        data=data,
        wine=wine.value,
        family=model.value,
        trials=trials,
        jobs=jobs,
        timeout=timeout,
        grid=grid,
        study=study,
        storage=storage,
        protocol=protocol.value,
        folds=folds,
        repeats=repeats,
        seed=seed,
        experiment=experiment,
        tracking_uri=tracking_uri,
        model_name=name,
        force=force,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best CV RMSE {task.fields[best]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task(f"study {config.study_name}", total=trials, best="–")

        def advance(event: TrialEvent) -> None:
            progress.update(
                task, completed=event.complete, total=event.target, best=f"{event.best_value:.4f}"
            )

        def run() -> Any:
            try:
                return run_sweep(config, on_trial=advance)
            except SweepError as exc:
                raise ValueError(str(exc)) from exc

        result = _guard(run)
    out.print(
        f"Study {result.study}: {result.complete} finished trials "
        f"({result.ran_here} run here); parent run {result.parent_run_id}"
    )
    out.print(
        f"Best trial {result.best_trial}: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result.best_params.items()
        )
    )
    if not result.finalized:
        out.print("Another worker finishes the study and registers its best model.")
        return
    _metrics_table(
        {f"cv {k}": v for k, v in result.best_cv.items() if k in ("rmse", "mae", "r2")}
        | {f"test {k}": v for k, v in result.test_metrics.items()},
        title="best model",
    )
    out.print(f"Model: {result.model_uri}  (run {result.final_run_id})")
    if result.decision is not None:
        d = result.decision
        colour = "green" if d.alias == "champion" else "yellow"
        out.print(f"Registered {d.name} v{d.version} as [{colour}]{d.alias}[/]: {d.reason}")


@app.command()
def models(
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = "wine-quality",
    tracking_uri: TrackingOption = None,
) -> None:
    """List the registered versions with their aliases and held-out metrics."""
    from winequality.registry import list_versions
    from winequality.tracking import connect

    _guard(lambda: connect(tracking_uri))
    versions = list_versions(name)
    if not versions:
        err.print(f"[yellow]no registered model named {name!r}[/]")
        raise typer.Exit(1)
    table = Table(title=f"registered model {name}", header_style="bold")
    for column in ("version", "aliases", "family", "study", "test rmse", "test r2", "cv rmse"):
        table.add_column(column, justify="right" if column.endswith(("rmse", "r2")) else "left")

    def number(tag: str) -> str:
        value = v.tags.get(tag)
        return f"{float(value):.4f}" if value else ""

    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.tags.get("winequality.family", ""),
            v.tags.get("winequality.study", ""),
            number("test_rmse"),
            number("test_r2"),
            number("cv_rmse"),
        )
    out.print(table)


def _metrics_table(metrics: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(
            key.upper() if key in ("rmse", "mae", "r2") else key,
            f"{value:.6f}" if isinstance(value, float) else str(value),
        )
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
