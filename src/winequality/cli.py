"""The `winequality` command: parse flags, call the library, render with Rich.

Heavy modules (MLflow, scikit-learn) are imported inside commands so `--help` stays instant.
Every deliberate error (`WinequalityError`) is caught in one place and shown as one red block
with its exit code (2 for bad input); anything else is a bug and keeps its traceback (exit 1).
Output never wraps ids or URIs: results go to stdout unwrapped, messages to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table

from winequality.errors import WinequalityError
from winequality.evaluate import PROTOCOLS, Protocol
from winequality.model import FAMILIES
from winequality.registry import DEFAULT_MODEL_NAME
from winequality.tracking import SWEEP_EXPERIMENT, TRAIN_EXPERIMENT

if TYPE_CHECKING:
    from winequality.sweeping import SweepConfig, SweepResult

__all__ = [
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
TOKEN_ENV = "WINEQUALITY_TOKEN"


class _Engine(StrEnum):
    local = "local"
    spark = "spark"


class _Switch(StrEnum):
    on = "on"
    off = "off"


_WineColour = StrEnum("_WineColour", [("red", "red"), ("white", "white")])
_FamilyChoice = StrEnum(  # type: ignore[misc]
    "_FamilyChoice", [(name.replace("-", "_"), name) for name in FAMILIES]
)
_ProtocolChoice = StrEnum(  # type: ignore[misc]
    "_ProtocolChoice", [(f"{name}_protocol", name) for name in PROTOCOLS]
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
    _WineColour,
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
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version>, "
        "models:/m-<id> or a folder.",
    ),
]


def _guard(action: Callable[[], T]) -> T:
    """Run a library call; a deliberate error becomes one red block and its exit code."""
    try:
        return action()
    except WinequalityError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        raise typer.Exit(exc.exit_code) from None


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--tag")
        tags[key.strip()] = value
    return tags


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


@app.command(short_help="Train the tutorial's ElasticNet and log it with its signature.")
def train(
    data: DataOption = None,
    wine: WineOption = _WineColour.red,
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
    )
    result = _guard(lambda: run_training(config))
    for issue in result.warnings:
        _warn(issue.describe())
    if result.constant:
        _warn(
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
    _metrics_table(result.metrics)
    out.print(f"The artifact path is {result.artifact_uri}")
    out.print(f"Model: {result.model_uri}  (also {result.run_model_uri})")
    out.print(f"Active run id is {result.run_id}")
    out.print(f"Active run name is {result.run_name}")


@app.command(short_help="Score a file; every invalid cell is listed, nothing half-written.")
def predict(
    model: ModelOption,
    input_path: Annotated[
        str,  # text, not a Path: with --engine spark it may be a URI (hdfs://, s3a://)
        typer.Option(
            "--input",
            metavar="PATH",
            help="CSV (',' or ';'), Parquet or JSON (records, dataframe_split or pandas' "
            "split layout); '-' reads standard input. With --engine spark: a file or folder, "
            "local or a URI Spark reads (hdfs://, s3a://, abfss://).",
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            metavar="PATH",
            help="A .csv, .parquet or .json file, written atomically; default (or '-'): CSV "
            "on standard output. With --engine spark: a folder, local or a URI.",
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            help="Write only this column and the prediction (default: all input columns)."
        ),
    ] = None,
    allow_out_of_range: Annotated[
        bool,
        typer.Option(
            "--allow-out-of-range", help="Score values outside the physical ranges, with a warning."
        ),
    ] = False,
    flag_outside: Annotated[
        bool,
        typer.Option(
            "--flag-outside",
            help="Add a column outside_training_range: true where a value lies beyond what the "
            "model saw in training (such rows are always scored, and counted in a warning).",
        ),
    ] = False,
    engine: Annotated[
        _Engine,
        typer.Option(
            help="local: this process, streaming; spark: Spark's executors (--input a file or "
            "folder, --output a folder of predictions/ and quarantine/)."
        ),
    ] = _Engine.local,
    spark_master: Annotated[
        str, typer.Option(help="With --engine spark: any Spark master URL.")
    ] = "local[*]",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output (else refused).")
    ] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Score a file with a logged model; every invalid cell is listed and nothing is written.

    With --engine spark, invalid rows are not fatal: they go to a quarantine output with
    their reasons, and every input row lands in exactly one of the two outputs."""
    import shutil
    import tempfile

    from winequality.predict import predict_file

    if engine is _Engine.spark:
        _predict_on_spark(
            model, input_path, output, id_column, flag_outside, allow_out_of_range,
            spark_master, overwrite, tracking_uri,
        )  # fmt: skip
        return

    to_stdout = output is None or output == "-"
    with tempfile.TemporaryDirectory(prefix="winequality-") as folder, _RowsProgress() as bar:
        # Standard output gets the CSV only once every row passed: it is written to a
        # temporary file first, as a file output is.
        target = Path(folder) / "predictions.csv" if to_stdout else Path(str(output))
        result = _guard(
            lambda: predict_file(
                model,
                Path(input_path),
                target,
                id_column=id_column,
                allow_out_of_range=allow_out_of_range,
                tracking_uri=tracking_uri,
                on_progress=bar.update,
                flag_outside=flag_outside,
                overwrite=overwrite,
            )
        )
        bar.close()
        for issue in result.warnings:
            _warn(issue.describe(result.row_label, result.row_offset))
        if to_stdout:
            assert target is not None
            with open(target, "rb") as written:
                shutil.copyfileobj(written, sys.stdout.buffer)
            sys.stdout.flush()
        else:
            err.print(f"wrote {result.rows} predictions to {output}")


