"""Scoring on Spark: ours against MLflow's own `spark_udf`, and the single-process `predict`.

One run, cold processes, on Parquet files of the red data resampled with 2 % noise (1M and 5M
rows by default), each command a fresh process on `local[*]`:
- `mlflow.pyfunc.spark_udf` on the same model (its signature's type check only: no range
  checks, no quarantine), writing the predictions as Parquet: the anchor;
- `winequality predict --engine spark` (every row checked, predictions/ + quarantine/), and
  again on a copy where 1 % of the rows have an impossible pH (a clean input takes one pass; a
  second pass, checking only, writes the quarantine);
- `winequality predict` in one process (streaming), Parquet to Parquet.
Rows/s and the peak resident memory of the largest process (the driver's JVM, which in local
mode also hosts the executors; the Python driver stays small because nothing is collected).
Goal: ours >= 75 % of the plain UDF's rows/s; memory flat from 1M to 5M rows.
Usage: uv run --extra spark python bench/spark.py [--rows 1000000 5000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIRTY = "  the same, 1 % of rows with a bad cell"

PLAIN_UDF = """
import sys
import mlflow
from pyspark.sql import SparkSession
model, source, target = sys.argv[1:4]
spark = SparkSession.builder.master("local[*]").getOrCreate()
frame = spark.read.parquet(source)
features = [c for c in frame.columns if c != "quality"]
predict = mlflow.pyfunc.spark_udf(spark, model, result_type="double", env_manager="local")
frame.withColumn("prediction", predict(*features)).write.parquet(target)
spark.stop()
"""


def make_parquet(path: Path, rows: int, bad_share: float = 0.0) -> None:
    """The resampled rows; with `bad_share`, that share of them has an impossible pH (15)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from predict import resampled  # bench/predict.py: the same rows as its CSV files

    rng = np.random.default_rng(1)
    writer = None
    for table in resampled(rows):
        if bad_share:
            ph = table.column("pH").to_numpy().copy()
            ph[rng.random(len(ph)) < bad_share] = 15.0
            table = table.set_column(table.schema.get_field_index("pH"), "pH", pa.array(ph))
        writer = writer or pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from predict import measure, print_peak_ratios  # bench/predict.py: the same table parts
    from train import compile_bytecode

    compile_bytecode()
    root = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    winequality = shutil.which("winequality") or str(Path(sys.executable).with_name("winequality"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the UDF's workers need this venv too
    try:
        subprocess.run([winequality, "train"], cwd=root, check=True, capture_output=True)
        import mlflow

        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        model = f"runs:/{run.info.run_id}/model"
        print(
            f"Spark local[*] on {os.cpu_count()} cores, cold processes, Parquet in and out, "
            f"the same ElasticNet"
        )
        print(
            f"{'rows':>10} {'command':46} {'seconds':>8} {'rows/s':>10} {'x UDF':>6} {'peak MB':>8}"
        )
        peaks: dict[str, list[int]] = {}
        for rows in args.rows:
            source = root / f"wines-{rows}.parquet"
            make_parquet(source, rows)
            commands = {
                "mlflow.pyfunc.spark_udf (no checks)": [
                    sys.executable, "-c", PLAIN_UDF, model, str(source), str(root / f"udf-{rows}"),
                ],
                "winequality predict --engine spark": [
                    winequality, "predict", "--engine", "spark", "--model", model,
                    "--input", str(source), "--output", str(root / f"ours-{rows}"),
                ],
                "winequality predict (one process)": [
                    winequality, "predict", "--model", model, "--input", str(source),
                    "--output", str(root / f"single-{rows}.parquet"),
                ],
            }  # fmt: skip
            # the second pass: it runs only when some rows fail the check
            dirty = root / f"wines-{rows}-dirty.parquet"
            make_parquet(dirty, rows, bad_share=0.01)
            commands[DIRTY] = [
                winequality, "predict", "--engine", "spark", "--model", model,
                "--input", str(dirty), "--output", str(root / f"dirty-{rows}"),
            ]  # fmt: skip
            order = [*list(commands)[:2], DIRTY, *list(commands)[2:-1]]
            commands = {name: commands[name] for name in order}
            results = {name: measure(command, root) for name, command in commands.items()}
            anchor = rows / results["mlflow.pyfunc.spark_udf (no checks)"][0]
            for name, (seconds, peak) in results.items():
                if name != DIRTY:
                    peaks.setdefault(name, []).append(peak)
                rate = rows / seconds
                print(
                    f"{rows:10,} {name:46} {seconds:8.2f} {rate:10,.0f} {rate / anchor:6.2f} "
                    f"{peak / 1e6:8.0f}"
                )
            for parquet in root.glob("wines-*.parquet"):
                parquet.unlink()
        print_peak_ratios(args.rows, peaks, 46)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
