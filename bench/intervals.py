"""Do the intervals keep their promise? Coverage and width per family and level.

For every family the sweep offers (at the first values of its grid), on the red wines: the
held-out coverage and mean width of its intervals at 0.8, 0.9 and 0.95 on the sweep's own split
(grouped 75/25, seed 40), then the coverage averaged over --resplits re-drawn splits (seeds 0,
1, …): what the guarantee promises is that average, within a point of the level. Calibration
is what `train` and `sweep` do (`intervals.calibrate`: 5 grouped folds of the training rows,
fresh seeds); the floor of the width is what a perfect model would need (0: not reachable; the
best model's RMSE sets it). Then the white wines scored by the red ElasticNet (a real shift):
coverage there is not guaranteed, and the table says how far it falls.
Usage: uv run python bench/intervals.py [--resplits 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from winequality import data, evaluate, intervals, schema  # noqa: E402
from winequality.model import FAMILIES  # noqa: E402

LEVELS = (0.8, 0.9, 0.95)
FEATURES = list(schema.FEATURE_NAMES)


def one_split(family: str, frame, seed: int, test=None):  # type: ignore[no-untyped-def]
    chosen = FAMILIES[family]
    params = {axis: values[0] for axis, values in chosen.grid.items()}
    train, held_out = evaluate.holdout_split(frame, 0.25, seed)
    if test is not None:
        held_out = test
    x, y = train[FEATURES], train[schema.TARGET.name]
    calibrated = intervals.calibrate(
        lambda: chosen.build(params), x, y, LEVELS, seed=seed + intervals.CALIBRATION_SEED_OFFSET
    )
    predicted = chosen.build(params).fit(x, y).predict(held_out[FEATURES])
    actual = held_out[schema.TARGET.name].to_numpy(float)
    found = {}
    for level in LEVELS:
        lower, upper = calibrated.bounds(predicted, level)
        found[level] = (intervals.coverage(actual, lower, upper), float(np.mean(upper - lower)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resplits", type=int, default=20)
    options = parser.parse_args()
    red, white = data.load(wine="red").frame, data.load(wine="white").frame
    print(f"red wines, {options.resplits} re-drawn splits for the averages\n")
    print(
        "| family | level | coverage (seed 40) | width (seed 40) | mean coverage over "
        "re-splits | min .. max |"
    )
    print("|---|---|---|---|---|---|")
    for family in FAMILIES:
        held = one_split(family, red, 40)
        again = [one_split(family, red, seed) for seed in range(options.resplits)]
        for level in LEVELS:
            spread = [run[level][0] for run in again]
            print(
                f"| {family} | {level:g} | {held[level][0]:.3f} | {held[level][1]:.2f} "
                f"| **{np.mean(spread):.3f}** | {min(spread):.3f} .. {max(spread):.3f} |"
            )
    shifted = one_split("elasticnet", red, 40, test=white)
    print("\nwhite wines scored by the red elasticnet (a shift the drift check flags):\n")
    print("| level | coverage | width |")
    print("|---|---|---|")
    for level in LEVELS:
        print(f"| {level:g} | {shifted[level][0]:.3f} | {shifted[level][1]:.2f} |")


if __name__ == "__main__":
    main()
