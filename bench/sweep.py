"""Sweep speed and model quality, each against its anchor in the same run.

1. Speed: a 100-trial ElasticNet sweep (5-fold grouped CV, every trial a child run in SQLite)
   against 100 x one seed-style run (bench/seed_baseline.py, timed here once).
2. Quality: the honest (grouped) CV RMSE of the best model of each family, and under random
   folds the MAD (= MAE) of the best family against Cortez et al.'s best for red wine
   (SVM, MAD 0.46).
Usage: uv run python bench/sweep.py [--trials 100] [--family-trials 25] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "winequality-red.csv"
SEED_DATA = HERE.parents[1] / "shared" / "data" / "red-wine-quality.csv"
CORTEZ_SVM_MAD_RED = 0.46


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--family-trials", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.chdir(work)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"

    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(HERE / "seed_baseline.py"), str(SEED_DATA), str(work / "seed")],
        check=True,
        capture_output=True,
    )
    seed_run = time.perf_counter() - start

    from winequality.sweep import SweepConfig, run_sweep

    tracking = f"sqlite:///{work / 'mlflow.db'}"
    storage = f"sqlite:///{work / 'optuna.db'}"
    base = {"data": str(DATA), "tracking_uri": tracking, "storage": storage, "register": False}
    run_sweep(SweepConfig(**base, trials=2, study="warm-up"))  # schema creation, imports
    start = time.perf_counter()
    result = run_sweep(SweepConfig(**base, trials=args.trials, jobs=args.jobs, study="speed"))
    sweep = time.perf_counter() - start
    print(
        f"speed: {args.trials}-trial ElasticNet sweep, 5-fold grouped CV, children in SQLite, "
        f"{args.jobs} jobs, {os.cpu_count()} cores"
    )
    print(f"{'what':44} {'seconds':>9} {'ratio':>8}")
    print(
        f"{f'{args.trials} x one seed-style run (1 timed)':44} {seed_run * args.trials:9.1f} "
        f"{1.0:8.2f}"
    )
    print(
        f"{'winequality sweep (incl. refit + test)':44} {sweep:9.1f} "
        f"{sweep / (seed_run * args.trials):8.4f}  ({seed_run * args.trials / sweep:.0f}x "
        f"faster)"
    )
    print(f"best ElasticNet: CV RMSE {result.best_cv['rmse']:.4f} (grouped), {result.best_params}")
    print()
    print(
        f"quality: best of {args.family_trials} TPE trials per family (ElasticNet: the "
        f"{args.trials} above), 5-fold CV on the 75% training split"
    )
    print(
        f"{'family':24} {'grouped CV RMSE':>16} {'random CV RMSE':>15} {'random CV MAD':>14} "
        f"{'test RMSE':>10}"
    )
    rows = {}
    for family in ("elasticnet", "svr", "random-forest", "extra-trees", "hist-gradient-boosting"):
        trials = args.trials if family == "elasticnet" else args.family_trials
        grouped = (
            result
            if family == "elasticnet"
            else run_sweep(
                SweepConfig(
                    **base, family=family, trials=trials, jobs=args.jobs, study=f"{family}-grouped"
                )
            )
        )
        randomised = run_sweep(
            SweepConfig(
                **base,
                family=family,
                trials=trials,
                jobs=args.jobs,
                protocol="random",
                study=f"{family}-random",
            )
        )
        rows[family] = (
            grouped.best_cv["rmse"],
            randomised.best_cv["rmse"],
            randomised.best_cv["mae"],
            grouped.test_metrics.get("rmse", float("nan")),
        )
        print(
            f"{family:24} {rows[family][0]:16.4f} {rows[family][1]:15.4f} "
            f"{rows[family][2]:14.4f} {rows[family][3]:10.4f}"
        )
    best = min(rows, key=lambda f: rows[f][0])
    best_mad = min(rows.values(), key=lambda r: r[2])[2]
    print(
        f"best family (grouped): {best}, CV RMSE {rows[best][0]:.4f}; lowest random-fold MAD "
        f"{best_mad:.4f} vs Cortez et al. SVM {CORTEZ_SVM_MAD_RED} "
        f"(ratio {best_mad / CORTEZ_SVM_MAD_RED:.2f})"
    )


if __name__ == "__main__":
    main()
