"""TuningSweep end to end: the example applied as kubectl would, the operator process, real Ray
and MLflow. Budget: the sweep (12 trials, 2 at a time) runs in well under 4 minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from ray.job_submission import JobSubmissionClient

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

EXAMPLE = Path(__file__).parents[2] / "examples" / "tuningsweep-xgboost.yaml"
SWEEP_TIMEOUT = 400


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"].get("conditions", [])}


def test_example_sweep_prunes_finds_a_good_model_and_promotes_it(
    resources, mlflow_server: str, ray_cluster: str
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    name = doc["metadata"]["name"]
    uid = resources.apply(doc)["metadata"]["uid"]

    # While it runs, the status shows the trials as they go.
    resources.wait_for_phase("tuningsweeps", name, {"Running", "Succeeded", "Failed"}, 180)
    deadline = time.monotonic() + SWEEP_TIMEOUT
    live: list[dict[str, Any]] = []
    while (status := resources.get("tuningsweeps", name)["status"])["phase"] == "Running":
        if status.get("progress") and status["progress"]["epoch"] < 12:
            live.append(status)
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert live, "no trial progress was shown while the sweep ran"
    assert {s["progress"]["of"] for s in live} == {12}
    assert any(sum(s["trials"].values()) > 0 for s in live)

    obj = resources.wait_for_phase("tuningsweeps", name, {"Succeeded", "Failed"}, 10)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    trials = status["trials"]
    assert trials["completed"] + trials["pruned"] + trials.get("failed", 0) == 12
    assert trials["pruned"] >= 1, "ASHA pruned nothing"
    assert trials["completed"] >= 1
    assert status["progress"] == {"epoch": 12, "of": 12}
    assert status["metrics"]["test_roc_auc"] >= 0.98
    assert status["keyMetric"].startswith("val_auc=")
    assert conditions(obj)["Complete"]["status"] == "True"
    assert conditions(obj)["GatesPassed"]["status"] == "True"
    best = status["bestTrial"]
    assert set(best["params"]) == set(doc["spec"]["searchSpace"])
    assert best["metrics"]["val_auc"] == pytest.approx(status["metrics"]["best_val_auc"])

    mlflow = MlflowClient(mlflow_server)
    model = status["model"]
    assert model["uri"] == f"models:/churn-model/{model['version']}"
    assert model["alias"] == "champion"
    assert mlflow.get_model_version_by_alias("churn-model", "champion").version == model["version"]

    parent = status["mlflow"]
    children = mlflow.search_runs(
        [parent["experimentId"]], filter_string=f"tags.`mlflow.parentRunId` = '{parent['runId']}'"
    )
    assert sorted(int(c.data.tags["mlplane.trial_number"]) for c in children) == list(range(12))
    by_id = {c.info.run_id: c for c in children}
    assert by_id[best["runId"]].data.tags["mlplane.trial_state"] == "completed"
    states = [c.data.tags["mlplane.trial_state"] for c in children]
    assert states.count("pruned") == trials["pruned"]

    jobs = JobSubmissionClient(ray_cluster).list_jobs()
    assert [j.submission_id for j in jobs if uid in (j.submission_id or "")] == [f"mlplane-{uid}-1"]
