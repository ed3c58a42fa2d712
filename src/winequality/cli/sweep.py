"""`winequality sweep`: the progress, the signals, the resume command, the result."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from winequality.evaluate import PROTOCOLS, Protocol
from winequality.registry import DEFAULT_MODEL_NAME
from winequality.tracking import SWEEP_EXPERIMENT

if TYPE_CHECKING:
    from winequality.sweeping import SweepConfig, SweepResult

from winequality.cli.app import (
    DataOption,
    FamilyChoice,
    IntervalLevelsOption,
    ProtocolChoice,
    TrackingOption,
    WineColour,
    WineOption,
    app,
    err,
    guard,
    interval_levels,
    metrics_table,
    out,
    warn,
)

__all__ = ["sweep"]


@app.command(short_help="Tune a model family with Optuna; register and gate the best.")
def sweep(
    context: typer.Context,
    data: DataOption = None,
    wine: WineOption = WineColour.red,
    model: Annotated[
        FamilyChoice,
        typer.Option("--model", help="Model family."),
    ] = FamilyChoice.elasticnet,  # type: ignore[attr-defined]
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
        ProtocolChoice,
        typer.Option(
            help="Cross-validation protocol: "
            + "; ".join(f"{name}: {text}" for name, text in PROTOCOLS.items())
            + "."
        ),
    ] = ProtocolChoice.grouped_protocol,  # type: ignore[attr-defined]
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
    levels: IntervalLevelsOption = "0.8,0.9,0.95",
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
        interval_levels=guard(lambda: interval_levels(levels)),
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
            result = guard(lambda: run_sweep(config, on_trial=advance, stop=stop))
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
            warn(
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
    metrics_table(
        {f"cv {k}": v for k, v in result.best_cv.items() if k in ("rmse", "mae", "r2")}
        | {f"test {k}": v for k, v in final.test_metrics.items()},
        title="best model",
    )
    out.print(f"Model: {final.model_uri}  (run {final.run_id})")
    if final.decision is not None:
        d = final.decision
        colour = "green" if d.alias == "champion" else "yellow"
        out.print(f"Registered {d.name} v{d.version} as [{colour}]{d.alias}[/]: {d.reason}")
