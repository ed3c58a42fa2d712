"""What the intervals cost when scoring, against the same work without them, in the same run.

- `winequality serve` (one worker, on core 0): one-row `/invocations` answers a second under
  4 closed-loop clients (this process, on core 1), the body without `params` against the same
  body with `"params": {"interval": 0.9}`, in alternating rounds (median of --rounds).
  Then the same two bodies answered by the app in process, no HTTP (`app_rounds`): the
  noise of a loopback benchmark on a shared machine is a few %, this is not.
- `winequality predict` on 2M rows (the red wines repeated; CSV in, Parquet out), as a user runs
  it, cold, without and with `--interval 0.9`, alternating (median of --rounds); and the scoring
  itself in process (`Scorer.predict` on the 2M x 11 matrix, then the bounds: the floor of
  what the intervals add, two vector additions).
Usage: uv run python bench/interval_cost.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import loadgen  # noqa: E402
from tests.conftest import free_port  # noqa: E402

from winequality import data, schema  # noqa: E402

WINEQUALITY = str(Path(sys.executable).with_name("winequality"))
FEATURES = list(schema.FEATURE_NAMES)


def trained(folder: Path) -> str:
    """A model `winequality train` logs (intervals included), exported to a folder."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    subprocess.run([WINEQUALITY, "train", "--output-dir", str(folder / "data")], cwd=folder,
                   env=env, check=True, capture_output=True)  # fmt: skip
    model_id = next((folder / "mlruns").glob("*/models/m-*")).name
    subprocess.run([WINEQUALITY, "export", "--model", f"models:/{model_id}", "--out",
                    str(folder / "model")], cwd=folder, env=env, check=True,
                   capture_output=True)  # fmt: skip
    return str(folder / "model")


def serve_rounds(model: str, rounds: int, seconds: float) -> tuple[list[float], list[float]]:
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "0", WINEQUALITY, "serve", "--model", model, "--port", str(port),
         "--access-log", "off", "--max-inflight", "8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        os.sched_setaffinity(0, {1})
        row = data.load().frame[FEATURES].head(1).to_numpy().tolist()
        plain = {"dataframe_split": {"columns": FEATURES, "data": row}}
        bodies = {
            "off": json.dumps(plain).encode(),
            "on": json.dumps({**plain, "params": {"interval": 0.9}}).encode(),
        }
        deadline = time.monotonic() + 60
        while True:
            try:
                done = loadgen.run(loadgen.closed_loop(
                    port, loadgen.post_request("/invocations", bodies["off"]), 1, 0.2))  # fmt: skip
                if done and done[0].status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(rounds):
            for key in ("off", "on"):
                request = loadgen.post_request("/invocations", bodies[key])
                answers = loadgen.run(loadgen.closed_loop(port, request, 4, seconds))
                ok = [a for a in answers if a.status == 200]
                statuses = sorted({a.status for a in answers})
                assert len(ok) >= 0.999 * len(answers), f"{key}: statuses {statuses}"
                rates[key].append(len(ok) / seconds)
        return rates["off"], rates["on"]
    finally:
        server.terminate()
        server.wait(30)


def predict_rounds(model: str, big: Path, out: Path, rounds: int) -> tuple[list[float], ...]:
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for key, extra in (("off", []), ("on", ["--interval", "0.9"])):
            started = time.perf_counter()
            subprocess.run([WINEQUALITY, "predict", "--model", model, "--input", str(big),
                            "--output", str(out), "--overwrite", *extra],
                           check=True, capture_output=True)  # fmt: skip
            times[key].append(time.perf_counter() - started)
    return times["off"], times["on"]


def app_rounds(model: str, bodies: dict[str, bytes], rounds: int = 7) -> dict[str, float]:
    """Microseconds per one-row request answered by the app in this process, no HTTP: the
    same ASGI stack `serve` runs (recorder, admission, routes), called directly; alternating
    rounds of 2,000 requests, median."""
    import asyncio

    from winequality.scoring import load_scorer
    from winequality.serving import create_app

    app = create_app(load_scorer(model), model_uri=model)

    async def call(body: bytes) -> None:
        scope = {
            "type": "http", "method": "POST", "path": "/invocations", "raw_path": b"/invocations",
            "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
            "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200, message

        await app(scope, receive, send)

    async def measure() -> dict[str, float]:
        took: dict[str, list[float]] = {key: [] for key in bodies}
        for _ in range(rounds):
            for key, body in bodies.items():
                started = time.perf_counter()
                for _ in range(2000):
                    await call(body)
                took[key].append((time.perf_counter() - started) / 2000 * 1e6)
        return {key: statistics.median(values) for key, values in took.items()}

    return asyncio.run(measure())


def in_process(model: str, rows: int) -> tuple[float, float]:
    from winequality.scoring import load_scorer

    scorer = load_scorer(model)
    assert scorer.model.intervals is not None
    matrix = np.tile(data.load().frame[FEATURES].to_numpy(np.float64), (rows // 1599 + 1, 1))[:rows]
    best_plain, best_bounds = [], []
    for _ in range(5):
        started = time.perf_counter()
        predictions = scorer.predict(matrix)
        middle = time.perf_counter()
        scorer.model.intervals.bounds(predictions, 0.9)
        best_plain.append(middle - started)
        best_bounds.append(time.perf_counter() - middle)
    return min(best_plain), min(best_bounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=2_000_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        model = trained(folder)
        frame = data.load().frame
        copies = options.rows // len(frame) + 1
        big = folder / "big.csv"
        import pandas as pd

        pd.concat([frame] * copies).head(options.rows).to_csv(big, index=False)
        off, on = serve_rounds(model, options.rounds, options.seconds)
        row = frame[FEATURES].head(1).to_numpy().tolist()
        plain_body = {"dataframe_split": {"columns": FEATURES, "data": row}}
        app_us = app_rounds(
            model,
            {
                "off": json.dumps(plain_body).encode(),
                "on": json.dumps({**plain_body, "params": {"interval": 0.9}}).encode(),
            },
        )
        print(
            f"serve, one row per request, 4 closed-loop clients, {options.seconds:g} s x "
            f"{options.rounds} rounds (median answers/s):"
        )
        print("| body | answers/s | / without |")
        print("|---|---|---|")
        print(f"| without params | {statistics.median(off):,.0f} | 1.00 |")
        print(
            f"| params interval 0.9 | {statistics.median(on):,.0f} | "
            f"{statistics.median(on) / statistics.median(off):.3f} |"
        )
        print(
            f"| in process, no HTTP: us per request without / with params | "
            f"{app_us['off']:.1f} / {app_us['on']:.1f} | {app_us['off'] / app_us['on']:.3f} |"
        )
        p_off, p_on = predict_rounds(model, big, folder / "out.parquet", options.rounds)
        plain, bounds = in_process(model, options.rows)
        print(
            f"\npredict, {options.rows:,} rows, CSV in, Parquet out, cold process "
            f"(median of {options.rounds}):"
        )
        print("| run | seconds | / without |")
        print("|---|---|---|")
        print(f"| without --interval | {statistics.median(p_off):.2f} | 1.00 |")
        print(
            f"| --interval 0.9 (two more columns) | {statistics.median(p_on):.2f} | "
            f"{statistics.median(p_on) / statistics.median(p_off):.3f} |"
        )
        print(f"| in process: scoring the 2M rows | {plain:.4f} | |")
        print(f"| in process: their bounds | {bounds:.4f} | {bounds / plain:.3f} of scoring |")


if __name__ == "__main__":
    main()
