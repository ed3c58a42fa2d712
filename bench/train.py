"""Cold `winequality train` against the seed's work with plain MLflow defaults, same run.

Each repetition starts fresh processes, alternating the two contenders so drift on the machine
hits both alike; each contender keeps its own working folder and SQLite store (the first,
store-creating repetition of each is a warm-up and not counted). Prints medians and the ratio.
Usage: uv run python bench/train.py [--reps 5] [--data PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "red-wine-quality.csv"


def timed(command: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ours_dir, seed_dir = root / "ours", root / "seed"
    ours_dir.mkdir()
    seed_dir.mkdir()
    winequality = shutil.which("winequality") or str(Path(sys.executable).with_name("winequality"))
    contenders = {
        "seed script, MLflow defaults": (
            [sys.executable, str(HERE / "seed_baseline.py"), str(args.data), str(seed_dir)],
            seed_dir,
        ),
        "winequality train": ([winequality, "train", "--data", str(args.data)], ours_dir),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(args.reps + 1):
        for name, (command, cwd) in contenders.items():
            elapsed = timed(command, cwd)
            if rep:  # repetition 0 creates the SQLite schema: warm-up
                times[name].append(elapsed)
    shutil.rmtree(root, ignore_errors=True)
    anchor = statistics.median(times["seed script, MLflow defaults"])
    print(
        f"cold process, median of {args.reps} alternating repetitions "
        f"(data: {args.data.name}, {os.cpu_count()} cores)"
    )
    print(f"{'contender':32} {'median s':>9} {'min s':>7} {'ratio':>6}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32} {median:9.2f} {min(values):7.2f} {median / anchor:6.2f}")


if __name__ == "__main__":
    main()
