"""TrainingJob end to end: kubectl-style objects, the operator process, real Ray and MLflow."""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from mlflow import MlflowClient
from ray.job_submission import JobSubmissionClient

from mlplane.operator.code_package import archive, archive_key
from mlplane.operator.embedded import free_port
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


class CodeServer:
    """User code as a cluster takes it: the zip archive `mlplane package` uploads, at a remote
    URI Ray fetches (here over HTTP from this process, rather than S3)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def working_dir(self, directory: Path) -> str:
        data = archive(directory, as_module=False)
        name = archive_key("", directory, data)
        (self.root / name).write_bytes(data)
        return f"http://127.0.0.1:{self.server.server_port}/{name}"


@pytest.fixture(scope="module")
def code_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodeServer]:
    server = CodeServer(tmp_path_factory.mktemp("code"))
    yield server
    server.server.shutdown()


def _custom_job(code: CodeServer) -> dict[str, Any]:
    doc = example("trainingjob-custom.yaml")
    doc["spec"]["runtimeEnv"]["workingDir"] = code.working_dir(REPO / "examples" / "custom")
    return doc


def _broken_job(code: CodeServer) -> dict[str, Any]:
    doc = example("trainingjob-custom.yaml")
    doc["metadata"]["name"] = "broken"
    doc["spec"]["model"]["entrypoint"] = "failing_train:train_loop_per_worker"
    doc["spec"]["runtimeEnv"] = {"workingDir": code.working_dir(Path(__file__).parent / "usercode")}
    doc["spec"]["retries"] = 1
    return doc


LOCAL_CODE = {
    "wine-local": (
        example("trainingjob-custom.yaml")["spec"]["runtimeEnv"],  # the example as written
        "spec.runtimeEnv.workingDir: 'examples/custom'",
    ),
    "token-path": (
        {"workingDir": "/var/run/secrets/kubernetes.io/serviceaccount"},
        "spec.runtimeEnv.workingDir: '/var/run/secrets/kubernetes.io/serviceaccount'",
    ),
    "etc-path": (
        {"pyModules": ["../../../../etc"]},
        "spec.runtimeEnv.pyModules[0]: '../../../../etc'",
    ),
}
"""Jobs whose runtimeEnv names paths on the operator's machine: the runtimeEnv, and the start of
the refusal it gets."""


def _local_code_jobs() -> list[dict[str, Any]]:
    docs = []
    for name, (runtime_env, _) in LOCAL_CODE.items():
        doc = example("trainingjob-custom.yaml")
        doc["metadata"]["name"] = name
        doc["spec"]["runtimeEnv"] = runtime_env
        docs.append(doc)
    return docs


def _strict_gate_job() -> dict[str, Any]:
    doc = example("trainingjob-xgboost.yaml")
    doc["metadata"]["name"] = "strict-gate"
    doc["spec"]["tracking"]["registerAs"] = "strict-gate-model"
    doc["spec"]["gates"] = {"roc_auc": ">= 0.9999", "accuracy": ">= 0.5"}
    return doc


@pytest.fixture(scope="module")
def launched(
    k8s_api: client.ApiClient, crds: list[str], operator: OperatorProcess, code_server: CodeServer
) -> Iterator[Resources]:
    """The jobs that only need to finish, applied together when the module starts: the operator
    and Ray run them side by side, and each test waits for its own (as in a team's namespace)."""
    with fresh_namespace(k8s_api, "e2e-trainingjob-examples") as namespace:
        resources = Resources(k8s_api, namespace, operator)
        for doc in (
            example("trainingjob-xgboost.yaml"),
            example("trainingjob-torch.yaml"),
            _custom_job(code_server),
            _broken_job(code_server),
            _strict_gate_job(),
            *_local_code_jobs(),
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


@pytest.mark.parametrize("name", LOCAL_CODE)
def test_local_code_is_refused_before_anything_runs(
    launched: Resources, ray_cluster: str, name: str
) -> None:
    obj = launched.wait_for_phase(
        "trainingjobs", name, {"Starting", "Running", "Succeeded", "Failed"}, 60
    )
    status = obj["status"]
    assert status["phase"] == "Failed", status
    failed = conditions(obj)["Failed"]
    assert failed["reason"] == "InvalidSpec"
    _, refusal = LOCAL_CODE[name]
    assert failed["message"].startswith(f"{refusal} is a path on the operator's machine")
    assert "`mlplane package`" in failed["message"]
    assert submissions(ray_cluster, obj["metadata"]["uid"]) == []
    assert "queue" not in status  # never admitted: it held no GPU


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
