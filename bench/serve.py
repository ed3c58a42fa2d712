"""`winequality serve` against `mlflow models serve` and MLServer on one logged model, same run.

Servers on the same model, one worker each, pinned to core 0 (wrk on core 1): MLflow's, ours plain
(`--metrics off --access-log off`) and ours as it starts by default (Prometheus metrics, drift
accounting, a JSON access-log line per request, written to a file), the last also spoken to in the
Open Inference Protocol (V2) in both request forms (one [N, 11] FP64 tensor; one FP64 tensor per
feature, MLServer's `pd`); and, when it is installed in its own environment (.venv-mlserver, see
deploy/mlserver/requirements.txt), MLServer 1.7 with its MLflow runtime in both of its
configurations (`parallel_workers` 1, its default, and 0, in-process), spoken to in V2 with the
per-feature form its MLflow runtime decodes. The same wrk load (Debian's wrk; `apt-get install
wrk`): one-row bodies with 8 connections, in rounds that alternate the servers, then 10,000-row
bodies with 2 connections. Prints req/s, p50 and p99 latency, the server's CPU time per request,
rows/s, and each figure's ratio to MLflow's (the anchor); then ours against the faster MLServer
configuration; then, in process, the CPU per request of the ASGI app alone, plain against full;
then bench/overload.py's rows (4x overload and 2,000 stalled connections, ours beside uvicorn's
`--limit-concurrency`).
Usage: uv run python bench/serve.py [--seconds 10] [--rounds 3] [--data PATH] [--mlserver PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHOR = "mlflow models serve"
PLAIN = "winequality serve --metrics off --access-log off"
FULL = "winequality serve (metrics, drift, access log)"
V2 = "  the same, V2, one [N, 11] tensor"
V2_PD = "  the same, V2, a tensor per feature (pd)"
MLSERVER = "MLServer 1.7 parallel_workers={} (V2, pd)"
V2_PATH = "/v2/models/wine-quality/infer"
DRAIN = 1.0  # our servers' --drain-delay: readiness 503, then this long serving, then exit
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server on port {port} did not start")


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def pinned(core: int) -> list[str]:
    """A command prefix keeping a process on one core (servers on core 0, wrk on core 1), so
    that the load generator and the server do not take turns on the same core."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(core)]