def _predict_on_spark(
    model: str,
    input_path: str,
    output: str | None,
    id_column: str | None,
    flag_outside: bool,
    allow_out_of_range: bool,
    master: str,
    overwrite: bool,
    tracking_uri: str | None,
) -> None:
    from winequality.errors import ParameterError

    def run() -> Any:
        from winequality.spark import predict_spark

        if output is None or output == "-":
            raise ParameterError("--engine spark writes a folder: give it with --output DIR")
        if id_column is not None or flag_outside:
            raise ParameterError(
                "--id-column and --flag-outside are for the local engine; Spark's outputs keep "
                "every input column and the row's identity"
            )
        return predict_spark(
            model,
            input_path,
            output,
            master=master,
            allow_out_of_range=allow_out_of_range,
            overwrite=overwrite,
            tracking_uri=tracking_uri,
        )

    result = _guard(run)
    err.print(
        f"{result.rows} rows on {result.master}: {result.predictions} scored into "
        f"{result.output}/predictions, {result.quarantined} quarantined into "
        f"{result.output}/quarantine"
    )


class _RowsProgress:
    """A progress bar on stderr (rows, rows/s) for files that take more than a moment; off
    when stderr is not a terminal."""

    DELAY = 0.5  # seconds before a bar appears

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.progress: Any = None
        self.task: Any = None
        self.first: tuple[float, int] | None = None

    def __enter__(self) -> _RowsProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, rows: int, done: int, total: int) -> None:
        if not err.is_terminal or time.monotonic() - self.started < self.DELAY:
            return
        if self.progress is None:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("scoring"),
                BarColumn(),
                TextColumn("{task.fields[rows]:,} rows, {task.fields[rate]:,.0f} rows/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.task = self.progress.add_task("scoring", total=total, rows=0, rate=0.0)
            self.progress.start()
        if self.first is None:  # the rate counts from the first rows, not the model's loading
            self.first = (time.monotonic(), rows)
        elapsed = time.monotonic() - self.first[0]
        rate = (rows - self.first[1]) / elapsed if elapsed > 0 else 0.0
        self.progress.update(self.task, completed=done, rows=rows, rate=rate)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@app.command(short_help="Serve a model over HTTP (MLflow's protocol, a page, OpenAPI).")
def serve(
    model: ModelOption,
    host: Annotated[
        str, typer.Option(help="Interface; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Processes, each with the model.")] = 1,
    max_body_mb: Annotated[float, typer.Option(help="Larger bodies get 413.")] = 8.0,
    allow_out_of_range: Annotated[
        bool,
        typer.Option(
            "--allow-out-of-range",
            help="Score values outside the physical ranges (warned in a header).",
        ),
    ] = False,
    access_log: Annotated[
        _Switch, typer.Option(help="One JSON line per request on standard error.")
    ] = _Switch.on,
    refresh: Annotated[
        float,
        typer.Option(
            min=0,
            help="With models:/NAME@ALIAS, check every this many seconds where the alias "
            "points and swap in the new version (0: never).",
        ),
    ] = 30.0,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the bearer token every request but /ping and /health must "
            f"carry (or set {TOKEN_ENV}).",
        ),
    ] = None,
    metrics: Annotated[
        _Switch, typer.Option(help="Prometheus metrics at /metrics and drift at /drift.")
    ] = _Switch.on,
    tracking_uri: TrackingOption = None,
) -> None:
    """Serve a model over HTTP: MLflow's /invocations protocol, a page at /, OpenAPI,
    Prometheus metrics and drift; follows a registry alias."""
    from winequality.scoring import load_scorer
    from winequality.serving import ServerSettings, check_port
    from winequality.serving import serve as run_server
    from winequality.tracking import resolve_uri

    token = _guard(lambda: _read_token(token_file))
    _guard(lambda: check_port(host, port))
    scorer = _guard(lambda: load_scorer(model, tracking_uri))  # exit 2 before any socket
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        _warn(
            f"{host} is reachable from other machines and no token is set: anyone who can "
            f"reach it can score and read /metrics (use --token-file or {TOKEN_ENV})"
        )
    err.print(
        f"serving {model} on http://{host}:{port}/ ({workers} worker"
        f"{'s' if workers > 1 else ''}); Ctrl+C or SIGTERM stops it"
    )
    settings = ServerSettings(
        model,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        allow_out_of_range=allow_out_of_range,
        refresh=refresh,
        token=token,
        metrics=metrics is _Switch.on,
        access_log=access_log is _Switch.on,
        tracking_uri=resolve_uri(tracking_uri),
    )
    run_server(settings, scorer=scorer, host=host, port=port, workers=workers)


