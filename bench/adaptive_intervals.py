"""Are adaptive intervals worth it? Constant width against normalized residuals, per family.

The intervals every model carries are constant-width: the prediction ± a conformal quantile
of absolute out-of-fold residuals (`intervals.calibrate`). The adaptive alternative tried here
is the normalized-residual score: a second, small model sigma(x) learns the size of the
residual from the features, the score is |residual| / sigma(x), and the interval is
prediction ± quantile · sigma(x), wider where the model errs more. sigma is cross-fitted on the
same grouped folds as the residuals (sigma never saw the residual it scales), then refitted on
all of them to serve. Two sigma models: a ridge regression on standardised features (one dot
product to serve) and a small gradient-boosted tree model (depth 3, 100 trees).

Paired: both methods share the folds, the out-of-fold residuals, the refit model and the
splits. The splits are the benchmark's own (grouped 75/25 re-draws, seeds 0-19), never the
sweep's held-out split (seed 40): the choice is made here, not on the rows that test it.
Printed per family and level: mean coverage, mean width and the width ratio to constant, and
coverage of the rare grades (3, 4 and 8: 10 % of the wines) at 0.9; then what sigma costs per
one-row request, beside the model's own prediction.
Usage: uv run python bench/adaptive_intervals.py [--resplits 20]
"""

from __future__ import annotations

import argparse
import sys
import timeit
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from winequality import data, evaluate, intervals, schema  # noqa: E402
from winequality.model import FAMILIES  # noqa: E402

LEVELS = (0.8, 0.9, 0.95)
FEATURES = list(schema.FEATURE_NAMES)
RARE = (3, 4, 8)
FLOOR = 0.2  # sigma is kept above this share of the mean absolute residual: never a zero width


def sigma_models():  # type: ignore[no-untyped-def]
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "ridge": lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        "hgb": lambda: HistGradientBoostingRegressor(
            max_depth=3, max_iter=100, learning_rate=0.05, random_state=0
        ),
    }


def one_split(family: str, frame, seed: int):  # type: ignore[no-untyped-def]
    chosen = FAMILIES[family]
    params = {axis: values[0] for axis, values in chosen.grid.items()}
    train, held_out = evaluate.holdout_split(frame, 0.25, seed)
    x = train[FEATURES].to_numpy(np.float64)
    y = train[schema.TARGET.name].to_numpy(np.float64)
    xt = held_out[FEATURES].to_numpy(np.float64)
    actual = held_out[schema.TARGET.name].to_numpy(np.float64)
    rare = np.isin(actual, RARE)
    folds = evaluate.make_folds(
        train[FEATURES], "grouped", folds=5, seed=seed + intervals.CALIBRATION_SEED_OFFSET
    )
    residual = np.abs(y - intervals.out_of_fold(lambda: chosen.build(params), x, y, folds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = chosen.build(params).fit(x, y).predict(xt)
    floor = FLOOR * residual.mean()
    found: dict[str, dict[float, tuple[float, float, float]]] = {}

    def measure(method: str, scores: np.ndarray, scale: np.ndarray) -> None:
        found[method] = {}
        for level in LEVELS:
            half = intervals.half_width(scores, level) * scale
            inside = (predicted - half <= actual) & (actual <= predicted + half)
            found[method][level] = (inside.mean(), 2 * half.mean(), inside[rare].mean())

    measure("constant", residual, np.ones(len(xt)))
    for name, make_sigma in sigma_models().items():
        sigma_oof = np.empty(len(y))
        for fit_rows, left_out in folds:
            sigma = make_sigma().fit(x[fit_rows], residual[fit_rows])
            sigma_oof[left_out] = sigma.predict(x[left_out])
        sigma_test = make_sigma().fit(x, residual).predict(xt)
        scores = residual / np.maximum(sigma_oof, floor)
        measure(name, scores, np.maximum(sigma_test, floor))
    return found


def serving_cost(frame) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Microseconds per one-row predict: sigma's and, beside it, the ElasticNet model's."""
    x = frame[FEATURES].to_numpy(np.float64)
    y = frame[schema.TARGET.name].to_numpy(np.float64)
    one = x[:1]
    fitted = {name: make().fit(x, np.abs(y - y.mean())) for name, make in sigma_models().items()}
    elasticnet = FAMILIES["elasticnet"]
    fitted["model (elasticnet)"] = elasticnet.build(
        {axis: values[0] for axis, values in elasticnet.grid.items()}
    ).fit(x, y)
    cost = {}
    for name, estimator in fitted.items():
        runs = timeit.repeat(lambda e=estimator: e.predict(one), number=2000, repeat=5)
        cost[name] = min(runs) / 2000 * 1e6
    return cost


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resplits", type=int, default=20)
    options = parser.parse_args()
    red = data.load(wine="red").frame
    print(f"red wines, {options.resplits} re-drawn grouped splits (seeds 0-{options.resplits - 1})")
    print("mean over the splits: coverage / mean width (ratio to constant) / rare-grade coverage\n")
    print("| family | level | constant | normalized, ridge sigma | normalized, hgb sigma |")
    print("|---|---|---|---|---|")
    for family in FAMILIES:
        runs = [one_split(family, red, seed) for seed in range(options.resplits)]
        means: dict[str, dict[float, np.ndarray]] = defaultdict(dict)
        for method in runs[0]:
            for level in LEVELS:
                means[method][level] = np.mean([run[method][level] for run in runs], axis=0)
        for level in LEVELS:
            base = means["constant"][level][1]
            cells = []
            for method in ("constant", "ridge", "hgb"):
                cover, width, rare = means[method][level]
                ratio = "" if method == "constant" else f" ({width / base:.2f}x)"
                shown = f" / rare {rare:.2f}" if level == 0.9 else ""
                cells.append(f"{cover:.3f} / {width:.2f}{ratio}{shown}")
            print(f"| {family} | {level:g} | " + " | ".join(cells) + " |")
        sys.stdout.flush()
    print("\none-row predict, microseconds (in-process, best of 5 x 2000):\n")
    print("| estimator | us per call |")
    print("|---|---|")
    for name, micro in serving_cost(red).items():
        print(f"| {name} | {micro:.0f} |")


if __name__ == "__main__":
    main()
