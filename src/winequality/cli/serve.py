"""`winequality serve`, and `export`, which readies a model folder for an image to serve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    pass

from winequality.cli.app import ModelOption, Switch, TrackingOption, app, err, guard, out, warn

__all__ = ["ENV_PREFIX", "TOKEN_ENV", "export", "serve", "shadow_report"]


TOKEN_ENV = "WINEQUALITY_TOKEN"
# serve's settings a container sets from its environment (--model: WINEQUALITY_MODEL, …)
ENV_PREFIX = "WINEQUALITY_"


def _env(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


ServedModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        envvar=_env("model"),
        show_envvar=True,
        help="runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version>, "
        "models:/m-<id> or a folder (`winequality export` makes one).",
    ),
]


@app.command(short_help="Serve a model over HTTP (MLflow's protocol and V2, a page, OpenAPI).")
def serve(
    model: ServedModelOption,
    host: Annotated[
        str,
        typer.Option(
            envvar=_env("host"),
            show_envvar=True,
            help="Interface; 0.0.0.0 exposes it to the network.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, envvar=_env("port"), show_envvar=True, help="TCP port."),
    ] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            min=1, envvar=_env("workers"), show_envvar=True, help="Processes, each with the model."
        ),
    ] = 1,
    max_body_mb: Annotated[float, typer.Option(help="Larger bodies get 413.")] = 8.0,
    allow_out_of_range: Annotated[
        bool,
        typer.Option(
            "--allow-out-of-range",
            help="Score values outside the physical ranges (warned in a header).",
        ),
    ] = False,
    access_log: Annotated[
        Switch, typer.Option(help="One JSON line per request on standard error.")
    ] = Switch.on,
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
        Switch, typer.Option(help="Prometheus metrics at /metrics and drift at /drift.")
    ] = Switch.on,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The model's name on the V2 routes (/v2/models/NAME/infer). Default: the "
            "registered name of a models:/ URI, else wine-quality.",
        ),
    ] = None,
    drain_delay: Annotated[
        float,
        typer.Option(
            min=0,
            envvar=_env("drain-delay"),
            show_envvar=True,
            help="After SIGTERM or Ctrl+C, keep serving this many seconds with readiness 503 "
            "and Connection: close, so that load balancers stop sending first (Kubernetes: a "
            "readiness probe's period times its failure threshold).",
        ),
    ] = 0.0,
    shutdown_timeout: Annotated[
        int,
        typer.Option(
            min=0,
            envvar=_env("shutdown-timeout"),
            show_envvar=True,
            help="Then wait at most this many seconds for requests in flight. A second "
            "signal stops at once (exit 130).",
        ),
    ] = 30,
    max_inflight: Annotated[
        int,
        typer.Option(
            min=1,
            help="Scoring requests each worker takes at once; more wait (see next), then get "
            "503 with Retry-After. Probes and /metrics are never held back.",
        ),
    ] = 4,
    max_queue_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            help="How long a scoring request may wait for a slot (one that would wait longer "
            "gets its 503 at once).",
        ),
    ] = 5.0,
    request_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds from a request's arrival to its whole body read, queue wait "
            "included; past it, 504 (0: none).",
        ),
    ] = 30.0,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a client has to send a request's headers; then 408 and the "
            "connection closes (0: none).",
        ),
    ] = 5.0,
    min_body_rate: Annotated[
        int,
        typer.Option(
            min=0,
            help="Bytes per second a request body must average after that grace; a slower "
            "client's connection is closed (0: no minimum).",
        ),
    ] = 8192,
    max_connections: Annotated[
        int,
        typer.Option(
            min=0,
            help="Connections each worker holds; past it the oldest incomplete one is closed "
            "(0: below the open-files limit, with room kept for probes).",
        ),
    ] = 0,
    shadow: Annotated[
        str | None,
        typer.Option(
            "--shadow",
            metavar="MODEL",
            help="A second model (a URI, such as models:/NAME@challenger) that scores a sample "
            "of the accepted rows off the request path; the answers stay the served model's. "
            "It follows its alias; one that fails to load is reported and retried.",
        ),
    ] = None,
    shadow_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="The share of accepted rows the shadow scores."),
    ] = 0.2,
    shadow_log: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Write the sampled rows (request id, row, both versions and predictions, each "
            "feature's reference bin) as Parquet files here, for `winequality shadow-report`.",
        ),
    ] = None,
    shadow_log_inputs: Annotated[
        bool,
        typer.Option(
            "--shadow-log-inputs", help="Also write the sampled rows' feature values in the log."
        ),
    ] = False,
    canary: Annotated[
        str | None,
        typer.Option(
            "--canary",
            metavar="MODEL",
            help="A second model (such as models:/NAME@challenger) that answers a sticky share "
            "of the requests (--canary-fraction), chosen by a hash of --canary-header; "
            "X-Model-Version says which model answered. It follows its alias.",
        ),
    ] = None,
    canary_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="The share of clients the canary answers."),
    ] = 0.05,
    canary_header: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="The request header naming the client: the same value, the same model "
            "(without it, a request is drawn on its request id).",
        ),
    ] = "X-Client-Id",
    tracking_uri: TrackingOption = None,
) -> None:
    """Serve a model over HTTP: MLflow's /invocations protocol, the Open Inference Protocol
    (V2: /v2/models/NAME/infer), a page at /, OpenAPI,
    Prometheus metrics and drift; follows a registry alias."""
    import signal

    from winequality.scoring import load_scorer
    from winequality.serving import AdmissionLimits, ConnectionLimits, ServerSettings, check_port
    from winequality.serving import serve as run_server
    from winequality.tracking import resolve_uri

    # SIGTERM is Ctrl+C until the server's drain takes both over: as a container's PID 1 a
    # signal with no handler is dropped, and a stop while the model loads would hang
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    token = guard(lambda: _read_token(token_file))
    shadow_settings = guard(
        lambda: _shadow_settings(shadow, shadow_fraction, shadow_log, shadow_log_inputs)
    )
    canary_settings = guard(lambda: _canary_settings(canary, canary_fraction, canary_header))
    guard(lambda: check_port(host, port))
    scorer = guard(lambda: load_scorer(model, tracking_uri))  # exit 2 before any socket
    if canary_settings is not None:  # it answers users: one that cannot load stops the start
        guard(lambda: load_scorer(canary_settings.model_uri, tracking_uri))
    if Path(model).expanduser().is_dir():  # an exported folder: its provenance must read
        from winequality.export import read_export

        guard(lambda: read_export(Path(model).expanduser()))
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        warn(
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
        metrics=metrics is Switch.on,
        access_log=access_log is Switch.on,
        tracking_uri=resolve_uri(tracking_uri),
        name=name,
        drain_delay=drain_delay,
        shutdown_timeout=shutdown_timeout,
        admission=AdmissionLimits(max_inflight, max_queue_wait_ms / 1000, request_timeout),
        connections=ConnectionLimits(header_timeout, min_body_rate, max_connections or None),
        shadow=shadow_settings,
        canary=canary_settings,
    )
    # With workers the model was loaded to fail fast; each loads its own, so this one is let go.
    served = scorer if workers <= 1 else None
    del scorer
    status = run_server(settings, scorer=served, host=host, port=port, workers=workers)
    if status:
        raise typer.Exit(status)


def _shadow_settings(
    model: str | None, fraction: float, log_dir: Path | None, log_inputs: bool
) -> Any:
    """--shadow and its options, checked before the model loads."""
    from winequality.errors import ParameterError
    from winequality.extras import require
    from winequality.serving import ShadowSettings

    if model is None:
        if log_dir is not None or log_inputs:
            raise ParameterError("--shadow-log and --shadow-log-inputs need --shadow MODEL")
        return None
    if fraction <= 0:
        raise ParameterError("--shadow-fraction must be above 0 (1 scores every row)")
    if log_dir is not None:
        require("pyarrow", "--shadow-log")
        if log_dir.exists() and not log_dir.is_dir():
            raise ParameterError(f"--shadow-log {log_dir} is a file; give a folder")
    return ShadowSettings(model, fraction, log_dir, log_inputs)


def _canary_settings(model: str | None, fraction: float, header: str) -> Any:
    """--canary and its options, checked before the model loads."""
    import re

    from winequality.errors import ParameterError
    from winequality.serving import CanarySettings

    if model is None:
        return None
    if not 0 < fraction < 1:
        raise ParameterError("--canary-fraction must be above 0 and below 1")
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):  # an HTTP field name
        raise ParameterError(f"--canary-header {header!r} is not a header name")
    return CanarySettings(model, fraction, header)


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


@app.command(short_help="Copy a model, checked, into a folder an image bakes in.")
def export(
    model: ModelOption,
    out_folder: Annotated[
        Path, typer.Option("--out", help="The folder to write (created; must be empty).")
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a folder that is not empty.")
    ] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Copy a model into a folder that `winequality serve --model FOLDER` serves with no
    tracking server: checked as the server checks it (the wine schema's signature, skops, its
    reference profile, its input example scored), with where it came from. The Containerfile's
    `baked` target copies it into the image."""
    from winequality.export import export_model

    exported = guard(
        lambda: export_model(model, out_folder, tracking_uri=tracking_uri, replace=replace)
    )
    origin = [
        f"version {exported.version} of {exported.registered_model}" if exported.version else "",
        f"run {exported.run_id}" if exported.run_id else "",
        f"model {exported.model_id}" if exported.model_id else "",
    ]
    err.print(f"exported {model} ({', '.join(o for o in origin if o)})")
    err.print("checked: the wine schema's signature, skops, reference profile, input example")
    out.print(str(out_folder), soft_wrap=True)


