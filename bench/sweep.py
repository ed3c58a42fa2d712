"""Sweep speed (cold CLI processes, end to end) and model quality, each against its anchor.

1. Speed, the headline: `winequality sweep --trials 100` exactly as a user runs it (a fresh
   process, default stores in a fresh folder, registration on), with `--jobs 1` and `--jobs 2`,
   on the default journal storage and on SQLite; against
   - the floor: the same 500 cross-validation fits (100 trials x 5 grouped folds, the same
     parameters) with no tracking, in one process;
   - 100 x one tutorial-style run (bench/seed_baseline.py, one timed, multiplied);
   and the serial floor: cold processes that only import what a sweep needs, and that also
   open a new mlflow.db, with the best `--jobs 2` speed-up they leave (Amdahl).
2. Quality: the best of N TPE trials per family, CV RMSE under grouped and random folds on the
   75 % training split, and RMSE on held-out rows that share no wine with the training rows.
Usage: uv run python bench/sweep.py [--trials 100] [--family-trials 25] [--skip-quality]
       [--skip-speed] [--families elasticnet svr ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORTEZ_SVM_MAD_RED = 0.46
FAMILIES = ("elasticnet", "svr", "random-forest", "extra-trees", "hist-gradient-boosting")


def winequality() -> str:
    return shutil.which("winequality") or str(Path(sys.executable).with_name("winequality"))


def cold_sweep(root: Path, name: str, *flags: str) -> tuple[float, Path]:
    """One `winequality sweep` in a fresh folder (default stores there); seconds, folder."""
    folder = root / name
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    start = time.perf_counter()
    subprocess.run(
        [winequality(), "sweep", *flags],
        cwd=folder,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, folder


def floor(params: list[dict[str, float]]) -> float:
    """The same CV fits with no tracking at all: the work a sweep cannot avoid."""
    from winequality import data, evaluate, model, schema

    frame = data.load().frame
    train, _ = evaluate.holdout_split(frame)
    folds = evaluate.make_folds(train, "grouped", folds=5)
    x = train[list(schema.FEATURE_NAMES)].to_numpy()
    y = train[schema.TARGET.name].to_numpy()
    family = model.family("elasticnet")
    start = time.perf_counter()
    for p in params:
        evaluate.cross_validate(lambda p=p: family.build(p), x, y, folds)
    return time.perf_counter() - start


def trial_params(folder: Path, storage: str, study: str) -> list[dict[str, float]]:
    import optuna

    from winequality.sweeping.studies import open_storage

    loaded = optuna.load_study(study_name=study, storage=open_storage(str(folder / storage)))
    return [t.params for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]


IMPORTS = "import winequality.cli, winequality.sweeping, sklearn.linear_model, optuna, mlflow"
NEW_STORE = IMPORTS + "; from winequality import tracking; tracking.connect('sqlite:///mlflow.db')"


def serial_floor(root: Path, code: str, reps: int = 3) -> float:
    """Median seconds of a cold process that only runs `code` (in a fresh folder each time):
    the part of a sweep that no second worker can share."""
    times = []
    for rep in range(reps):
        folder = root / f"serial-{abs(hash(code))}-{rep}"
        folder.mkdir()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=folder, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2]


def tutorial_run(root: Path) -> float:
    from train import tutorial_csv  # bench/train.py

    data = tutorial_csv(root)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(HERE / "seed_baseline.py"), str(data), str(root / "tutorial")],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def speed(root: Path, trials: int) -> None:
    common = ["--trials", str(trials)]
    runs = {
        "--jobs 1 (journal)": cold_sweep(root, "j1", *common, "--jobs", "1"),
        "--jobs 2 (journal)": cold_sweep(root, "j2", *common, "--jobs", "2"),
        "--jobs 1 (SQLite)": cold_sweep(
            root, "s1", *common, "--jobs", "1", "--storage", "sqlite:///optuna.db"
        ),
        "--jobs 2 (SQLite)": cold_sweep(
            root, "s2", *common, "--jobs", "2", "--storage", "sqlite:///optuna.db"
        ),
    }
    params = trial_params(runs["--jobs 1 (journal)"][1], "optuna.journal", "elasticnet-grouped")
    floor_seconds = floor(params)
    imports = serial_floor(root, IMPORTS)
    serial = serial_floor(root, NEW_STORE)
    tutorial = tutorial_run(root) * trials
    one = runs["--jobs 1 (journal)"][0]
    print(
        f"speed: `winequality sweep --trials {trials}` (ElasticNet, 5-fold grouped CV, every trial "
        f"a child run, registration on), cold process, {os.cpu_count()} cores"
    )
    print(f"{'what':44} {'seconds':>8} {'x floor':>8} {'x jobs 1':>9} {'x tutorial':>11}")
    rows = [(f"{trials} x one tutorial-style run (1 timed)", tutorial)]
    rows += [(f"winequality sweep {name}", seconds) for name, (seconds, _) in runs.items()]
    rows.append((f"floor: the same {len(params) * 5} CV fits, no tracking", floor_seconds))
    rows.append(("serial: the imports, cold process", imports))
    rows.append(("serial: the imports + opening a new mlflow.db", serial))
    for name, seconds in rows:
        print(
            f"{name:44} {seconds:8.2f} {seconds / floor_seconds:8.1f} {seconds / one:9.2f} "
            f"{seconds / tutorial:11.4f}"
        )
    print(f"--jobs 2 is {one / runs['--jobs 2 (journal)'][0]:.2f}x faster than --jobs 1")
    # Amdahl, generously: only the imports and the new store count as serial (the final step,
    # also serial, is counted as if two cores could share it)
    best = one / (serial + (one - serial) / 2)
    print(
        f"at best {best:.2f}x with two cores: {serial:.2f} s of the {one:.2f} s are serial "
        f"before the first trial (Amdahl)"
    )


def quality(root: Path, trials: int, family_trials: int, families: list[str]) -> None:
    from winequality.sweeping import SweepConfig, run_sweep

    store = f"sqlite:///{root / 'quality.db'}"
    print()
    print(
        f"quality: best of {family_trials} TPE trials per family (ElasticNet: {trials}), 5-fold "
        f"CV on the 75% training split; test = held-out rows sharing no wine with training"
    )
    print(
        f"{'family':24} {'grouped CV RMSE':>16} {'random CV RMSE':>15} {'random CV MAD':>14} "
        f"{'test RMSE':>10}"
    )
    best = {}
    for family in families:
        n = trials if family == "elasticnet" else family_trials
        base = {
            "family": family,
            "trials": n,
            "jobs": 2,
            "tracking_uri": store,
            "storage": str(root / "quality.journal"),
            "register": False,
        }
        grouped = run_sweep(SweepConfig(**base, study=f"{family}-grouped"))
        randomised = run_sweep(SweepConfig(**base, protocol="random", study=f"{family}-random"))
        assert grouped.final is not None
        row = (
            grouped.best_cv["rmse"],
            randomised.best_cv["rmse"],
            randomised.best_cv["mae"],
            grouped.final.test_metrics["rmse"],
        )
        best[family] = row
        print(f"{family:24} {row[0]:16.4f} {row[1]:15.4f} {row[2]:14.4f} {row[3]:10.4f}")
    top = min(best, key=lambda f: best[f][0])
    mad = min(r[2] for r in best.values())
    print(
        f"best family (grouped): {top}, CV RMSE {best[top][0]:.4f}; lowest random-fold MAD "
        f"{mad:.4f} vs Cortez et al. SVM {CORTEZ_SVM_MAD_RED} "
        f"(ratio {mad / CORTEZ_SVM_MAD_RED:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--family-trials", type=int, default=25)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from train import compile_bytecode  # bench/train.py: the same fair start for every process

    compile_bytecode()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as the CLI does
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.chdir(root)  # MLflow puts artifacts (./mlruns) beside the current folder
    try:
        if not args.skip_speed:
            speed(root, args.trials)
        if not args.skip_quality:
            quality(root, args.trials, args.family_trials, args.families)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