def _read_token(path: Path | None) -> str | None:
    from winequality.errors import ParameterError

    if path is None:  # read once, then out of the environment: no child process inherits it
        return os.environ.pop(TOKEN_ENV, None) or None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ParameterError(f"cannot read --token-file {path}: {exc.strerror}") from None
    if not token:
        raise ParameterError(f"--token-file {path} is empty")
    return token


@app.command(short_help="Tune a model family with Optuna; register and gate the best.")
def sweep(
    context: typer.Context,
    data: DataOption = None,
    wine: WineOption = _WineColour.red,
    model: Annotated[
        _FamilyChoice,
        typer.Option("--model", help="Model family."),
    ] = _FamilyChoice.elasticnet,  # type: ignore[attr-defined]
    trials: Annotated[
        int,
        typer.Option(min=1, help="Finished trials the study should hold, all workers together."),
    ] = 50,
    jobs: Annotated[
        int, typer.Option(min=1, help="Worker processes to start; they share the study.")
    ] = 1,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds.")
    ] = None,
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
            help="Optuna storage: a journal file (default: optuna.journal, in the current "
            "folder), or a database URL such as postgresql://host/db for a team.",
        ),
    ] = None,
    protocol: Annotated[
        _ProtocolChoice,
        typer.Option(
            help="Cross-validation protocol: "
            + "; ".join(f"{name}: {text}" for name, text in PROTOCOLS.items())
            + "."
        ),
    ] = _ProtocolChoice.grouped_protocol,  # type: ignore[attr-defined]
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds (K).")] = 5,
    repeats: Annotated[
        int, typer.Option(min=1, help="Repetitions of the K folds, each shuffled anew.")
    ] = 1,
    seed: Annotated[int, typer.Option(help="Split, folds and sampler seed.")] = 40,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = SWEEP_EXPERIMENT,
    tracking_uri: TrackingOption = None,
    name: Annotated[
        str, typer.Option("--name", help="Registered model name.")
    ] = DEFAULT_MODEL_NAME,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Make the new version champion even if it does not beat the current one.",
        ),
    ] = False,
) -> None:
    """Tune a model family with Optuna, register the best and promote it only if it wins.

    Every trial is a nested MLflow run; the best trial is refit, tested once on held-out
    rows, registered, and becomes champion only if it beats the current one.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from winequality.sweeping import (
        StopRequest,
        SweepConfig,
        SweepInterrupted,
        TrialEvent,
        run_sweep,
    )

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
        protocol=cast(Protocol, protocol.value),
        folds=folds,
        repeats=repeats,
        seed=seed,
        experiment=experiment,
        tracking_uri=tracking_uri,
        model_name=name,
        force=force,
    )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best CV RMSE {task.fields[best]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task = progress.add_task(f"study {config.study_name}", total=trials, best="–")

    def advance(event: TrialEvent) -> None:
        progress.start()  # shown from the first finished trial: no bar before an error
        progress.update(
            task, completed=event.complete, total=event.trial_goal, best=f"{event.best_value:.4f}"
        )

    resume = _resume_command(context)
    stop = StopRequest()
    with _signals_outside(stop):
        try:
            result = _guard(lambda: run_sweep(config, on_trial=advance, stop=stop))
        except typer.Exit as ended:
            progress.stop()
            if ended.exit_code == SweepInterrupted.exit_code:
                err.print(f"resume with: {resume}")
            raise
        progress.stop()
        _print_sweep(result, config, resume)


@contextlib.contextmanager
def _signals_outside(stop: Any) -> Iterator[None]:
    """SIGINT and SIGTERM when the sweep's own handler is not installed (starting up, the
    final step, printing): Ctrl+C, unless a stop is already under way, in which case a late
    signal must not cut the last lines short nor turn exit 130 into a death by signal."""

    def handle(signum: int, frame: Any) -> None:
        if not stop.requested:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():  # stopped: the command is ending, quietly
            signal.signal(sig, signal.SIG_IGN if stop.requested else handler)


NOT_RESUMED = frozenset({"timeout", "force"})  # one run's choices, not the sweep's settings


def _resume_command(context: typer.Context) -> str:
    """The command that continues this sweep: every setting given to this one (flag or
    environment), spelled by the command's own options."""
    import shlex

    words = ["winequality", "sweep"]
    for param in context.command.params:
        name, value = param.name, context.params.get(param.name or "")
        if name is None or name in NOT_RESUMED or param.param_type_name != "option":
            continue
        source = context.get_parameter_source(name)
        if source is None or source.name == "DEFAULT" or value is None:
            continue
        if getattr(param, "is_flag", False):
            words += [param.opts[0]] if value else []
        else:
            words += [param.opts[0], str(getattr(value, "value", value))]
    return shlex.join(words)


