"""ModelDeployment end to end: the model a TrainingJob registered, served on Ray Serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from sklearn.datasets import load_breast_cancer

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).parents[2]


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def test_serves_the_registered_model_and_refuses_bad_requests(
    resources, mlflow_server: str
) -> None:
    resources.apply(example("trainingjob-xgboost.yaml"))
    job = resources.wait_for_phase("trainingjobs", "churn-xgb", {"Succeeded", "Failed"}, 420)
    assert job["status"]["phase"] == "Succeeded", job["status"]

    resources.apply(example("modeldeployment-ray.yaml"))
    obj = resources.wait_for_phase("modeldeployments", "churn", {"Available", "Failed"}, 300)
    status = obj["status"]
    assert status["phase"] == "Available", status
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert status["traffic"][0]["percent"] == 100

    rows = load_breast_cancer(as_frame=True).frame.drop(columns="target").head(5)
    response = requests.post(
        status["url"], json={"dataframe_records": rows.to_dict(orient="records")}, timeout=30
    )
    assert response.status_code == 200, response.text
    mlflow.set_tracking_uri(mlflow_server)
    direct = mlflow.pyfunc.load_model(job["status"]["model"]["uri"]).predict(rows)
    served = pd.DataFrame(response.json()["predictions"])
    pd.testing.assert_frame_equal(served, direct.reset_index(drop=True), check_dtype=False)

    bad = requests.post(
        status["url"], json={"dataframe_records": [{"mean radius": "large"}]}, timeout=30
    )
    assert 400 <= bad.status_code < 500
    assert "error" in bad.json()
    again = resources.get("modeldeployments", "churn")
    assert again["status"]["phase"] == "Available"
