"""`winequality serve` against `mlflow models serve` on the same logged model, same run.

Each server gets one worker and the same wrk load (Debian's wrk; `apt-get install wrk`):
MLflow's, ours plain (`--metrics off --access-log off`) and ours as it starts by default
(Prometheus metrics, drift accounting, a JSON access-log line per request, written to a file).
one-row JSON bodies with 8 connections, then 10,000-row bodies with 2 connections. Prints
req/s, p50 and p99 latency, rows/s, and each figure's ratio to MLflow's (the anchor).
Usage: uv run python bench/serve.py [--seconds 10] [--data PATH]
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
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAIN = "winequality serve --metrics off --access-log off"
FULL = "winequality serve (metrics, drift, access log)"
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server on port {port} did not start")


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(port: int, script: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
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
            f"http://127.0.0.1:{port}/invocations",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers during the load:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)$", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore
        "p50": to_ms(latency["50"]),
        "p99": to_ms(latency["99"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--data", default=None, help="a CSV; default: the shipped red data")
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
    from winequality.data import load
    from winequality.schema import FEATURE_NAMES
    from winequality.train import TrainConfig, train

    os.chdir(work)
    result = train(TrainConfig(data=args.data, tracking_uri=uri, output_dir=None))
    frame = load(args.data).frame[list(FEATURE_NAMES)]
    bodies = {}
    for rows in (1, 10_000):
        sample = frame.sample(rows, replace=rows > len(frame), random_state=0)
        body = work / f"body-{rows}.json"
        body.write_text(
            json.dumps(
                {
                    "dataframe_split": {
                        "columns": list(FEATURE_NAMES),
                        "data": sample.to_numpy().tolist(),
                    }
                }
            )
        )
        script = work / f"post-{rows}.lua"
        script.write_text(LUA.format(body=body))
        bodies[rows] = script

    winequality = shutil.which("winequality") or str(Path(sys.executable).with_name("winequality"))
    servers = {
        "mlflow models serve": lambda p: [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            result.model_uri,
            "-p",
            str(p),
            "--env-manager",
            "local",
            "-w",
            "1",
        ],
        PLAIN: lambda p: [
            winequality, "serve", "--model", result.model_uri, "--port", str(p),
            "--metrics", "off", "--access-log", "off",
        ],
        FULL: lambda p: [winequality, "serve", "--model", result.model_uri, "--port", str(p)],
    }  # fmt: skip
    table: dict[str, dict[str, float]] = {}
    for name, command in servers.items():
        port = free_port()
        log = open(work / f"{port}.log", "wb")  # noqa: SIM115  (the access log lands here)
        process = subprocess.Popen(
            command(port),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        try:
            wait_ready(port)
            run_wrk(port, bodies[1], 8, 2)  # warm-up
            one = run_wrk(port, bodies[1], 8, args.seconds)
            big = run_wrk(port, bodies[10_000], 2, args.seconds)
            table[name] = {
                "rps": one["rps"],
                "p50": one["p50"],
                "p99": one["p99"],
                "rows": big["rps"] * 10_000,
            }
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
            log.close()
            logged = (work / f"{port}.log").read_bytes().count(b'"request_id"')
            table[name]["logged"] = logged
    shutil.rmtree(work, ignore_errors=True)
    anchor = table["mlflow models serve"]
    print(
        f"one worker each, wrk: 1-row bodies x 8 connections, 10k-row bodies x 2 connections, "
        f"{args.seconds}s each, {os.cpu_count()} cores shared with wrk"
    )
    print(
        f"{'server':44} {'1-row req/s':>12} {'x':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'10k rows/s':>12} {'x':>6}"
    )
    for name, row in table.items():
        print(
            f"{name:44} {row['rps']:12.0f} {row['rps'] / anchor['rps']:6.1f} "
            f"{row['p50']:8.2f} {row['p99']:8.2f} {row['rows']:12.0f} "
            f"{row['rows'] / anchor['rows']:6.1f}"
        )
    full, plain = table[FULL], table[PLAIN]
    print(
        f"metrics + drift + access log on: {full['rps'] / plain['rps']:.1%} of the plain "
        f"server's 1-row req/s, p99 {full['p99']:.2f} ms ({int(full['logged'])} access-log lines)"
    )


if __name__ == "__main__":
    main()