def _print_sweep(result: SweepResult, config: SweepConfig, resume: str) -> None:
    done = (
        f"{result.complete} of {result.trial_goal} trials finished"
        if result.complete <= result.trial_goal
        else f"{result.complete} trials finished ({result.trial_goal} asked)"
    )
    out.print(
        f"Study {result.study}: {done} ({result.ran_here} run here); "
        f"parent run {result.parent_run_id}"
    )
    if result.parent_run_url:
        out.print(f"View the sweep at {result.parent_run_url}")
    if result.stopped_early:
        err.print(
            f"[yellow]warning:[/] stopped early (--timeout {config.timeout:g} s): "
            f"{result.complete} of {result.trial_goal} trials; the best so far is below. "
            f"Resume with: {resume}"
        )
    out.print(
        f"Best trial {result.best_trial}: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result.best_params.items()
        )
    )
    if result.finalized_before is not None:
        before = result.finalized_before
        registered = "logged"
        if before.get("version"):
            version, champion = before["version"], before.get("champion_now")
            now = ", ".join(before.get("aliases_now", [])) or "no alias"
            if champion is not None and champion != version:
                now += f"; champion is v{champion}"
            registered = f"registered as {config.model_name} v{version} (now: {now})"
        out.print(
            f"The study is complete; its best trial was {registered} before: "
            f"{before['model_uri']} (run {before['run_id']})"
        )
        if config.force and before.get("version"):
            _warn(
                f"--force is not applied to a finished study (nothing was registered now); "
                f"to make v{before['version']} the champion: winequality promote "
                f"{config.model_name} {before['version']} --force REASON"
            )
        return
    if result.final is None:
        out.print(
            "Other workers are still running trials of this study; the one that finishes "
            "the last trial registers the best model."
        )
        return
    final = result.final
    _metrics_table(
        {f"cv {k}": v for k, v in result.best_cv.items() if k in ("rmse", "mae", "r2")}
        | {f"test {k}": v for k, v in final.test_metrics.items()},
        title="best model",
    )
    out.print(f"Model: {final.model_uri}  (run {final.run_id})")
    if final.decision is not None:
        d = final.decision
        colour = "green" if d.alias == "champion" else "yellow"
        out.print(f"Registered {d.name} v{d.version} as [{colour}]{d.alias}[/]: {d.reason}")


