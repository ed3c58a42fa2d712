"""Floors of a `train` run, for bench/train.py.

Default: import MLflow, pandas and scikit-learn, open the SQLite store and set the experiment,
nothing else: what any tracked training process pays before it trains.
`--log-model`: the same, then start a run and log one fitted ElasticNet in MLflow's skops format
with pinned requirements and no input example: what logging a model safely costs in MLflow
(importing skops scans every scikit-learn estimator; MLflow checks the requirements against
the installed packages), with none of winequality's work.
Usage: python bench/train_floor.py WORKDIR [--log-model]
"""

import sys
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas  # noqa: F401
import sklearn.linear_model


def main(workdir: str, log_model: bool) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{Path(workdir) / 'mlflow.db'}")
    mlflow.set_experiment("experiment_signature")
    if not log_model:
        return
    from mlflow import sklearn as mlflow_sklearn

    estimator = sklearn.linear_model.ElasticNet().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    with mlflow.start_run():
        mlflow_sklearn.log_model(
            estimator,
            name="model",
            serialization_format=mlflow_sklearn.SERIALIZATION_FORMAT_SKOPS,
            pip_requirements=[f"{p}=={version(p)}" for p in ("mlflow", "scikit-learn", "skops")],
        )


if __name__ == "__main__":
    main(sys.argv[1], "--log-model" in sys.argv[2:])
