"""What a shadow costs the champion's answers, in the same run.

`winequality serve` (one worker, pinned to core 0) answering one-row `/invocations` requests
sent open-loop at a fixed rate (pinned to core 1) below saturation, in alternating rounds:
without a shadow, and with `--shadow` (another model) at `--shadow-fraction 1` and a
`--shadow-log` (the shadow's process inherits core 0: it shares the server's core, at idle
priority; it has loaded before a round starts, and every sampled row is dealt with before the
round's server stops). Printed per setting: the champion's p50 and p99 latency (median over the
rounds) and their ratio to no shadow (goal: p99 at most 1.05x), and beside it the fraction of
sampled rows that got a logged shadow prediction (goal at least 99.9 % when the queue is not
full) and the share dropped because the shadow's pipe was full, read from the server's own
counts and the log.

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
from collections.abc import Callable
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

    def settle(self, until: Callable[[dict], bool]) -> dict:
        """The shadow's /health state once `until` holds."""
        deadline = time.monotonic() + 60
        while not until(shadow := self.health()["shadow"]):
            if time.monotonic() > deadline:
                raise SystemExit(f"the shadow did not settle: {shadow}")
            time.sleep(0.1)
        return dict(shadow)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def offer_cost(champion: str, challenger: str, requests: int = 20_000) -> tuple[float, float]:
    """Seconds per one-row offer to a running shadow process (in bursts of 1,000 with pauses
    for it to read, so that nothing is dropped), and per one-row champion scoring."""
    from winequality.scoring import load_scorer
    from winequality.serving.follower import ServedModel
    from winequality.serving.shadow import Shadow, ShadowSettings

    served = ServedModel.of(load_scorer(champion), "1")
    features = data.load().frame[FEATURES].head(1).to_numpy(np.float64)
    predictions = served.scorer.predict(features)
    shadow = Shadow(ShadowSettings(challenger, 1.0), tracking_uri=None)
    shadow.start()
    try:
        while not shadow.state()["loaded"]:
            time.sleep(0.1)
        spent = 0.0
        for burst in range(requests // 1000):
            started = time.perf_counter()
            for i in range(1000):
                shadow.offer(f"r{burst}-{i}", features, predictions, served, 0.0)
            spent += time.perf_counter() - started
            time.sleep(0.25)
        if shadow.counts["dropped"]:
            raise SystemExit(f"the offers dropped rows: {shadow.counts}")
    finally:
        shadow.stop()
    started = time.perf_counter()
    for _ in range(requests):
        served.scorer.predict(features)
    return spent / requests, (time.perf_counter() - started) / requests


def settled(shadow: dict) -> bool:
    """Every sampled row dealt with: scored, or counted as not."""
    rows = shadow["rows"]
    return bool(
        rows["sampled"] == sum(rows[k] for k in ("scored", "dropped", "unavailable", "failed"))
    )


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
        found: dict[str, list[tuple[float, float, float, float]]] = {"off": [], "on": []}
        for round_number in range(options.rounds):
            for key in ("off", "on"):
                log_dir = folder / f"log-{round_number}"
                logging = () if options.no_log else ("--shadow-log", str(log_dir))
                extra = ("--shadow", challenger, "--shadow-fraction", "1",
                         *logging) if key == "on" else ()  # fmt: skip
                server = Server(champion, *extra)
                try:
                    if key == "on":  # its process loads the shadow after the server is up
                        server.settle(lambda shadow: shadow["loaded"])
                    answers = loadgen.run(
                        loadgen.open_loop(server.port, request, rate, options.seconds, preopen=8)
                    )
                    shadow = server.settle(settled) if key == "on" else None
                finally:
                    server.stop()
                ok = [a.seconds for a in answers if a.status == 200]
                if len(ok) != len(answers):  # said, not hidden: the table's rows count only 200s
                    statuses = sorted({a.status for a in answers})
                    print(f"round {round_number} {key}: {len(answers) - len(ok)} of "
                          f"{len(answers)} not 200 ({statuses})", flush=True)  # fmt: skip
                logged, dropped = 1.0, 0.0
                if shadow is not None and not options.no_log:
                    import pyarrow.parquet as pq

                    rows = sum(pq.read_metadata(p).num_rows for p in log_dir.glob("*.parquet"))
                    logged = rows / shadow["rows"]["sampled"]
                if shadow is not None:
                    dropped = shadow["rows"]["dropped"] / shadow["rows"]["sampled"]
                p50, p99 = float(np.percentile(ok, 50)), float(np.percentile(ok, 99))
                found[key].append((p50, p99, logged, dropped))
                print(f"round {round_number} {key}: p50 {p50 * 1000:.2f} ms, p99 "
                      f"{p99 * 1000:.2f} ms, logged {logged:.2%}, dropped {dropped:.2%}",
                      flush=True)  # fmt: skip
        offer, scoring = offer_cost(champion, challenger)
    base50 = statistics.median(r[0] for r in found["off"])
    base99 = statistics.median(r[1] for r in found["off"])
    print("| setting | p50 ms | p99 ms | p99 / no shadow | sampled rows logged | dropped |")
    print("|---|---|---|---|---|---|")
    shadowed = "--shadow, fraction 1" + ("" if options.no_log else ", --shadow-log")
    for key, label in (("off", "no shadow"), ("on", shadowed)):
        p50 = statistics.median(r[0] for r in found[key])
        p99 = statistics.median(r[1] for r in found[key])
        logged = min(r[2] for r in found[key])
        dropped = max(r[3] for r in found[key])
        print(f"| {label} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {p99 / base99:.3f} | "
              f"{logged:.2%} (lowest round) | {dropped:.2%} (highest) |")  # fmt: skip
    print(f"\n(p50 / no shadow: {statistics.median(r[0] for r in found['on']) / base50:.3f})")
    print(f"in-process, per one-row request: the shadow's offer (sample, pack, one write) "
          f"{offer * 1e6:.1f} us; the champion's own scoring {scoring * 1e6:.1f} us")  # fmt: skip


if __name__ == "__main__":
    main()
