"""`winequality serve` past its capacity and against slow clients, beside uvicorn's own
`--limit-concurrency` on the same app, in the same run.

Two servers of the same model, one worker each, 2,000-row /invocations bodies:
- `winequality serve` as it starts by default (its admission gate and connection guard);
- the same app under plain `uvicorn --limit-concurrency 64` (our gate opened wide, no guard):
  what a user gets from uvicorn's one knob, which counts connections and probes as load.
For each: unloaded (one closed-loop client: p50, p99, the anchor of the goal), sustainable (two
closed-loop clients, answers a second), then an open loop at 4x that rate for --seconds, in a
process of its own (on the other core when there are two), while this process probes
/health/ready and /metrics every 0.2 s on new connections: accepted p50/p99 and their ratio to
the unloaded p99 (goal <= 2x), shed answers' p50/p99 (goal <= 5 ms), how many were shed and
whether each carried Retry-After, failures, the slowest probe. Then slow clients: the server
under `ulimit -n 1024`, 2,000 connections sending half a header and stopping: probes (1 s
timeout) during the flood, and when every stalled connection had been closed.
Latencies are the client's, from when each request was due. The server runs on core 0.
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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import loadgen  # noqa: E402  (the load generator the tests use)
from tests.conftest import free_port, split_body  # noqa: E402

OURS = "winequality serve (defaults)"
UVICORN = "uvicorn --limit-concurrency 64, same app"
LIMIT = 64
PREOPEN = 100  # the generator's connections opened before the load, as wrk's are
# the same app, our gate opened wide and without our protocol, under uvicorn's own limit
UVICORN_SCRIPT = """
import sys, uvicorn
from winequality.scoring import load_scorer
from winequality.serving import AdmissionLimits, create_app
uri, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wide = AdmissionLimits(max_inflight=1_000_000, max_queue_wait=3600.0, request_timeout=0)
app = create_app(load_scorer(uri), model_uri=uri, refresh=0, admission=wide)
uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="critical",
            access_log=False, limit_concurrency=limit)
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


def commands(model_uri: str) -> dict[str, Callable[[int], list[str]]]:
    winequality = str(Path(sys.executable).with_name("winequality"))
    return {
        OURS: lambda port: [winequality, "serve", "--model", model_uri, "--port", str(port),
                            "--access-log", "off"],
        UVICORN: lambda port: [sys.executable, "-c", UVICORN_SCRIPT, model_uri, str(port),
                               str(LIMIT)],
    }  # fmt: skip


def start(command: list[str], port: int, files: int | None = None) -> subprocess.Popen[bytes]:
    def limits() -> None:
        if files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {0})

    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=limits,
        start_new_session=True,
    )
    for _ in range(600):
        ping = loadgen.probe_loop(port, ["/ping"], 0, lambda: False, rounds=1, timeout=1)
        if loadgen.run(ping)[0].status == 200:
            return process
        if process.poll() is not None:
            raise SystemExit(f"{command[:3]} exited with {process.returncode}")
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def generator(port: int, request: bytes, rate: float, seconds: float) -> list[loadgen.Answer]:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    return loadgen.open_loop_in_process(port, request, rate, seconds, PREOPEN)


def overload(command: list[str], port: int, request: bytes, seconds: float) -> dict[str, Any]:
    process = start(command, port)
    try:
        loadgen.run(loadgen.closed_loop(port, request, 2, 1))  # warm
        alone = [a.seconds for a in loadgen.run(loadgen.closed_loop(port, request, 1, 5))]
        sustained = loadgen.run(loadgen.closed_loop(port, request, 2, 5))
        rate = sum(a.status == 200 for a in sustained) / 5
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            job = pool.submit(generator, port, request, 4 * rate, seconds)
            paths = ["/health/ready", "/metrics"]
            probes = loadgen.run(loadgen.probe_loop(port, paths, 0.2, job.done))
            answers = job.result()
    finally:
        stop(process)
    accepted = [a.seconds for a in answers if a.status == 200]
    shed = [a for a in answers if a.status == 503]
    return {
        "alone_p50": pct(alone, 0.5),
        "alone_p99": pct(alone, 0.99),
        "rate": rate,
        "accepted": len(accepted),
        "ok_p50": pct(accepted, 0.5),
        "ok_p99": pct(accepted, 0.99),
        "shed": len(shed),
        "shed_p50": pct([a.seconds for a in shed], 0.5),
        "shed_p99": pct([a.seconds for a in shed], 0.99),
        "retry_after": sum(a.retry_after is not None for a in shed),
        "other": len(answers) - len(accepted) - len(shed),
        "probes_ok": sum(p.status == 200 for p in probes),
        "probes": len(probes),
        "probe_max": max(p.seconds for p in probes) * 1e3,
    }


