"""What a shadow costs the champion's answers, in the same run.

`winequality serve` (one worker, pinned to core 0) answering one-row `/invocations` requests
sent open-loop at a fixed rate (pinned to core 1) below saturation, in alternating rounds:
without a shadow, and with `--shadow` (another model) at `--shadow-fraction 1` and a
`--shadow-log`. Printed per setting: the champion's p50 and p99 latency (median over the
rounds) and their ratio to no shadow (goal: p99 at most 1.05x), and beside it the fraction of
sampled rows that got a logged shadow prediction (goal at least 99.9 % when the queue is not
full), read from the server's own counts and the log.

The rate is a stated share (--load, default 0.5) of the rate the server sustains without a
shadow, measured first (closed loop, 4 clients): the shadow needs CPU too, so at saturation
it can only take from the answers.
Usage: uv run python bench/shadow.py [--rounds 3] [--seconds 10] [--load 0.5]
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


def exported(folder: Path, alpha: float) -> str:
    """A model `winequality train` logs at this alpha, exported to a folder."""
    work = folder / f"alpha-{alpha:g}"
    work.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    subprocess.run([WINEQUALITY, "train", "--alpha", str(alpha), "--output-dir", str(work / "d")],
                   cwd=work, env=env, check=True, capture_output=True)  # fmt: skip
    model_id = next((work / "mlruns").glob("*/models/m-*")).name
    subprocess.run([WINEQUALITY, "export", "--model", f"models:/{model_id}", "--out",
                    str(work / "model")], cwd=work, env=env, check=True,
                   capture_output=True)  # fmt: skip
    return str(work / "model")


class Server:
    def __init__(self, model: str, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", WINEQUALITY, "serve", "--model", model, "--port",
             str(self.port), "--access-log", "off", "--max-inflight", "64",
             "--max-queue-wait-ms", "1000", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                import httpx

                if httpx.get(f"http://127.0.0.1:{self.port}/ping", timeout=1).status_code == 200:
                    return
            except Exception:  # (not up yet)
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

    def health(self) -> dict:
        import httpx

        return dict(httpx.get(f"http://127.0.0.1:{self.port}/health").json())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.5)
    parser.add_argument("--no-log", action="store_true", help="the shadow without --shadow-log")
    options = parser.parse_args()
    os.sched_setaffinity(0, {1})
    row = data.load().frame[FEATURES].head(1).to_numpy().tolist()
    body = json.dumps({"dataframe_split": {"columns": FEATURES, "data": row}}).encode()
    request = loadgen.post_request("/invocations", body)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        champion, challenger = exported(folder, 0.7), exported(folder, 0.05)
        server = Server(champion)
        try:
            answers = loadgen.run(loadgen.closed_loop(server.port, request, 4, options.seconds))
        finally:
            server.stop()
        sustained = sum(a.status == 200 for a in answers) / options.seconds
        rate = sustained * options.load
        print(f"one worker sustains {sustained:,.0f} answers/s (closed loop, 4 clients); "
              f"offered: {rate:,.0f} requests/s ({options.load:.0%}), one row each, "
              f"{options.seconds:g} s x {options.rounds} rounds\n")  # fmt: skip
        found: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
        for round_number in range(options.rounds):
            for key in ("off", "on"):
                log_dir = folder / f"log-{round_number}"
                logging = () if options.no_log else ("--shadow-log", str(log_dir))
                extra = ("--shadow", challenger, "--shadow-fraction", "1",
                         *logging) if key == "on" else ()  # fmt: skip
                server = Server(champion, *extra)
                try:
                    answers = loadgen.run(
                        loadgen.open_loop(server.port, request, rate, options.seconds, preopen=8)
                    )
                    shadow = server.health().get("shadow")
                finally:
                    server.stop()
                ok = [a.seconds for a in answers if a.status == 200]
                if len(ok) != len(answers):  # said, not hidden: the table's rows count only 200s
                    statuses = sorted({a.status for a in answers})
                    print(f"round {round_number} {key}: {len(answers) - len(ok)} of "
                          f"{len(answers)} not 200 ({statuses})", flush=True)  # fmt: skip
                logged = 1.0
                if shadow is not None and not options.no_log:
                    import pyarrow.parquet as pq

                    rows = sum(pq.read_metadata(p).num_rows for p in log_dir.glob("*.parquet"))
                    logged = rows / shadow["rows"]["sampled"]
                found[key].append(
                    (float(np.percentile(ok, 50)), float(np.percentile(ok, 99)), logged)
                )
    base50 = statistics.median(r[0] for r in found["off"])
    base99 = statistics.median(r[1] for r in found["off"])
    print("| setting | p50 ms | p99 ms | p99 / no shadow | sampled rows logged |")
    print("|---|---|---|---|---|")
    shadowed = "--shadow, fraction 1" + ("" if options.no_log else ", --shadow-log")
    for key, label in (("off", "no shadow"), ("on", shadowed)):
        p50 = statistics.median(r[0] for r in found[key])
        p99 = statistics.median(r[1] for r in found[key])
        logged = min(r[2] for r in found[key])
        print(f"| {label} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {p99 / base99:.3f} | "
              f"{logged:.2%} (lowest round) |")  # fmt: skip
    print(f"\n(p50 / no shadow: {statistics.median(r[0] for r in found['on']) / base50:.3f})")


if __name__ == "__main__":
    main()
