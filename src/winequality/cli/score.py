"""`winequality predict` and `winequality drift`: scoring files, and how far they are from the
model's training data."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

if TYPE_CHECKING:
    pass

from winequality.cli.app import Engine, ModelOption, TrackingOption, app, err, guard, out, warn

__all__ = ["DRIFT_EXIT", "drift", "predict"]


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
    interval: Annotated[
        float | None,
        typer.Option(
            help="Add the bounds of the prediction interval at this level, a level the model "
            "was calibrated at (0.8, 0.9, 0.95 by default): columns lower_0.9 and upper_0.9.",
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: this process, streaming; spark: Spark's executors (--input a file or "
            "folder, --output a folder of predictions/ and quarantine/)."
        ),
    ] = Engine.local,
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

    if engine is Engine.spark:
        _predict_on_spark(
            model, input_path, output, id_column, flag_outside, allow_out_of_range,
            spark_master, overwrite, tracking_uri, interval,
        )  # fmt: skip
        return

    to_stdout = output is None or output == "-"
    with tempfile.TemporaryDirectory(prefix="winequality-") as folder, _RowsProgress() as bar:
        # Standard output gets the CSV only once every row passed: it is written to a
        # temporary file first, as a file output is.
        target = Path(folder) / "predictions.csv" if to_stdout else Path(str(output))
        result = guard(
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
                interval=interval,
            )
        )
        bar.close()
        for issue in result.warnings:
            warn(issue.describe(result.row_label, result.row_offset))
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
    interval: float | None,
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
            interval=interval,
        )

    result = guard(run)
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

    result = guard(lambda: drift_file(model, input_path, plot=plot, tracking_uri=tracking_uri))
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
