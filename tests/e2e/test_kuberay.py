"""The kuberay backend and GPU admission end to end: `mlplane operator` with `backend: kuberay`
against the real API server, kwok GPU pools and the real scheduler.

No KubeRay controller runs (tests/kuberay_standin.py): each test moves the RayJob status the way
KubeRay would and checks what the TrainingJob shows. Budget: about 70 s for the module (operator
start, then 1 s observe intervals).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kuberay_standin import install_crds, rayjob_status, set_status
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.operator import embedded
from tests.e2e.conftest import GROUP, VERSION, OperatorProcess, Resources

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
INTERVAL = 1.0
# Its start (importing MLflow and Ray's client) takes 10 s idle, 30 s on a busy machine.
STARTUP_TIMEOUT = 120
SUFFIX = uuid.uuid4().hex[:6]
# Namespaces with an a100 quota of 8 GPUs in the operator's configuration.
TEAM_A = f"kuberay-team-a-{SUFFIX}"
RESTARTED = f"kuberay-restart-{SUFFIX}"


@pytest.fixture(scope="module")
def kuberay_operator(
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    crds: list[str],
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    install_crds(k8s_api)
    workdir = tmp_path_factory.mktemp("kuberay-operator")
    config = {
        "backend": "kuberay",
        "mlflow_tracking_uri": mlflow_server,
        "data_dir": str(workdir / "data"),
        "observe_interval_seconds": INTERVAL,
        "node_pools_file": str(REPO / "operator" / "cluster" / "nodepools.yaml"),
        "gpu_quotas": {TEAM_A: {"a100": 8}, RESTARTED: {"a100": 8}},
        "ray_image": "mlplane/runtime:test",
    }
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # The file alone configures it: a developer's MLPLANE_* variables would override it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLANE_")}
    health = f"http://127.0.0.1:{embedded.free_port()}/healthz"
    process = OperatorProcess(
        env | {"KUBECONFIG": str(kubeconfig)},
        workdir / "operator.log",
        args=(
            "operator",
            *("--namespace", f"kuberay-*-{SUFFIX}"),
            *("--config", str(config_file)),
            *("--liveness", health),
        ),
        health_url=health,
    )
    process.start()
    process.wait_healthy(STARTUP_TIMEOUT)
    yield process
    process.stop()


@pytest.fixture
def namespaces(
    k8s_api: client.ApiClient, kuberay_operator: OperatorProcess
) -> Iterator[Callable[[str], Resources]]:
    """Namespaces the kuberay operator watches; runs are deleted (the operator releases their
    finalizers) before the namespace goes."""
    core = client.CoreV1Api(k8s_api)
    made: list[Resources] = []

    def make(name: str) -> Resources:
        core.create_namespace({"metadata": {"name": name, "labels": {"mlplane.dev/test": "true"}}})
        made.append(Resources(k8s_api, name, kuberay_operator))
        return made[-1]

    yield make
    for resources in made:
        objects = resources.objects
        objects.delete_collection_namespaced_custom_object(
            GROUP, VERSION, resources.namespace, "trainingjobs"
        )
        wait_for(
            lambda r=resources: (
                not r.objects.list_namespaced_custom_object(
                    GROUP, VERSION, r.namespace, "trainingjobs"
                )["items"]
            ),
            30,
        )
        core.delete_namespace(resources.namespace)


def wait_for(condition: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"not true within {timeout}s: {condition}")


def training_job(name: str, workers: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "framework": "xgboost",
            "dataset": {"uri": "sklearn://iris", "label": "target"},
            "resources": {
                "workers": workers,
                "perWorker": {"cpu": 4, "memory": "16Gi", "gpu": 4},
                "nodePool": "a100",
            },
            **spec,
        },
    }


def status(resources: Resources, name: str) -> dict[str, Any]:
    return resources.get("trainingjobs", name).get("status", {})


def phase_is(resources: Resources, name: str, *phases: str) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        found = status(resources, name)
        return found if found.get("phase") in phases else {}

    return check


def conditions(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in found.get("conditions", [])}


def apply_in_order(resources: Resources, *docs: dict[str, Any]) -> None:
    """Apply one after another, each once the operator has decided on it: FIFO is by creation."""
    for doc in docs:
        resources.apply(doc)
        wait_for(phase_is(resources, doc["metadata"]["name"], "Starting", "Queued"), 30)


def rayjobs(resources: Resources) -> list[str]:
    found = resources.objects.list_namespaced_custom_object(
        "ray.io", "v1", resources.namespace, "rayjobs"
    )
    return sorted(item["metadata"]["name"] for item in found["items"])


def rayjob(resources: Resources, name: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        try:
            return resources.objects.get_namespaced_custom_object(
                "ray.io", "v1", resources.namespace, "rayjobs", name
            )
        except ApiException as error:
            if error.status == 404:
                return {}
            raise

    return wait_for(get, 30)


def kuberay_says(
    resources: Resources, k8s_api: client.ApiClient, job: str, **status_fields: Any
) -> None:
    set_status(k8s_api, resources.namespace, "rayjobs", f"{job}-a1", status_fields)


def schedule(k8s_api: client.ApiClient, namespace: str, name: str, template: dict) -> str:
    """Create a pod from a pod template; the node the real scheduler binds it to."""
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": template["spec"]})
    return wait_for(lambda: core.read_namespaced_pod(name, namespace).spec.node_name, 30)


def test_gpu_workers_land_on_a100_nodes_and_tolerate_their_taint(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(f"kuberay-place-{SUFFIX}")
    created = team.apply(training_job("churn", workers=2))
    job = wait_for(phase_is(team, "churn", "Starting"), 30)
    assert job["ray"] == {"backend": "kuberay", "submissionId": job["ray"]["submissionId"]} | {
        "rayJob": "churn-a1"
    }
    assert job["queue"] == {"pool": "a100", "gpus": 8, "position": 0}
    found = rayjob(team, "churn-a1")
    owner = found["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("TrainingJob", created["metadata"]["uid"])
    cluster = found["spec"]["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"][0]
    assert workers["replicas"] == 2
    pod = workers["template"]["spec"]
    assert pod["nodeSelector"] == {"mlplane.dev/pool": "a100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert found["spec"]["entrypoint"].startswith("python -m mlplane.training train")
    # The real scheduler puts the worker on an a100 node (past its taint), the head on cpu.
    assert schedule(k8s_api, team.namespace, "worker", workers["template"]).startswith("a100-")
    assert schedule(
        k8s_api, team.namespace, "head", cluster["headGroupSpec"]["template"]
    ).startswith("cpu-")


def test_quota_queues_the_third_job_and_admits_it_when_one_finishes(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(TEAM_A)
    apply_in_order(team, *(training_job(f"q{n}") for n in (1, 2, 3)))
    assert [status(team, f"q{n}")["phase"] for n in (1, 2, 3)] == [
        "Starting",
        "Starting",
        "Queued",
    ]
    queued = status(team, "q3")
    assert queued["queue"] == {"pool": "a100", "gpus": 4, "position": 1}
    admitted = conditions(queued)["Admitted"]
    assert (admitted["status"], admitted["reason"]) == ("False", "Queued")
    assert admitted["message"] == f"needs 4 a100 GPUs; {TEAM_A} uses 8 of 8 a100 GPUs; position 1"
    assert rayjobs(team) == ["q1-a1", "q2-a1"]

    kuberay_says(team, k8s_api, "q1", **rayjob_status("Complete", "SUCCEEDED"))
    wait_for(phase_is(team, "q1", "Succeeded"), 15, every=0.05)
    finished = time.monotonic()
    wait_for(phase_is(team, "q3", "Starting"), 15, every=0.05)
    waited = time.monotonic() - finished
    assert waited < INTERVAL + 1.0, f"the next job waited {waited:.1f}s after the first finished"
    assert status(team, "q3")["queue"]["position"] == 0

    # Two more wait in line; the first leaves it when deleted, and the second moves up.
    apply_in_order(team, training_job("q4"), training_job("q5"))
    assert status(team, "q5")["queue"]["position"] == 2
    team.delete("trainingjobs", "q4")
    wait_for(lambda: status(team, "q5")["queue"]["position"] == 1, 10)
    assert "q4-a1" not in rayjobs(team)


def test_namespace_resource_quota_on_gpus_is_honoured(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(f"kuberay-rq-{SUFFIX}")
    client.CoreV1Api(k8s_api).create_namespaced_resource_quota(
        team.namespace,
        {"metadata": {"name": "gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "4"}}},
    )
    apply_in_order(team, training_job("r1"), training_job("r2"))
    assert status(team, "r1")["phase"] == "Starting"
    waiting = status(team, "r2")
    assert waiting["phase"] == "Queued"
    assert "uses 4 of its ResourceQuota of 4 GPUs" in conditions(waiting)["Admitted"]["message"]


def test_kuberay_transitions_move_the_training_job(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(f"kuberay-moves-{SUFFIX}")
    apply_in_order(team, training_job("ok"), training_job("slow", activeDeadlineSeconds=3600))
    assert rayjob(team, "slow-a1")["spec"]["activeDeadlineSeconds"] == 3600

    kuberay_says(team, k8s_api, "ok", **rayjob_status("Initializing"))
    head = "http://ok-a1-head-svc.kuberay-moves:8265"  # KubeRay's, once the cluster is up
    kuberay_says(team, k8s_api, "ok", **rayjob_status("Running", "RUNNING", dashboardURL=head))
    running = wait_for(phase_is(team, "ok", "Running"), 15)
    assert conditions(running)["Running"]["status"] == "True"
    assert running["ray"]["dashboardUrl"] == head
    kuberay_says(team, k8s_api, "ok", **rayjob_status("Complete", "SUCCEEDED"))
    done = wait_for(phase_is(team, "ok", "Succeeded"), 15)
    assert conditions(done)["Complete"]["status"] == "True"
    assert conditions(done)["Running"]["status"] == "False"
    assert done["gpuSeconds"] > 0

    # A head pod that cannot pull its image is named, not hidden behind Initializing.
    kuberay_says(
        team,
        k8s_api,
        "slow",
        **rayjob_status(
            "Initializing",
            rayClusterStatus={
                "conditions": [
                    {
                        "type": "HeadPodReady",
                        "status": "False",
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "mlplane/runtime:test"',
                    }
                ]
            },
        ),
    )
    stuck = wait_for(
        lambda: (
            (c := conditions(status(team, "slow")).get("Running"))
            and c["reason"] == "ImagePullBackOff"
            and c
        ),
        15,
    )
    assert stuck["status"] == "False" and "mlplane/runtime:test" in stuck["message"]
    assert status(team, "slow")["phase"] == "Starting"
    kuberay_says(
        team,
        k8s_api,
        "slow",
        **rayjob_status("Failed", "", reason="DeadlineExceeded", message="ran 3600s"),
    )
    failed = wait_for(phase_is(team, "slow", "Failed"), 15)
    assert conditions(failed)["Failed"]["reason"] == "DeadlineExceeded"
    assert conditions(failed)["Failed"]["message"].startswith("DeadlineExceeded: ran 3600s")


def test_kueue_gets_a_suspended_labelled_rayjob(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(f"kuberay-kueue-{SUFFIX}")
    team.apply(training_job("kq", queueName="team-a-gpus"))
    found = rayjob(team, "kq-a1")
    assert found["spec"]["suspend"] is True
    assert found["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    kuberay_says(team, k8s_api, "kq", **rayjob_status("Suspended"))
    waiting = wait_for(phase_is(team, "kq", "Queued"), 15)
    assert waiting["queue"]["name"] == "team-a-gpus"
    assert conditions(waiting)["Admitted"]["status"] == "Unknown"
    # Kueue admits: it unsuspends the RayJob and KubeRay starts the cluster.
    kuberay_says(team, k8s_api, "kq", **rayjob_status("Initializing"))
    started = wait_for(phase_is(team, "kq", "Starting"), 15)
    assert conditions(started)["Admitted"]["reason"] == "KueueAdmitted"


def test_the_ledger_survives_an_operator_restart(
    namespaces: Callable[[str], Resources],
    k8s_api: client.ApiClient,
    kuberay_operator: OperatorProcess,
) -> None:
    team = namespaces(RESTARTED)
    apply_in_order(team, *(training_job(f"s{n}") for n in (1, 2, 3)))
    kuberay_says(team, k8s_api, "s2", **rayjob_status("Running", "RUNNING"))
    wait_for(phase_is(team, "s2", "Running"), 15)

    kuberay_operator.kill()
    team.apply(training_job("s4"))  # arrives while no operator runs
    kuberay_operator.start()
    kuberay_operator.wait_healthy(STARTUP_TIMEOUT)
    wait_for(phase_is(team, "s4", "Queued"), 15)
    time.sleep(3 * INTERVAL)  # every timer has run at least twice since the restart
    # Nothing admitted twice, no GPU counted twice: the same two hold the quota, in line order.
    assert rayjobs(team) == ["s1-a1", "s2-a1"]
    assert [status(team, f"s{n}")["attempts"] for n in (1, 2)] == [1, 1]
    assert [status(team, f"s{n}")["queue"]["position"] for n in (3, 4)] == [1, 2]

    kuberay_says(team, k8s_api, "s1", **rayjob_status("Complete", "SUCCEEDED"))
    wait_for(phase_is(team, "s3", "Starting"), 15)
    # s4's own timer moves it up, within an interval of s3 leaving the line.
    wait_for(lambda: status(team, "s4")["queue"]["position"] == 1, INTERVAL + 2)
    assert rayjobs(team) == ["s1-a1", "s2-a1", "s3-a1"]
