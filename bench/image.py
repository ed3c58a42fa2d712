"""The container image beside a naive one, in the same run: size, start and stop.

Both built with Podman on the same base (--base; default the one deploy/image/base.sh makes
from Debian's packages; python:3.11-slim where a registry is reachable):
- `Containerfile` (its `baked` target, a model exported into it): the serving set only, no
  third-party test suites, stripped libraries, bytecode for what serving imports;
- naive: one stage, the same uv.lock, every extra the CLI needs (`--extra train`), bytecode for
  everything (uv's default in a Dockerfile guide), the same model folder: the image a user gets
  from `COPY . ; uv sync` (this project's image before it was slimmed).
Rows: image size and what it adds to the base (the floor: the base itself); seconds from
`podman run` to the first 200 from /health/ready (median of --runs); seconds from SIGTERM to
exit (drain 0) and the exit code; the server's resident memory once ready.
Usage: uv run python bench/image.py [--base IMAGE] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAIVE = """\
ARG BASE
FROM ${BASE}
ENV UV_PROJECT_ENVIRONMENT=/opt/winequality UV_COMPILE_BYTECODE=1 UV_NO_CACHE=1 \\
    PYTHONDONTWRITEBYTECODE= PATH=/opt/winequality/bin:$PATH
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet uv==0.13.9
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src/ src/
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable --extra train
COPY --from=model . /opt/model/
ENTRYPOINT ["/opt/winequality/bin/winequality", "serve", "--model", "/opt/model", \\
            "--host", "0.0.0.0"]
"""


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"podman {args[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout.strip()


def size(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image)) / 1e6


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_stop(image: str, read_only: bool) -> tuple[float, float, int, float]:
    port = free_port()
    name = f"winequality-bench-{port}"
    options = ["--read-only"] if read_only else []
    started = time.monotonic()
    podman("run", "-d", "--name", name, *options, "-p", f"127.0.0.1:{port}:8080", image,
           "--drain-delay", "0")  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() - started > 120:
                    raise SystemExit(f"{image} not ready in 120 s") from None
                time.sleep(0.02)
        ready = time.monotonic() - started
        rss = podman("exec", name, "sh", "-c", "grep VmRSS /proc/1/status").split()[1]
        stopping = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        podman("wait", name)
        stopped = time.monotonic() - stopping
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name))
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, check=False)
    return ready, stopped, code, int(rss) / 1024


def model_folder(into: Path) -> Path:
    """A model trained on the shipped red wines, exported as `winequality export` does."""
    from winequality.export import export_model
    from winequality.train import TrainConfig, train

    uri = f"sqlite:///{into / 'mlflow.db'}"
    result = train(TrainConfig(tracking_uri=uri, output_dir=None))
    folder = into / "model"
    export_model(result.model_uri, folder, tracking_uri=uri)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="localhost/winequality-base:bookworm")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        folder = model_folder(Path(work))
        naive_file = Path(work) / "Containerfile.naive"
        naive_file.write_text(NAIVE)
        images = {
            "winequality (Containerfile, baked)": ("localhost/winequality-bench:baked",
                ["-f", str(ROOT / "Containerfile"), "--target", "baked"], True),
            "naive: one stage, --extra train": ("localhost/winequality-bench:naive",
                ["-f", str(naive_file)], False),
        }  # fmt: skip
        for tag, args, _ in images.values():
            podman("build", "--build-arg", f"BASE={options.base}", "--build-context",
                   f"model={folder}", "-t", tag, *args, str(ROOT))  # fmt: skip
        base = size(options.base)
        print(f"base {options.base}: {base:,.0f} MB; {options.runs} runs each, medians\n")
        print(
            "| image | size MB | added to the base MB | start to ready s | SIGTERM to exit s "
            "| exit code | RSS when ready MB |"
        )
        print("|---|---|---|---|---|---|---|")
        for label, (tag, _, read_only) in images.items():
            runs = [start_stop(tag, read_only) for _ in range(options.runs)]
            ready = statistics.median(r[0] for r in runs)
            stopped = statistics.median(r[1] for r in runs)
            codes = sorted({r[2] for r in runs})
            rss = statistics.median(r[3] for r in runs)
            print(f"| {label} | {size(tag):,.0f} | {size(tag) - base:,.0f} | {ready:.2f} "
                  f"| {stopped:.2f} | {', '.join(map(str, codes))} | {rss:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