@app.command("shadow-report", short_help="How far a shadow model was from the champion, live.")
def shadow_report(
    log: Annotated[
        Path, typer.Option("--log", metavar="DIR", help="The folder `serve --shadow-log` wrote.")
    ],
    truth: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="True grades known since: a CSV or Parquet file of request_id, row, quality "
            "(request ids as the server answered them in X-Request-Id). Adds each model's RMSE "
            "on the same rows and a paired test.",
        ),
    ] = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", metavar="REPORT", help="Write the report as JSON (for promote --evidence)."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=0, help="Reference bins shown, largest first.")] = 5,
) -> None:
    """Read a shadow log: the difference between the two models on live rows (overall, and per
    bin of the champion's reference profile), and with --truth, who was closer."""
    from rich.table import Table

    from winequality.extras import require
    from winequality.shadow_report import shadow_report as report_of

    guard(lambda: require("pyarrow", "shadow-report"))
    report = guard(lambda: report_of(log, truth))
    champions = ", ".join(report.champion_versions)
    shadows = ", ".join(report.shadow_versions)
    out.print(
        f"{report.rows} sampled rows from {report.requests} requests in {report.files} "
        f"file{'s' if report.files != 1 else ''}: "
        f"champion {champions}, shadow {shadows}"
    )
    quantiles = ", ".join(f"p{float(q) * 100:g} {v:.4f}" for q, v in report.quantiles.items())
    out.print(
        f"|shadow - champion|: mean {report.mean_abs_difference:.4f}, {quantiles}, max "
        f"{report.max_abs_difference:.4f}; mean signed difference {report.mean_difference:+.4f}"
    )
    if report.by_bin and top:
        table = Table(title="where they differ most (bins of the reference profile)")
        for column in ("feature", "bin", "range", "rows", "mean |difference|"):
            table.add_column(column, justify="left" if column in ("feature", "range") else "right")
        for b in sorted(report.by_bin, key=lambda b: -b.mean_abs_difference)[:top]:
            low = "-inf" if b.low is None else f"{b.low:g}"
            high = "inf" if b.high is None else f"{b.high:g}"
            table.add_row(
                b.feature,
                str(b.bin),
                f"[{low}, {high})",
                str(b.rows),
                f"{b.mean_abs_difference:.4f}",
            )
        out.print(table)
    live = report.live
    if live is not None:
        ci_low, ci_high = live.mse_difference_ci95
        out.print(
            f"on {live.rows} rows with a true grade ({live.unmatched_truth} truth rows unmatched): "
            f"RMSE champion {live.champion_rmse:.4f}, shadow {live.shadow_rmse:.4f}; squared-"
            f"error difference {live.mse_difference:+.4f} (95 % interval {ci_low:+.4f} .. "
            f"{ci_high:+.4f}, paired t-test p = {live.p_value:.3g})"
        )
    if out_path is not None:
        guard(lambda: report.write(out_path))
        err.print(f"wrote the report to {out_path}")