DRIFT_EXIT = 3  # a batch drifted: distinct from bad input (2) and bugs (1)


@app.command(short_help="How far a batch is from the model's training data; exit 3 on drift.")
def drift(
    model: ModelOption,
    input_path: Annotated[
        Path, typer.Option("--input", help="CSV, Parquet or JSON, as `predict` reads them.")
    ],
    plot: Annotated[
        Path | None,
        typer.Option(help="Write the reference vs batch plot here (.png, .svg or .pdf)."),
    ] = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Compare a batch with the model's training data, feature by feature.

    PSI (population stability index: < 0.1 stable, < 0.25 moderate, else drift) and a
    two-sample Kolmogorov-Smirnov test against the reference profile logged with the model.
    Exits 0 when no feature drifted and 3 when one did, so a pipeline can gate on it; with
    fewer rows than a verdict needs (100), it says so and exits 0.
    """
    from winequality.drift import MIN_DRIFT_ROWS
    from winequality.predict import drift_file

    result = _guard(lambda: drift_file(model, input_path, plot=plot, tracking_uri=tracking_uri))
    if not result.enough_rows:
        err.print(
            f"no verdict: {result.rows} of {MIN_DRIFT_ROWS} rows needed (PSI and the KS test "
            "on fewer rows are noise; the server waits for as many)"
        )
        return
    table = Table(title=f"drift of {input_path} ({result.rows} rows) against {model}")
    for column in ("feature", "PSI", "KS statistic", "KS p-value", "outside training", "verdict"):
        table.add_column(column, justify="left" if column in ("feature", "verdict") else "right")
    for f in result.features:
        table.add_row(
            f.feature,
            f"{f.psi:.4f}",
            f"{f.ks_statistic:.4f}",
            f"{f.ks_pvalue:.2g}",
            str(f.outside),
            f.verdict,
        )
    out.print(table)
    if result.plot is not None:
        err.print(f"plot: {result.plot}")
    if result.drifted:
        err.print(f"drift in {len(result.drifted)} feature(s): {', '.join(result.drifted)}")
        raise typer.Exit(DRIFT_EXIT)
    err.print("no feature drifted")


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

    versions = _guard(lambda: list_versions(name, tracking_uri))
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
            *(_number(v.tags.get(tag)) for tag in ("test_rmse", "test_r2", "cv_rmse")),
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

    version = _guard(lambda: register_logged(model, name, tracking_uri))
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
    tracking_uri: TrackingOption = None,
) -> None:
    """Make VERSION the champion if it was judged on the same data, split and seed as the
    champion and beats it there; every failed check is named otherwise (exit 2)."""
    from winequality.registry import promote as promote_version

    decision = _guard(
        lambda: promote_version(name, version, force=force, tracking_uri=tracking_uri)
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

    decision = _guard(lambda: roll_back(name, tracking_uri=tracking_uri))
    out.print(f"{name} v{decision.version} is champion again (v{decision.previous_version} was)")


def _number(text: str | None) -> str:
    return f"{float(text):.4f}" if text else ""


def _metrics_table(metrics: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
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
