"""The tutorial script's work with plain MLflow defaults: the anchor for bench/train.py.

Same calls as the user's tutorial, with only what current MLflow needs to run:
the tracking URI points at SQLite and the data path is an argument. Its mistakes (target among
the inputs, `long` output) are kept on purpose: this measures the tutorial, not our fix.
Usage: python bench/seed_baseline.py DATA_CSV WORKDIR
"""

import sys
import warnings
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split


def main(data_csv: str, workdir: str) -> None:
    warnings.filterwarnings("ignore")
    np.random.seed(40)
    work = Path(workdir)
    (work / "data").mkdir(parents=True, exist_ok=True)
    data = pd.read_csv(data_csv)
    data.to_csv(work / "data/red-wine-quality.csv", index=False)
    train, test = train_test_split(data)
    train.to_csv(work / "data/train.csv")
    test.to_csv(work / "data/test.csv")
    train_x, test_x = train.drop(["quality"], axis=1), test.drop(["quality"], axis=1)
    train_y, test_y = train[["quality"]], test[["quality"]]

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    exp = mlflow.set_experiment(experiment_name="experiment_signature")
    print("Experiment_id:", exp.experiment_id)
    mlflow.start_run()
    mlflow.set_tags(
        {"engineering": "ML platform", "release.candidate": "RC1", "release.version": "2.0"}
    )
    mlflow.sklearn.autolog(log_input_examples=False, log_model_signatures=False, log_models=False)
    lr = ElasticNet(alpha=0.7, l1_ratio=0.7, random_state=42)
    lr.fit(train_x, train_y)
    pred = lr.predict(test_x)
    rmse = np.sqrt(mean_squared_error(test_y, pred))
    mae = mean_absolute_error(test_y, pred)
    r2 = r2_score(test_y, pred)
    print(f"  RMSE: {rmse}\n  MAE: {mae}\n  R2: {r2}")
    names = [c for c in data.columns]
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", n) for n in names]), outputs=Schema([ColSpec("long")])
    )
    input_example = {n: data[n].to_numpy()[:5] for n in names}
    mlflow.log_artifact(data_csv)
    mlflow.sklearn.log_model(lr, "model", signature=signature, input_example=input_example)
    print("The artifact path is", mlflow.get_artifact_uri())
    mlflow.end_run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