def slow_clients(command: list[str], port: int) -> dict[str, Any]:
    process = start(command, port, files=1024)

    async def flood() -> dict[str, Any]:
        opening = asyncio.ensure_future(loadgen.half_headers(port, 2000))
        probes = await loadgen.probe_loop(port, ["/health/ready"], 0.1, opening.done, timeout=1.0)
        stalled = await opening
        opened = time.monotonic()
        after = await loadgen.probe_loop(
            port, ["/health/ready"], 0.1, lambda: False, timeout=1.0, rounds=10
        )
        pending = {reader for reader, _ in stalled}
        while pending and time.monotonic() - opened < 15:
            for reader in list(pending):
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(0.001):
                        await reader.read(100)
                if reader.at_eof():
                    pending.discard(reader)
            await asyncio.sleep(0.05)
        closed_after = time.monotonic() - opened
        for _, writer in stalled:
            writer.close()
        return {
            "connected": len(stalled),
            "probes_ok": sum(p.status == 200 for p in probes + after),
            "probes": len(probes) + len(after),
            "left_open": len(pending),
            "closed_after": closed_after,
        }

    try:
        return loadgen.run(flood())
    finally:
        stop(process)


def report(model_uri: str, seconds: float) -> None:
    """Both servers, overloaded then flooded with stalled connections: the table."""
    from winequality.data import load
    from winequality.schema import FEATURE_NAMES

    frame = load(None).frame[list(FEATURE_NAMES)]
    rows = frame.sample(2000, replace=True, random_state=0)
    request = loadgen.post_request("/invocations", json.dumps(split_body(rows)).encode())
    loaded, flooded = {}, {}
    for name, command in commands(model_uri).items():
        port = free_port()
        loaded[name] = overload(command(port), port, request, seconds)
        flooded[name] = slow_clients(command(port), port)
    print(
        f"overload: 2,000-row bodies, one worker on core 0, an open loop at 4x the rate two "
        f"closed-loop clients sustain, {seconds:g} s, probes every 0.2 s ({os.cpu_count()} cores)"
    )
    print(
        f"{'server':42} {'alone p99':>9} {'4x req/s':>8} {'ok':>6} {'ok p50':>7} {'ok p99':>8} "
        f"{'/alone':>6} {'shed':>6} {'shed p50':>8} {'shed p99':>8} {'R-A':>6} {'fail':>5} "
        f"{'probes':>7} {'slowest':>8}"
    )
    for name, r in loaded.items():
        print(
            f"{name:42} {r['alone_p99']:9.2f} {4 * r['rate']:8.0f} {r['accepted']:6d} "
            f"{r['ok_p50']:7.2f} {r['ok_p99']:8.1f} {r['ok_p99'] / r['alone_p99']:6.1f} "
            f"{r['shed']:6d} {r['shed_p50']:8.2f} {r['shed_p99']:8.1f} {r['retry_after']:6d} "
            f"{r['other']:5d} {r['probes_ok']:3d}/{r['probes']:<3d} {r['probe_max']:6.0f}ms"
        )
    print("goals (ours): ok p99 <= 2x alone p99; shed answers <= 5 ms; every probe 200")
    print("slow clients: ulimit -n 1024, 2,000 connections sending half a header, then nothing")
    for name, r in flooded.items():
        closed = (
            f"all closed {r['closed_after']:.1f} s after the last opened"
            if not r["left_open"]
            else f"{r['left_open']} still open {r['closed_after']:.0f} s after"
        )
        print(
            f"{name:42} {r['connected']} connected; probes {r['probes_ok']}/{r['probes']} "
            f"answered within 1 s; {closed}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from winequality.train import TrainConfig, train

    os.chdir(work)
    result = train(TrainConfig(tracking_uri=uri, output_dir=None))
    report(result.model_uri, args.seconds)


if __name__ == "__main__":
    main()
