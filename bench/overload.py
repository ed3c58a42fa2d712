"""`winequality serve` past its capacity, and against slow clients: the figures of issue 21.

One worker, default flags, 2,000-row /invocations bodies. Measured in the same run:
- unloaded: one closed-loop client (p50, p99): the anchor;
- sustainable: two closed-loop clients, answers per second;
- overload: an open loop at 4x that rate for --seconds (a process of its own), with probes of
  /health/ready and /metrics every 0.2 s from this process: accepted p50/p99 and their ratio
  to the unloaded p99 (goal <= 2x), shed answers' p50/p99 (goal <= 5 ms), how many were shed,
  every shed a 503 with Retry-After, the slowest probe;
- slow clients: the same command under `ulimit -n 1024` and 2,000 connections that send half a
  header and stop: probes during the flood, and how long until every one was closed (goal:
  within the 5 s header timeout, plus the 0.25 s sweep).
Latencies are the client's, from when each request was due: on this two-core machine the load
generator shares the CPU with the server (server on core 0, generator on core 1 when pinned).
Usage: uv run python bench/overload.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import loadgen  # noqa: E402  (the load generator the tests use)
from tests.conftest import free_port, split_body  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


def start(
    model_uri: str, env: dict[str, str], files: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()

    def limits() -> None:
        if files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {0})

    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("winequality")), "serve", "--model", model_uri,
         "--port", str(port), "--access-log", "off"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=limits,
        start_new_session=True,
    )  # fmt: skip
    for _ in range(600):
        try:
            if (
                loadgen.run(loadgen.probe_loop(port, ["/ping"], 0, lambda: False, rounds=1))[
                    0
                ].status
                == 200
            ):
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def generator(port: int, request: bytes, rate: float, seconds: float) -> list[loadgen.Answer]:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    return loadgen.open_loop_in_process(port, request, rate, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    os.environ.update(env)
    from winequality.data import load
    from winequality.schema import FEATURE_NAMES
    from winequality.train import TrainConfig, train

    os.chdir(work)
    result = train(TrainConfig(tracking_uri=uri, output_dir=None))
    frame = load(None).frame[list(FEATURE_NAMES)]
    rows = frame.sample(2000, replace=True, random_state=0)
    request = loadgen.post_request("/invocations", json.dumps(split_body(rows)).encode())

    process, port = start(result.model_uri, env)
    try:
        loadgen.run(loadgen.closed_loop(port, request, 2, 1))  # warm
        alone = [a.seconds for a in loadgen.run(loadgen.closed_loop(port, request, 1, 5))]
        sustained = loadgen.run(loadgen.closed_loop(port, request, 2, 5))
        rate = sum(a.status == 200 for a in sustained) / 5
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            load_job = pool.submit(generator, port, request, 4 * rate, args.seconds)
            probes = loadgen.run(
                loadgen.probe_loop(port, ["/health/ready", "/metrics"], 0.2, load_job.done)
            )
            answers = load_job.result()
    finally:
        process.terminate()
        process.wait(30)
    accepted = [a.seconds for a in answers if a.status == 200]
    shed = [a for a in answers if a.status == 503]
    others = len(answers) - len(accepted) - len(shed)
    shed_s = [a.seconds for a in shed]
    print(f"2,000-row bodies, one worker, {os.cpu_count()} cores")
    print(f"unloaded (1 client): p50 {pct(alone, 0.5):.2f} ms, p99 {pct(alone, 0.99):.2f} ms")
    print(
        f"sustainable (2 clients): {rate:.0f} answers/s; offered 4x: {4 * rate:.0f} req/s "
        f"for {args.seconds:g} s"
    )
    print(
        f"overload: {len(accepted)} accepted (p50 {pct(accepted, 0.5):.2f} ms, p99 "
        f"{pct(accepted, 0.99):.2f} ms = {pct(accepted, 0.99) / pct(alone, 0.99):.1f}x the "
        f"unloaded p99, goal <= 2x); {len(shed)} shed (p50 {pct(shed_s, 0.5):.2f} ms, "
        f"p99 {pct(shed_s, 0.99):.2f} ms, goal <= 5 ms; all with Retry-After: "
        f"{all(a.retry_after for a in shed)}); {others} other"
    )
    print(
        f"probes during overload: {sum(p.status == 200 for p in probes)}/{len(probes)} answered "
        f"200, slowest {max(p.seconds for p in probes) * 1e3:.0f} ms"
    )

    process, port = start(result.model_uri, env, files=1024)
    try:

        async def flood() -> tuple[list[loadgen.Answer], float, int]:
            opening = asyncio.ensure_future(loadgen.half_headers(port, 2000))
            probes = await loadgen.probe_loop(
                port, ["/health/ready"], 0.1, opening.done, timeout=1.0
            )
            stalled = await opening
            opened = time.monotonic()
            pending = {reader for reader, _ in stalled}
            while pending and time.monotonic() - opened < 15:
                for reader in list(pending):
                    if reader.at_eof():
                        pending.discard(reader)
                await asyncio.sleep(0.05)
                for reader in list(pending):  # (reading notices the close)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.001):
                            await reader.read(100)
            for _, writer in stalled:
                writer.close()
            return probes, time.monotonic() - opened, len(pending)

        probes, closed_after, left = loadgen.run(flood())
    finally:
        process.terminate()
        process.wait(30)
    print(
        f"slow clients (ulimit -n 1024, 2,000 half-header connections): probes "
        f"{sum(p.status == 200 for p in probes)}/{len(probes)} answered 200 within 1 s during "
        f"the flood; every stalled connection closed {closed_after:.1f} s after the last opened "
        f"({left} left open; header timeout 5 s)"
    )


if __name__ == "__main__":
    main()
