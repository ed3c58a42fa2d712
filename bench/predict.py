"""Cold `winequality predict` on big CSV files against `mlflow models predict`, in the same run.

For each size (2M and 10M rows by default: the red data resampled, every feature jittered by
up to 2 %, quality kept), each a fresh process, medians of `--reps`:
- `mlflow models predict -t csv --env-manager local` on the same model and file, the anchor (it
  writes only the predictions, as JSON);
- `winequality predict --output out.csv|out.parquet|out.json` (the inputs and the prediction);
- the floor: a process that imports pyarrow, reads the CSV with Arrow (cells as text) and writes
  it back with a prediction column of zeros (no model, no checks): the I/O no scorer avoids;
- `winequality predict` on 100 rows: the fixed cost (imports, loading the model).
Peak memory is each process's maximum resident set (getrusage of a one-child wrapper).
Goals: CSV -> CSV <= 0.75x MLflow's time at 2M rows; our peak at 10M within 1.2x of 2M.
Usage: uv run python bench/predict.py [--rows 2000000 10000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUTS = ("out.csv", "out.parquet", "out.json")
FLOOR_NAME = "floor: Arrow CSV in, CSV out"

# Runs one command, then prints its wall time and its peak resident set (bytes).
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
seconds = time.perf_counter() - start
print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""

FLOOR = """
import sys
import numpy as np, pyarrow as pa, pyarrow.csv as csv
with open(sys.argv[1]) as f:
    names = f.readline().strip().split(",")
reader = csv.open_csv(
    sys.argv[1],
    read_options=csv.ReadOptions(block_size=4 << 20),
    convert_options=csv.ConvertOptions(column_types={n: pa.string() for n in names}),
)
writer = None
for batch in reader:
    batch = batch.append_column("prediction", pa.array(np.zeros(batch.num_rows)))
    writer = writer or csv.CSVWriter(sys.argv[2], batch.schema)
    writer.write_batch(batch)
writer.close()
"""


def measure(command: list[str], cwd: Path) -> tuple[float, int]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, peak = done.stdout.split()
    return float(seconds), int(peak)


def resampled(rows: int, seed: int = 0, decimals: int | None = None) -> Iterator[Any]:
    """The red data resampled to `rows`, every feature jittered by up to 2 %, quality kept:
    Arrow tables of at most 500,000 rows (bench/spark.py writes them as Parquet)."""
    import numpy as np
    import pyarrow as pa

    from winequality import data, schema

    red = data.load().frame
    features = red[list(schema.FEATURE_NAMES)].to_numpy()
    quality = red[schema.TARGET.name].to_numpy()
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        pick = rng.integers(0, len(red), n)
        jittered = features[pick] * rng.uniform(0.98, 1.02, (n, features.shape[1]))
        if decimals is not None:
            jittered = np.round(jittered, decimals)
        columns = [pa.array(jittered[:, j]) for j in range(features.shape[1])]
        yield pa.table(
            [*columns, pa.array(quality[pick])], names=[*schema.FEATURE_NAMES, "quality"]
        )


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    """The resampled rows as a CSV file (numbers to 5 decimals, as lab results are)."""
    import pyarrow.csv as csv

    writer = None
    for table in resampled(rows, seed, decimals=5):
        writer = writer or csv.CSVWriter(str(path), table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 10_000_000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from train import compile_bytecode  # bench/train.py: the same fair start for every process

    compile_bytecode()
    root = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    bin_dir = Path(sys.executable).parent
    winequality = shutil.which("winequality") or str(bin_dir / "winequality")
    mlflow = shutil.which("mlflow") or str(bin_dir / "mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        subprocess.run([winequality, "train"], cwd=root, check=True, capture_output=True)
        import mlflow as mlflow_module

        (run,) = mlflow_module.search_runs(search_all_experiments=True, output_format="list")
        model = f"runs:/{run.info.run_id}/model"
        small = root / "small.csv"
        make_csv(small, 100)
        fixed = [
            measure(
                [
                    winequality,
                    "predict",
                    "--model",
                    model,
                    "--input",
                    str(small),
                    "--output",
                    "s.csv",
                ],
                root,
            )[0]
            for _ in range(args.reps)
        ]
        print(
            f"`winequality predict` vs `mlflow models predict -t csv --env-manager local`, same "
            f"ElasticNet, cold processes, median of {args.reps}, {os.cpu_count()} cores; fixed "
            f"cost (100 rows): {statistics.median(fixed):.2f} s"
        )
        print(
            f"{'rows':>11} {'command':36} {'seconds':>8} {'x MLflow':>9} {'x floor':>8} "
            f"{'peak MB':>8} {'rows/s':>11}"
        )
        peaks: dict[str, list[int]] = {}
        for rows in args.rows:
            source = root / f"wines-{rows}.csv"
            make_csv(source, rows)
            commands = {
                "mlflow models predict (JSON out)": [
                    mlflow,
                    "models",
                    "predict",
                    "-m",
                    model,
                    "-i",
                    str(source),
                    "-t",
                    "csv",
                    "-o",
                    "mlflow.json",
                    "--env-manager",
                    "local",
                ],
                **{
                    f"winequality predict -> {name}": [
                        winequality,
                        "predict",
                        "--model",
                        model,
                        "--input",
                        str(source),
                        "--output",
                        name,
                    ]
                    for name in OUTPUTS
                },
                FLOOR_NAME: [
                    sys.executable,
                    "-c",
                    FLOOR,
                    str(source),
                    "floor.csv",
                ],
            }
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
            for _ in range(args.reps):  # alternated: drift on the machine hits all alike
                for name, command in commands.items():
                    results[name].append(measure(command, root))
            medians = {
                name: (
                    statistics.median(s for s, _ in runs),
                    max(p for _, p in runs),
                )
                for name, runs in results.items()
            }
            anchor = medians["mlflow models predict (JSON out)"][0]
            floor = medians[FLOOR_NAME][0]
            for name, (seconds, peak) in medians.items():
                peaks.setdefault(name, []).append(peak)
                print(
                    f"{rows:11,} {name:36} {seconds:8.2f} {seconds / anchor:9.2f} "
                    f"{seconds / floor:8.2f} {peak / 1e6:8.0f} {rows / seconds:11,.0f}"
                )
            source.unlink()
        print_peak_ratios(args.rows, peaks, 36)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_peak_ratios(rows: list[int], peaks: dict[str, list[int]], width: int) -> None:
    """Each command's peak memory at the largest size over the smallest (flat = 1.00x)."""
    if len(rows) > 1:
        print(f"peak memory at {rows[-1]:,} rows / at {rows[0]:,} rows:")
        for name, values in peaks.items():
            print(f"  {name:{width}} {values[-1] / values[0]:.2f}x")


if __name__ == "__main__":
    main()