def run_wrk(
    port: int, script: Path, connections: int, seconds: int, path: str = "/invocations"
) -> dict[str, float]:
    out = subprocess.run(
        [
            *pinned(1),
            "wrk",
            "-t",
            "1" if connections < 4 else "2",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers during the load:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)$", out, re.M))
    return {
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore
        "p50": to_ms(latency["50"]),
        "p99": to_ms(latency["99"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating 1-row rounds")
    parser.add_argument("--data", default=None, help="a CSV; default: the shipped red data")
    parser.add_argument(
        "--mlserver",
        type=Path,
        default=ROOT / ".venv-mlserver" / "bin" / "mlserver",
        help="MLServer's executable, in its own environment (deploy/mlserver/requirements.txt)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # mlflow models serve shells out to `uvicorn`: the venv's bin must be on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ.update(env)
    import mlflow

    from winequality.data import load
    from winequality.schema import FEATURE_NAMES
    from winequality.train import TrainConfig, train

    os.chdir(work)
    result = train(TrainConfig(data=args.data, tracking_uri=uri, output_dir=None))
    frame = load(args.data).frame[list(FEATURE_NAMES)]
    bodies: dict[tuple[str, int], Path] = {}
    for rows in (1, 10_000):
        sample = frame.sample(rows, replace=rows > len(frame), random_state=0)
        for protocol, document in (
            ("mlflow", {"dataframe_split": {"columns": list(FEATURE_NAMES),
                                            "data": sample.to_numpy().tolist()}}),
            ("v2", {"inputs": [{"name": "wines", "shape": [rows, 11], "datatype": "FP64",
                                "data": sample.to_numpy().ravel().tolist()}]}),
            ("pd", {"parameters": {"content_type": "pd"},
                    "inputs": [{"name": name, "shape": [rows], "datatype": "FP64",
                                "data": sample[name].tolist()} for name in FEATURE_NAMES]}),
        ):  # fmt: skip
            body = work / f"body-{protocol}-{rows}.json"
            body.write_text(json.dumps(document))
            script = work / f"post-{protocol}-{rows}.lua"
            script.write_text(LUA.format(body=body))
            bodies[protocol, rows] = script

    winequality = shutil.which("winequality") or str(Path(sys.executable).with_name("winequality"))
    # each server: its command (given a port), its environment, and the path that says ready
    servers: dict[str, tuple[Callable[[int], list[str]], dict[str, str], str]] = {
        ANCHOR: (
            lambda p: [
                sys.executable, "-m", "mlflow", "models", "serve", "-m", result.model_uri,
                "-p", str(p), "--env-manager", "local", "-w", "1",
            ],
            env,
            "/ping",
        ),
        PLAIN: (
            lambda p: [
                winequality, "serve", "--model", result.model_uri, "--port", str(p),
                "--metrics", "off", "--access-log", "off", "--drain-delay", str(DRAIN),
            ],
            env,
            "/ping",
        ),
        FULL: (
            lambda p: [
                winequality, "serve", "--model", result.model_uri, "--port", str(p),
                "--drain-delay", str(DRAIN),
            ],
            env,
            "/ping",
        ),
    }  # fmt: skip
    # what each row of the table loads: a server, and the protocol it is spoken to in
    targets = {name: (name, "mlflow", "/invocations") for name in servers}
    targets[V2] = (FULL, "v2", V2_PATH)
    targets[V2_PD] = (FULL, "pd", V2_PATH)
    if args.mlserver.exists():
        # MLServer as deploy/mlserver deploys it: the model beside its model-settings.json
        folder = work / "mlserver"
        folder.mkdir()
        shutil.copy(ROOT / "deploy" / "mlserver" / "model-settings.json", folder)
        mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(folder / "model"))
        for workers in (1, 0):
            name = MLSERVER.format(workers)
            servers[name] = (
                lambda p: [str(args.mlserver), "start", str(folder)],
                {
                    **env,
                    "MLSERVER_PARALLEL_WORKERS": str(workers),
                    "MLSERVER_HOST": "127.0.0.1",
                    "MLSERVER_GRPC_PORT": str(free_port()),
                    "MLSERVER_METRICS_PORT": str(free_port()),
                },
                "/v2/health/ready",
            )
            targets[name] = (name, "pd", V2_PATH)
    else:
        print(f"MLServer rows left out: no {args.mlserver} (deploy/mlserver/requirements.txt)")
    started = {}
    logs = {}
    for name, (command, server_env, _) in servers.items():
        port = free_port()
        logs[name] = open(work / f"{port}.log", "wb")  # noqa: SIM115  (the access log lands here)
        started[name] = (
            port,
            subprocess.Popen(
                [*pinned(0), *command(port)],
                env={**server_env, "MLSERVER_HTTP_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=logs[name],
                start_new_session=True,
            ),
        )
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    table: dict[str, dict[str, float]] = {}
    try:
        for name, (port, _) in started.items():
            wait_ready(port, servers[name][2])
        for server, protocol, path in targets.values():
            run_wrk(started[server][0], bodies[protocol, 1], 8, 2, path)  # warm-up
        # The rounds alternate the servers, so that a slow spell of this shared machine
        # lands on each of them; the table shows the median round.
        for _ in range(args.rounds):
            for name, (server, protocol, path) in targets.items():
                port, process = started[server]
                before = cpu_seconds(process.pid)
                one = run_wrk(port, bodies[protocol, 1], 8, args.seconds, path)
                one["cpu_us"] = (cpu_seconds(process.pid) - before) / one["requests"] * 1e6
                rounds[name].append(one)
        for name, (server, protocol, path) in targets.items():
            port, _ = started[server]
            big = run_wrk(port, bodies[protocol, 10_000], 2, args.seconds, path)
            middle = sorted(rounds[name], key=lambda r: r["rps"])[len(rounds[name]) // 2]
            table[name] = {**middle, "rows": big["rps"] * 10_000}
    finally:
        drains: dict[str, tuple[float, float]] = {}
        for name, (port, process) in started.items():
            if name in (PLAIN, FULL):  # ours: how soon readiness turns, how soon it exits
                drains[name] = drain_timing(port, process)
            else:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
            logs[name].close()
            logged = Path(logs[name].name).read_bytes().count(b'"request_id"')
            table.setdefault(name, {})["logged"] = logged
    anchor = table[ANCHOR]
    print(
        f"one worker each, wrk: 1-row bodies x 8 connections ({args.rounds} alternating rounds, "
        f"median shown), 10k-row bodies x 2 connections, {args.seconds}s each, "
        f"{os.cpu_count()} cores: {'servers on core 0, wrk on core 1' if pinned(0) else 'shared'}"
    )
    print(
        f"{'server':44} {'1-row req/s':>12} {'x':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU us/req':>10} {'10k rows/s':>12} {'x':>6}"
    )
    for name, row in table.items():
        print(
            f"{name:44} {row['rps']:12.0f} {row['rps'] / anchor['rps']:6.1f} "
            f"{row['p50']:8.2f} {row['p99']:8.2f} {row['cpu_us']:10.0f} {row['rows']:12.0f} "
            f"{row['rows'] / anchor['rows']:6.1f}"
        )
    full, plain = table[FULL], table[PLAIN]
    ratios = [f["rps"] / p["rps"] for f, p in zip(rounds[FULL], rounds[PLAIN], strict=True)]
    print(
        f"metrics + drift + access log on: {full['rps'] / plain['rps']:.1%} of the plain "
        f"server's 1-row req/s (rounds: {', '.join(f'{r:.1%}' for r in ratios)}); server CPU "
        f"per request {full['cpu_us']:.0f} us against {plain['cpu_us']:.0f} us "
        f"({plain['cpu_us'] / full['cpu_us']:.1%}); p99 {full['p99']:.2f} ms "
        f"({int(full['logged'])} access-log lines)"
    )
    for form in (V2, V2_PD):
        v2 = table[form]
        v2_ratios = [v["rps"] / f["rps"] for v, f in zip(rounds[form], rounds[FULL], strict=True)]
        print(
            f"{form.strip()[10:]}: {v2['rps'] / full['rps']:.1%} of /invocations' 1-row req/s "
            f"(rounds: {', '.join(f'{r:.1%}' for r in v2_ratios)}), p99 {v2['p99']:.2f} ms; "
            f"10k-row bodies {v2['rows'] / full['rows']:.1%} of its rows/s"
        )
    mlservers = [name for name in table if name.startswith("MLServer")]
    if mlservers:
        best_one = max(mlservers, key=lambda n: table[n]["rps"])
        best_rows = max(mlservers, key=lambda n: table[n]["rows"])
        print(
            f"against the faster MLServer configuration: V2 (pd) one-row req/s "
            f"{table[V2_PD]['rps'] / table[best_one]['rps']:.1f}x {best_one} (goal >= 20x); "
            f"V2 (pd) 10k rows/s {table[V2_PD]['rows'] / table[best_rows]['rows']:.2f}x and "
            f"/invocations 10k dataframe_split rows/s "
            f"{full['rows'] / table[best_rows]['rows']:.2f}x {best_rows} (goals >= 1.5x, >= 1x)"
        )
    for name, (turned, ended) in drains.items():
        print(
            f"SIGTERM to {name.split(' (')[0]}{' (full)' if name == FULL else ''}: readiness "
            f"503 after {turned * 1e3:.1f} ms (goal <= 100 ms), exit 0 after {ended:.2f} s "
            f"(drain delay {DRAIN:g} s)"
        )
    print()
    in_process(result.model_uri, (work / "body-mlflow-1.json").read_bytes())
    print()
    sys.path.insert(0, str(Path(__file__).parent))
    import overload  # bench/overload.py: past capacity and slow clients, beside uvicorn's limit

    overload.report(result.model_uri, args.seconds)
    shutil.rmtree(work, ignore_errors=True)


def in_process(model_uri: str, body: bytes, requests: int = 20_000, rounds: int = 5) -> None:
    """The second table: CPU time per one-row request of the ASGI app alone (no sockets, no
    uvicorn), plain against full, alternating; the per-request cost of the additions, with the
    bunches they queue folded (metrics) and written (access log) every 1,000 requests."""
    import asyncio
    import io

    from winequality.scoring import load_scorer
    from winequality.serving import create_app

    scorer = load_scorer(model_uri)
    apps = {
        PLAIN: create_app(scorer, metrics=False, access_log=None),
        FULL: create_app(scorer, metrics=True, access_log=io.BytesIO()),
    }
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"answered {message['status']}")

    async def load(app: object, n: int) -> float:
        start = time.process_time()
        for i in range(n):
            await app(dict(scope), receive, send)  # type: ignore[operator]
            if i % 1000 == 999:
                for observer in app.observers:  # type: ignore[attr-defined]
                    observer.flush()  # the metrics and the access log
        return (time.process_time() - start) / n * 1e6

    async def measure() -> dict[str, list[float]]:
        for app in apps.values():
            await load(app, 2000)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(rounds):
            for name, app in apps.items():
                times[name].append(await load(app, requests))
        return times

    times = asyncio.run(measure())
    print(
        f"in process, the ASGI app alone: CPU per 1-row request, median of {rounds} "
        f"alternating rounds of {requests:,}"
    )
    plain = sorted(times[PLAIN])[rounds // 2]
    for name, values in times.items():
        middle = sorted(values)[rounds // 2]
        print(f"{name:44} {middle:8.1f} us  (+{middle - plain:.1f} us)")


def drain_timing(port: int, process: subprocess.Popen[bytes]) -> tuple[float, float]:
    """SIGTERM to an idle server of ours: seconds until /health/ready answers 503 (polled as
    fast as one client can), and until the process has exited (after its drain delay)."""
    signalled = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    turned = float("nan")
    while process.poll() is None and time.monotonic() - signalled < 10:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1):
                pass
        except urllib.error.HTTPError as answer:
            if answer.code == 503:
                turned = time.monotonic() - signalled
                break
        except OSError:
            break
    if process.wait(timeout=60) != 0:
        raise RuntimeError(f"the server exited {process.returncode} after SIGTERM")
    return turned, time.monotonic() - signalled


def cpu_seconds(group: int) -> float:
    """User + system CPU time so far of every process in a process group (a server and the
    workers it started; Linux /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
