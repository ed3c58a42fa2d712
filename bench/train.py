"""Cold `winequality train` against the tutorial script and the floor, in the same run.

Three contenders, each a fresh process per repetition, alternated so that drift on the machine
hits all alike, each in its own working folder with its own SQLite store (the first,
store-creating repetition of each is a warm-up and not counted):
- the tutorial script's calls with plain MLflow defaults (bench/seed_baseline.py), the anchor;
- `winequality train` as a user runs it (no flags: the red data shipped with the package);
- the floor (bench/train_floor.py): import MLflow, pandas and scikit-learn, open the SQLite
  store, set the experiment, nothing else;
- the floor with a model (bench/train_floor.py --log-model): the same, plus one run that logs a
  fitted ElasticNet in MLflow's skops format, which no safely logged model can avoid.
Prints medians and ratios to the tutorial script and to each floor.
Usage: uv run python bench/train.py [--reps 5]
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
TUTORIAL, OURS = "tutorial script, MLflow defaults", "winequality train"
FLOOR, MODEL_FLOOR = "floor: imports + store", "floor + one skops model logged"


def timed(command: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def tutorial_csv(folder: Path) -> Path:
    """The tutorial's copy of the red data: ','-separated, features written as floats."""
    import pandas as pd

    from winequality.data import embedded_bytes, read_table

    frame = read_table(embedded_bytes("red"), "red").frame
    frame = frame.astype({c: float for c in frame.columns if c != "quality"})
    path = folder / "red-wine-quality.csv"
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def compile_bytecode() -> None:
    """Compile every installed module first, as pip and `uv sync --compile-bytecode` do: with
    PYTHONDONTWRITEBYTECODE set, each cold process would otherwise compile MLflow afresh."""
    import compileall
    import sysconfig

    for key in ("purelib", "platlib"):
        compileall.compile_dir(sysconfig.get_paths()[key], quiet=2, workers=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    compile_bytecode()
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    folders = {name: root / str(i) for i, name in enumerate((TUTORIAL, OURS, FLOOR, MODEL_FLOOR))}
    for folder in folders.values():
        folder.mkdir()
    data = tutorial_csv(root)
    winequality = shutil.which("winequality") or str(Path(sys.executable).with_name("winequality"))
    commands = {
        TUTORIAL: [
            sys.executable,
            str(HERE / "seed_baseline.py"),
            str(data),
            str(folders[TUTORIAL]),
        ],
        OURS: [winequality, "train"],
        FLOOR: [sys.executable, str(HERE / "train_floor.py"), str(folders[FLOOR])],
        MODEL_FLOOR: [
            sys.executable,
            str(HERE / "train_floor.py"),
            str(folders[MODEL_FLOOR]),
            "--log-model",
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for rep in range(args.reps + 1):
        for name, command in commands.items():
            elapsed = timed(command, folders[name])
            if rep:  # repetition 0 creates the SQLite schema: warm-up
                times[name].append(elapsed)
    shutil.rmtree(root, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"cold process, median of {args.reps} alternating repetitions "
        f"(red wine data, {os.cpu_count()} cores)"
    )
    print(
        f"{'contender':34} {'median s':>9} {'min s':>7} {'x tutorial':>11} {'x floor':>8} "
        f"{'x floor+model':>14}"
    )
    for name, values in times.items():
        print(
            f"{name:34} {medians[name]:9.2f} {min(values):7.2f} "
            f"{medians[name] / medians[TUTORIAL]:11.2f} {medians[name] / medians[FLOOR]:8.2f} "
            f"{medians[name] / medians[MODEL_FLOOR]:14.2f}"
        )


if __name__ == "__main__":
    main()
