"""TrainingJob end to end: kubectl-style objects, the operator process, real Ray and MLflow."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from mlflow import MlflowClient
from ray.job_submission import JobSubmissionClient

from tests.conftest import fresh_namespace
from tests.e2e.conftest import OperatorProcess, Resources

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).parents[2]
TRAINING_TIMEOUT = 420


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"].get("conditions", [])}


def submissions(ray_cluster: str, uid: str) -> list[str]:
    jobs = JobSubmissionClient(ray_cluster).list_jobs()
    return sorted(
        j.submission_id for j in jobs if (j.submission_id or "").startswith(f"mlplane-{uid}")
    )


def event_reasons(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [e.reason for e in sorted(events.items, key=lambda e: e.metadata.creation_timestamp)]


def _broken_job() -> dict[str, Any]:
    doc = example("trainingjob-custom.yaml")
    doc["metadata"]["name"] = "broken"
    doc["spec"]["model"]["entrypoint"] = "failing_train:train_loop_per_worker"
    doc["spec"]["runtimeEnv"] = {"workingDir": str(Path(__file__).parent / "usercode")}
    doc["spec"]["retries"] = 1
    return doc


def _strict_gate_job() -> dict[str, Any]:
    doc = example("trainingjob-xgboost.yaml")
    doc["metadata"]["name"] = "strict-gate"
    doc["spec"]["tracking"]["registerAs"] = "strict-gate-model"
    doc["spec"]["gates"] = {"roc_auc": ">= 0.9999", "accuracy": ">= 0.5"}
    return doc


@pytest.fixture(scope="module")
def launched(
    k8s_api: client.ApiClient, crds: list[str], operator: OperatorProcess
) -> Iterator[Resources]:
    """The jobs that only need to finish, applied together when the module starts: the operator
    and Ray run them side by side, and each test waits for its own (as in a team's namespace)."""
    with fresh_namespace(k8s_api, "test-trainingjob-examples") as namespace:
        resources = Resources(k8s_api, namespace, operator)
        for doc in (
            example("trainingjob-xgboost.yaml"),
            example("trainingjob-torch.yaml"),
            example("trainingjob-custom.yaml"),
            _broken_job(),
            _strict_gate_job(),
        ):
            resources.apply(doc)
        yield resources


def test_xgboost_example_trains_registers_and_reports(
    launched: Resources, mlflow_server: str, ray_cluster: str, k8s_api: client.ApiClient
) -> None:
    obj = launched.wait_for_phase(
        "trainingjobs", "churn-xgb", {"Succeeded", "Failed"}, TRAINING_TIMEOUT
    )
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["metrics"]["test_roc_auc"] >= 0.97
    assert status["keyMetric"].startswith("test_roc_auc=")
    assert conditions(obj)["Complete"]["status"] == "True"
    assert conditions(obj)["GatesPassed"]["status"] == "True"
    assert status["observedGeneration"] == 1
    assert status["attempts"] == 1
    assert status["progress"]["epoch"] > 0
    uid = obj["metadata"]["uid"]
    assert status["ray"]["submissionId"] == f"mlplane-{uid}-1"
    assert submissions(ray_cluster, uid) == [f"mlplane-{uid}-1"]

    mlflow = MlflowClient(mlflow_server)
    model = status["model"]
    assert model["uri"] == f"models:/churn-model/{model['version']}"
    assert mlflow.get_model_version_by_alias("churn-model", "candidate").version == model["version"]
    run = mlflow.get_run(status["mlflow"]["runId"])
    assert run.data.tags["mlplane.uid"] == uid
    assert run.data.tags["mlplane.dataset_uri"] == "sklearn://breast_cancer"
    assert status["mlflow"]["url"].startswith(mlflow_server)

    reasons = event_reasons(k8s_api, launched.namespace, "churn-xgb")
    assert {"Launched", "Running", "Succeeded"} <= set(reasons), reasons
    # kopf's bookkeeping stays in status: nothing for GitOps tools to see as drift; and no copy
    # of the spec there either (no handler would read it).
    annotations = obj["metadata"].get("annotations", {})
    assert not [a for a in annotations if "kopf" in a], annotations
    assert "lastHandledConfiguration" not in status.get("kopf", {}), status["kopf"]


def test_torch_example_trains_on_two_workers(launched: Resources) -> None:
    name = example("trainingjob-torch.yaml")["metadata"]["name"]
    obj = launched.wait_for_phase("trainingjobs", name, {"Succeeded", "Failed"}, TRAINING_TIMEOUT)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["metrics"]["test_accuracy"] >= 0.90


def test_custom_example_runs_the_users_function(launched: Resources, ray_cluster: str) -> None:
    name = example("trainingjob-custom.yaml")["metadata"]["name"]
    obj = launched.wait_for_phase("trainingjobs", name, {"Succeeded", "Failed"}, TRAINING_TIMEOUT)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    # wine_train.py prints the greeting its runtime env sets: the user's code ran, with that env.
    logs = JobSubmissionClient(ray_cluster).get_job_logs(obj["status"]["ray"]["submissionId"])
    assert "hello from the runtime env" in logs
    assert obj["status"]["metrics"]["test_accuracy"] > 0.5


def test_raising_entrypoint_fails_after_its_retries(launched: Resources) -> None:
    obj = launched.wait_for_phase(
        "trainingjobs", "broken", {"Succeeded", "Failed"}, TRAINING_TIMEOUT
    )
    status = obj["status"]
    assert status["phase"] == "Failed"
    assert status["attempts"] == 2
    failed = conditions(obj)["Failed"]
    assert failed["reason"] == "TrainingFailed"
    assert "attempt 2 of 2 failed" in failed["message"]
    assert "feature 'tenure' has 12 missing values" in failed["message"]


def test_failed_gate_succeeds_without_registering(launched: Resources, mlflow_server: str) -> None:
    obj = launched.wait_for_phase(
        "trainingjobs", "strict-gate", {"Succeeded", "Failed"}, TRAINING_TIMEOUT
    )
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    gates = conditions(obj)["GatesPassed"]
    assert gates["status"] == "False"
    assert "roc_auc" in gates["message"] and "accuracy" not in gates["message"]
    assert "model" not in obj["status"]
    assert MlflowClient(mlflow_server).search_model_versions("name = 'strict-gate-model'") == []


def _long_job(name: str, rounds: int = 400) -> dict[str, Any]:
    doc = copy.deepcopy(example("trainingjob-xgboost.yaml"))
    doc["metadata"]["name"] = name
    doc["spec"]["hyperparameters"].update(num_boost_round=rounds, eta=0.01)
    doc["spec"].pop("earlyStopping")
    doc["spec"]["tracking"] = {"experiment": "e2e-long"}
    doc["spec"].pop("gates")
    return doc


def test_operator_killed_mid_training_resumes_without_resubmitting(
    resources, operator, ray_cluster: str
) -> None:
    uid = resources.apply(_long_job("survivor", rounds=150))["metadata"]["uid"]
    resources.wait_for_phase("trainingjobs", "survivor", {"Running"}, 180)
    operator.kill()
    time.sleep(3)
    operator.start()
    obj = resources.wait_for_phase("trainingjobs", "survivor", {"Succeeded", "Failed"}, 300)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["attempts"] == 1
    assert submissions(ray_cluster, uid) == [f"mlplane-{uid}-1"]


def test_deleting_a_running_job_stops_its_ray_job(resources, ray_cluster: str) -> None:
    uid = resources.apply(_long_job("doomed", rounds=5000))["metadata"]["uid"]
    resources.wait_for_phase("trainingjobs", "doomed", {"Running"}, 180)
    resources.delete("trainingjobs", "doomed")
    ray = JobSubmissionClient(ray_cluster)
    deadline = time.monotonic() + 30
    while ray.get_job_status(f"mlplane-{uid}-1").value in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, "the Ray job still runs 30 s after deletion"
        time.sleep(1)
    gone = time.monotonic() + 30
    while True:
        try:
            resources.get("trainingjobs", "doomed")
        except client.ApiException as error:
            assert error.status == 404
            break
        assert time.monotonic() < gone, "the finalizer never let go"
        time.sleep(1)
