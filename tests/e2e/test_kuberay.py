"""The kuberay backend and GPU admission end to end: `mlplane operator` with `backend: kuberay`
against the real API server, KubeRay's own operator, kwok GPU pools and the real scheduler.

KubeRay's operator (built from its Go module, started with the control plane) validates each
RayJob, makes its RayCluster and moves it through its states; the scheduler binds the cluster's
pods to kwok nodes. kwok pods run no code, so the one thing a test writes is what the Ray job
inside would have reported to KubeRay (RUNNING, SUCCEEDED), on top of KubeRay's own status, once
KubeRay itself has the cluster up; and custom code a pod would fetch is fetched by Ray's own
function in the test, from S3 on moto. Budget: about 90 s for the module (operator start, then 1 s
observe intervals).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mlflow import MlflowClient
from ray._private.runtime_env.packaging import download_and_unpack_package
from service_fixtures import MotoServer

from mlplane.crds import KINDS
from mlplane.operator import embedded
from mlplane.operator.backends.kuberay import kuberay_name, rayjob_name
from mlplane.training.tags import RUN_UID_TAG
from mlplane.training.tracking import experiment_id
from tests.e2e.conftest import GROUP, VERSION, OperatorProcess, Resources

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
INTERVAL = 1.0
# Its start (importing MLflow and Ray's client) takes 10 s idle, 30 s on a busy machine.
STARTUP_TIMEOUT = 120
# KubeRay's own moves: RayCluster made, pods bound and Ready, submitter created.
KUBERAY_TIMEOUT = 60
SUFFIX = uuid.uuid4().hex[:6]
# Namespaces with an a100 quota of 8 GPUs in the operator's configuration.
TEAM_A = f"kuberay-team-a-{SUFFIX}"
RESTARTED = f"kuberay-restart-{SUFFIX}"


def start_kuberay_operator(
    kubeconfig: Path, mlflow_server: str, workdir: Path, namespaces: str, **settings: Any
) -> OperatorProcess:
    """A kuberay-backend operator watching `namespaces`, healthy; `settings` add to or replace
    its configuration."""
    config = {
        "backend": "kuberay",
        "mlflow_tracking_uri": mlflow_server,
        "data_dir": str(workdir / "data"),
        "observe_interval_seconds": INTERVAL,
        "node_pools_file": str(REPO / "operator" / "cluster" / "nodepools.yaml"),
        "gpu_quotas": {TEAM_A: {"a100": 8}, RESTARTED: {"a100": 8}},
        "ray_image": "mlplane/runtime:test",
        "checkpoint_storage": "s3://checkpoints/kuberay",  # named only: kwok pods run nothing
    } | settings
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
            *("--namespace", namespaces),
            *("--config", str(config_file)),
            *("--liveness", health),
        ),
        health_url=health,
    )
    process.start()
    process.wait_healthy(STARTUP_TIMEOUT)
    return process


@pytest.fixture(scope="module")
def kuberay_operator(
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    crds: list[str],
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("kuberay-operator")
    process = start_kuberay_operator(kubeconfig, mlflow_server, workdir, f"kuberay-*-{SUFFIX}")
    yield process
    process.stop()


@pytest.fixture
def namespaces(
    k8s_api: client.ApiClient, kuberay_operator: OperatorProcess
) -> Iterator[Callable[..., Resources]]:
    """Namespaces the kuberay operator (or the one given) watches; runs are deleted (the
    operator releases their finalizers) before the namespace goes. Each enforces the
    `restricted` Pod Security Standard, as a platform team's tenant namespaces may: the API
    server refuses any pod KubeRay makes from mlplane's templates that is not hardened."""
    core = client.CoreV1Api(k8s_api)
    made: list[Resources] = []

    def make(name: str, operator: OperatorProcess = kuberay_operator) -> Resources:
        labels = {"mlplane.dev/test": "true", "pod-security.kubernetes.io/enforce": "restricted"}
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        made.append(Resources(k8s_api, name, operator))
        return made[-1]

    yield make
    for resources in made:
        for plural in ("trainingjobs", "tuningsweeps", "modeldeployments"):
            resources.objects.delete_collection_namespaced_custom_object(
                GROUP, VERSION, resources.namespace, plural
            )
            wait_for(
                lambda r=resources, plural=plural: (
                    not r.objects.list_namespaced_custom_object(
                        GROUP, VERSION, r.namespace, plural
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


class phase_is:  # lower case: it reads as a condition, wait_for(phase_is(team, "a", "Running"))
    """The job's status once its phase is one of `phases`; if it never is, `wait_for`'s failure
    shows the status last seen and the end of the operator's log."""

    def __init__(self, resources: Resources, name: str, *phases: str) -> None:
        self.resources, self.name, self.phases = resources, name, phases
        self.seen: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        self.seen = status(self.resources, self.name)
        return self.seen if self.seen.get("phase") in self.phases else {}

    def __repr__(self) -> str:
        log = "\n".join(self.resources.operator.log().splitlines()[-20:])
        return f"{self.name} {' or '.join(self.phases)}; last status: {self.seen}\n{log}"


def conditions(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in found.get("conditions", [])}


def apply_in_order(resources: Resources, *docs: dict[str, Any]) -> None:
    """Apply one after another, each once the operator has decided on it: FIFO is by creation."""
    for doc in docs:
        resources.apply(doc)
        wait_for(phase_is(resources, doc["metadata"]["name"], "Starting", "Queued"), 30)


def trainingjobs(resources: Resources) -> list[str]:
    found = resources.objects.list_namespaced_custom_object(
        GROUP, VERSION, resources.namespace, "trainingjobs"
    )
    return [item["metadata"]["name"] for item in found["items"]]


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


def kuberay_reached(
    resources: Resources, job: str, deployment: str, timeout: float = KUBERAY_TIMEOUT
) -> dict[str, Any]:
    """The attempt's RayJob once KubeRay itself has moved it to `deployment`; else fail with
    the status KubeRay left on it."""
    name = rayjob_name(job, 1)
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = rayjob(resources, name)
        if found.get("status", {}).get("jobDeploymentStatus") == deployment:
            return found
        time.sleep(0.2)
    raise AssertionError(f"RayJob {name} not {deployment} in {timeout} s: {found.get('status')}")


def ray_job_reports(
    resources: Resources,
    k8s_api: client.ApiClient,
    job: str,
    job_status: str,
    mlflow_uri: str | None = None,
) -> None:
    """Write what the Ray job inside the running cluster reports to KubeRay: RUNNING, or an end
    (KubeRay marks the deployment Complete or Failed with it). Only on a RayJob KubeRay has
    brought to Running itself: its pods are bound and Ready, its submitter created. A job that
    SUCCEEDED has, like a real runner, first recorded its MLflow run at `mlflow_uri`."""
    kuberay_reached(resources, job, "Running")
    if job_status == "SUCCEEDED":
        assert mlflow_uri, "the operator reads a finished job's MLflow run: pass mlflow_uri"
        runner_recorded(resources, mlflow_uri, job)
    status: dict[str, Any] = {"jobStatus": job_status}
    if job_status == "SUCCEEDED":
        status["jobDeploymentStatus"] = "Complete"
    elif job_status == "FAILED":
        status |= {"jobDeploymentStatus": "Failed", "reason": "AppFailed"}
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object_status(
        "ray.io", "v1", resources.namespace, "rayjobs", rayjob_name(job, 1), {"status": status}
    )


def reports_running(
    resources: Resources, k8s_api: client.ApiClient, job: str, until: Callable[[], Any]
) -> Any:
    """RUNNING reported until `until` holds, as a live dashboard answers it on each of KubeRay's
    polls. kwok pods serve no dashboard, so KubeRay's next poll writes the API server proxy's
    error over a single report, and that poll may come before the operator's next look."""
    deadline = time.monotonic() + KUBERAY_TIMEOUT
    while time.monotonic() < deadline:
        ray_job_reports(resources, k8s_api, job, "RUNNING")
        for _ in range(20):
            if found := until():
                return found
            time.sleep(0.1)
    raise AssertionError(f"not true within {KUBERAY_TIMEOUT}s: {until}")


def runner_recorded(resources: Resources, mlflow_uri: str, job: str) -> None:
    """What the runner inside the Ray job writes first, and kwok's pods cannot run: the MLflow
    run of the RayJob's owner, tagged with its UID, which the operator reads when the job ends."""
    owner = rayjob(resources, rayjob_name(job, 1))["metadata"]["ownerReferences"][0]
    name = owner["name"]
    obj = resources.get(KINDS[owner["kind"]].plural, name)
    spec = obj["spec"].get("template", obj["spec"])
    experiment = spec.get("tracking", {}).get("experiment") or f"{resources.namespace}/{name}"
    writer = MlflowClient(mlflow_uri)
    writer.create_run(
        experiment_id(writer, experiment),
        run_name=name,
        tags={RUN_UID_TAG: obj["metadata"]["uid"]},
    )


def pods_of(k8s_api: client.ApiClient, namespace: str, cluster: str) -> list[client.V1Pod]:
    """The pods KubeRay made for a RayCluster, once every one is bound to a node."""

    def bound() -> list[client.V1Pod]:
        pods = (
            client.CoreV1Api(k8s_api)
            .list_namespaced_pod(
                namespace, label_selector=f"ray.io/cluster={cluster},ray.io/node-type"
            )
            .items
        )
        return pods if pods and all(pod.spec.node_name for pod in pods) else []

    return wait_for(bound, KUBERAY_TIMEOUT, every=0.2)


TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def assert_hardened(pod: client.V1Pod, token: bool = False) -> None:
    """A pod as the API server stored it (after KubeRay's additions and the ServiceAccount
    admission's): every container, KubeRay's own included, runs as Ray's non-root user with no
    privilege to gain, and none has a Kubernetes token unless `token`."""
    spec = pod.spec
    name = pod.metadata.name
    context = spec.security_context
    assert (context.run_as_non_root, context.run_as_user, context.run_as_group) == (
        True,
        1000,
        100,
    ), name
    assert context.seccomp_profile.type == "RuntimeDefault", name
    containers = [*(spec.init_containers or []), *spec.containers]
    for container in containers:
        hardened = container.security_context
        assert hardened.allow_privilege_escalation is False, (name, container.name)
        assert hardened.capabilities.drop == ["ALL"], (name, container.name)
    mounts = {m.mount_path for c in containers for m in c.volume_mounts or []}
    assert (TOKEN_PATH in mounts) is token, (name, mounts)
    assert spec.automount_service_account_token is token, name
    assert pod.metadata.labels["mlplane.dev/name"], name


def test_gpu_job_runs_through_kuberays_states_on_a100_nodes(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient, mlflow_server: str
) -> None:
    team = namespaces(f"kuberay-place-{SUFFIX}")
    created = team.apply(training_job("churn", workers=2))
    # The operator's first run: a loaded machine has taken over 30 s to start watching it.
    wait_for(phase_is(team, "churn", "Starting"), 60)
    # Admitted first, written on the resource, then launched: the RayJob is named right after.
    job = wait_for(lambda: (found := status(team, "churn")).get("ray") and found, 5)
    assert job["ray"] == {"backend": "kuberay", "submissionId": job["ray"]["submissionId"]} | {
        "rayJob": "churn-a1"
    }
    assert job["queue"] == {"pool": "a100", "gpus": 8, "position": 0}
    found = rayjob(team, "churn-a1")
    owner = found["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("TrainingJob", created["metadata"]["uid"])
    assert found["spec"]["entrypoint"].startswith("python -m mlplane.training train")

    # KubeRay accepts the RayJob, makes its RayCluster, and the scheduler binds the two
    # 4-GPU workers to a100 nodes (past their taint) and the head to a cpu node.
    accepted = kuberay_reached(team, "churn", "Running")
    cluster = accepted["status"]["rayClusterName"]
    placed: dict[str, list[client.V1Pod]] = {"head": [], "worker": []}
    for pod in pods_of(k8s_api, team.namespace, cluster):
        placed[pod.metadata.labels["ray.io/node-type"]].append(pod)
    workers = placed["worker"]
    assert len(workers) == 2
    for pod in workers:
        assert pod.spec.node_name.startswith("a100-")
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "4"
        # KubeRay put the group's Ray node label on the pod (and into `ray start --labels`).
        assert pod.metadata.labels["mlplane.dev/pool"] == "a100"
    assert [pod.spec.node_name[:4] for pod in placed["head"]] == ["cpu-"]
    for pod in [*placed["head"], *workers]:
        assert_hardened(pod)
    assert status(team, "churn")["phase"] == "Starting"  # the cluster is up, Ray has not said
    # The Job KubeRay made to run `ray job submit`, and its pod, from mlplane's template.
    submitter = wait_for(
        lambda: (
            client.CoreV1Api(k8s_api)
            .list_namespaced_pod(team.namespace, label_selector="job-name=churn-a1")
            .items
        ),
        KUBERAY_TIMEOUT,
        every=0.2,
    )
    assert [c.name for c in submitter[0].spec.containers] == ["ray-job-submitter"]
    assert_hardened(submitter[0])

    dashboard = accepted["status"]["dashboardURL"]
    running = reports_running(team, k8s_api, "churn", phase_is(team, "churn", "Running"))
    assert conditions(running)["Running"]["status"] == "True"
    assert running["ray"]["dashboardUrl"] == dashboard
    ray_job_reports(team, k8s_api, "churn", "SUCCEEDED", mlflow_server)
    done = wait_for(phase_is(team, "churn", "Succeeded"), 15)
    assert conditions(done)["Complete"]["status"] == "True"
    assert conditions(done)["Running"]["status"] == "False"
    assert done["gpuSeconds"] > 0


def test_a_rayjob_kuberay_refuses_fails_the_job_with_kuberays_message(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(f"kuberay-refused-{SUFFIX}")
    # Valid Kubernetes names KubeRay would refuse for a RayJob (a digit first; over 47
    # characters) run under a stand-in name KubeRay takes.
    long_name = "churn-" + "x" * 57
    team.apply(training_job("7day-churn"))
    team.apply(training_job(long_name))
    for name in ("7day-churn", long_name):
        wait_for(
            lambda name=name: (
                rayjob(team, rayjob_name(name, 1)).get("status", {}).get("jobDeploymentStatus")
                in ("Initializing", "Running")
            ),
            KUBERAY_TIMEOUT,
            every=0.2,
        )
        assert status(team, name)["phase"] in ("Starting", "Running")
    assert rayjobs(team) == sorted(kuberay_name(n, "-a1") for n in ("7day-churn", long_name))

    # mlplane renders nothing else KubeRay's validation refuses, so the test makes a RayJob
    # it does: a `Waiting` deployment status outside interactive mode, which KubeRay's
    # ValidateRayJobStatus turns into ValidationFailed with its own message.
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object_status(
        "ray.io",
        "v1",
        team.namespace,
        "rayjobs",
        rayjob_name("7day-churn", 1),
        {"status": {"jobDeploymentStatus": "Waiting"}},
    )
    refused = kuberay_reached(team, "7day-churn", "ValidationFailed")
    seen = time.monotonic()
    failed = wait_for(phase_is(team, "7day-churn", "Failed"), 15, every=0.05)
    waited = time.monotonic() - seen
    assert waited < INTERVAL + 1.0, f"Failed {waited:.1f}s after KubeRay refused the RayJob"
    reason = conditions(failed)["Failed"]
    assert reason["reason"] == "ValidationFailed"
    assert refused["status"]["message"] in reason["message"]
    assert "JobDeploymentStatus cannot be `Waiting`" in reason["message"]
    assert failed["attempts"] == 1  # a refusal is not retried

    # A name the operator itself refuses never reaches KubeRay, and deleting it is not blocked.
    team.apply(training_job("churn.v2"))
    invalid = conditions(wait_for(phase_is(team, "churn.v2", "Failed"), 15))["Failed"]
    assert (invalid["reason"], invalid["message"][:14]) == ("InvalidSpec", "metadata.name:")
    team.delete("trainingjobs", "churn.v2")
    wait_for(lambda: "churn.v2" not in trainingjobs(team), 10)
    assert len(rayjobs(team)) == 2


def test_packaged_code_reaches_ray_as_its_s3_archive(
    namespaces: Callable[[str], Resources],
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user's custom code on a cluster: `mlplane package` uploads it and fills in its URI, the
    RayJob hands that URI to Ray, and Ray's own fetch of it (what a Ray pod does; the S3 here is
    moto) gives back the code. The manifest as written, with its local path, is refused."""
    team = namespaces(f"kuberay-code-{SUFFIX}")
    boto3.client("s3", **aws(moto_server)).create_bucket(Bucket="code")
    command = [str(Path(sys.executable).parent / "mlplane"), "package"]
    command += ["examples/trainingjob-custom.yaml", "--to", "s3://code/team"]
    env = os.environ | moto_server.env
    packaged = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert packaged.returncode == 0, packaged.stderr
    doc = yaml.safe_load(packaged.stdout)
    uri = doc["spec"]["runtimeEnv"]["workingDir"]
    assert uri.startswith("s3://code/team/custom-") and uri.endswith(".zip")
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.stdout == packaged.stdout  # unchanged code: the same archive, uploaded once

    team.apply(doc)
    wait_for(phase_is(team, "wine-custom", "Starting"), 30)
    runtime_env = json.loads(rayjob(team, "wine-custom-a1")["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == uri
    for name, value in moto_server.env.items():
        monkeypatch.setenv(name, value)
    fetched = Path(asyncio.run(download_and_unpack_package(uri, str(tmp_path))))
    assert (fetched / "wine_train.py").read_text() == (
        REPO / "examples" / "custom" / "wine_train.py"
    ).read_text()

    as_written = yaml.safe_load((REPO / "examples" / "trainingjob-custom.yaml").read_text())
    as_written["metadata"]["name"] = "wine-local"
    team.apply(as_written)
    refused = conditions(wait_for(phase_is(team, "wine-local", "Failed"), 15))["Failed"]
    assert refused["reason"] == "InvalidSpec"
    assert refused["message"].startswith("spec.runtimeEnv.workingDir: 'examples/custom' is a path")
    assert "`mlplane package`" in refused["message"]
    assert "wine-local-a1" not in rayjobs(team)


def aws(moto: MotoServer) -> dict[str, str]:
    return {
        "endpoint_url": moto.endpoint_url,
        "aws_access_key_id": moto.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": moto.env["AWS_SECRET_ACCESS_KEY"],
        "region_name": moto.env["AWS_DEFAULT_REGION"],
    }


def test_a_sweep_runs_its_parallel_trials_on_one_kuberay_cluster(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient, mlflow_server: str
) -> None:
    team = namespaces(f"kuberay-sweep-{SUFFIX}")
    template = training_job("template")["spec"]  # 1 worker x 4 a100 GPUs
    team.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TuningSweep",
            "metadata": {"name": "tune"},
            "spec": {
                "template": template,
                "searchSpace": {"eta": {"loguniform": {"low": 0.01, "high": 0.5}}},
                "objective": {"metric": "val_auc", "mode": "max"},
                "trials": {"max": 4, "parallel": 2},
            },
        }
    )

    def sweep_phase(*phases: str) -> Callable[[], dict[str, Any]]:
        def check() -> dict[str, Any]:
            found = team.get("tuningsweeps", "tune").get("status", {})
            return found if found.get("phase") in phases else {}

        return check

    starting = wait_for(sweep_phase("Starting"), 30)
    assert starting["queue"] == {"pool": "a100", "gpus": 8, "position": 0}
    assert rayjob(team, "tune-a1")["spec"]["entrypoint"].startswith(
        "python -m mlplane.training tune"
    )
    # Two trials at once: KubeRay's cluster has a worker for each, on a100 nodes.
    cluster = kuberay_reached(team, "tune", "Running")["status"]["rayClusterName"]
    workers = [
        pod
        for pod in pods_of(k8s_api, team.namespace, cluster)
        if pod.metadata.labels["ray.io/node-type"] == "worker"
    ]
    assert sorted(pod.spec.node_name[:5] for pod in workers) == ["a100-", "a100-"]

    reports_running(team, k8s_api, "tune", sweep_phase("Running"))
    ray_job_reports(team, k8s_api, "tune", "SUCCEEDED", mlflow_server)
    done = wait_for(sweep_phase("Succeeded"), 15)
    assert conditions(done)["Complete"]["status"] == "True"


def model_deployment(name: str, **ray: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/churn/"},  # served as written: no registry lookup
            "ray": {"perReplica": {"cpu": 1, "gpu": 1}, "nodePool": "t4", **ray},
        },
    }


def test_a_model_deployment_is_a_rayservice_kuberay_runs_or_refuses(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient
) -> None:
    team = namespaces(f"kuberay-serve-{SUFFIX}")
    # Autoscaled: KubeRay adds its autoscaler to the head pod.
    team.apply(model_deployment("churn", replicas={"min": 1, "max": 2}))

    def pending_cluster(rayservice: str) -> str | None:
        try:
            found = team.objects.get_namespaced_custom_object(
                "ray.io", "v1", team.namespace, "rayservices", rayservice
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return (found.get("status") or {}).get("pendingServiceStatus", {}).get("rayClusterName")

    # KubeRay accepts it and makes its cluster: the replica's pod binds to a t4 node.
    cluster = wait_for(lambda: pending_cluster("churn"), KUBERAY_TIMEOUT, every=0.2)
    pods = {
        pod.metadata.labels["ray.io/node-type"]: pod
        for pod in pods_of(k8s_api, team.namespace, cluster)
    }
    assert {role: pod.spec.node_name[:3] for role, pod in pods.items()} == {
        "head": "cpu",
        "worker": "t4-",
    }
    # The replica's pod has no Kubernetes token; the head keeps one for the autoscaler, which
    # is hardened like the rest.
    assert_hardened(pods["worker"])
    assert_hardened(pods["head"], token=True)
    assert "autoscaler" in [c.name for c in pods["head"].spec.containers]
    assert team.get("modeldeployments", "churn")["status"]["phase"] == "Deploying"

    # 50 characters: a valid Kubernetes name, too long for KubeRay's RayService; it runs under a
    # stand-in name KubeRay takes.
    long_name = "churn-" + "x" * 44
    team.apply(model_deployment(long_name))
    rayservice = kuberay_name(long_name)
    wait_for(lambda: pending_cluster(rayservice), KUBERAY_TIMEOUT, every=0.2)
    assert team.get("modeldeployments", long_name)["status"]["phase"] == "Deploying"

    # A RayService edited by hand into one KubeRay refuses (it names the head Service KubeRay
    # names itself): KubeRay says why only in an Event, and the deployment fails with it.
    head_service = {"headGroupSpec": {"headService": {"metadata": {"name": "mine"}}}}
    team.objects.patch_namespaced_custom_object(
        "ray.io",
        "v1",
        team.namespace,
        "rayservices",
        rayservice,
        {"spec": {"rayClusterConfig": head_service}},
    )

    def failed() -> dict[str, Any]:
        found = team.get("modeldeployments", long_name).get("status", {})
        return found if found.get("phase") == "Failed" else {}

    ready = conditions(wait_for(failed, 30))["Ready"]
    assert ready["status"] == "False"
    assert "InvalidRayServiceSpec" in ready["message"]
    assert "headService.metadata.name should not be set" in ready["message"]


def test_quota_queues_the_third_job_and_admits_it_when_one_finishes(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient, mlflow_server: str
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
    assert (admitted["status"], admitted["reason"]) == ("False", "WaitingForQuota")
    assert admitted["message"] == f"needs 4 a100 GPUs; {TEAM_A} uses 8 of 8 a100 GPUs; position 1"
    assert rayjobs(team) == ["q1-a1", "q2-a1"]

    ray_job_reports(team, k8s_api, "q1", "SUCCEEDED", mlflow_server)
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


def gpu_quota(name: str, a100: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GPUQuota",
        "metadata": {"name": name},
        "spec": {"pools": [{"name": "a100", "gpus": a100}]},
    }


def printed(k8s_api: client.ApiClient, namespace: str, plural: str) -> list[dict[str, Any]]:
    """What `kubectl get <plural>` shows: the API server's table of the kind's printer columns."""
    response = k8s_api.call_api(
        "GET",
        f"{k8s_api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    response.read()
    table = json.loads(response.data)
    names = [column["name"] for column in table["columnDefinitions"]]
    return [dict(zip(names, row["cells"], strict=True)) for row in table["rows"]]


MLPLANE = str(Path(sys.executable).parent / "mlplane")


def queue_views(output: Path) -> list[list[list[str]]]:
    """The views `mlplane queue` printed, each as its lines split into words."""
    views: list[list[list[str]]] = []
    for line in output.read_text().splitlines():
        if line.startswith("Pools"):
            views.append([])
        elif views:
            views[-1].append(line.split())
    return views


def test_a_gpu_quota_queues_work_and_an_edit_admits_it_without_a_restart(
    namespaces: Callable[[str], Resources],
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    team = namespaces(f"kuberay-gq-{SUFFIX}")
    team.apply(gpu_quota("gpus", a100=4))
    apply_in_order(team, training_job("g1"), training_job("g2"))
    assert status(team, "g1")["phase"] == "Starting"
    waiting = status(team, "g2")
    assert waiting["phase"] == "Queued"
    message = conditions(waiting)["Admitted"]["message"]
    assert message == f"needs 4 a100 GPUs; {team.namespace} uses 4 of 4 a100 GPUs; position 1"

    def quota_shows(summary: str) -> dict[str, Any]:
        found = team.get("gpuquotas", "gpus").get("status", {})
        return found if found.get("summary") == summary else {}

    shown = wait_for(lambda: quota_shows("a100 4/4"), 3 * INTERVAL + 5)
    assert shown["pools"] == [{"name": "a100", "limit": 4, "used": 4, "queued": 4}]
    assert shown["queued"] == [{"name": "g2", "pool": "a100", "gpus": 4, "position": 1}]
    assert printed(k8s_api, team.namespace, "gpuquotas")[0] | {"Age": None} == {
        "Name": "gpus",
        "Used": "a100 4/4",
        "Waiting": 1,
        "Age": None,
    }

    # `mlplane queue` shows the pool, the quota and the line; --watch follows the edit below.
    output = tmp_path / "queue.txt"
    env = os.environ | {"KUBECONFIG": str(kubeconfig)}
    command = [MLPLANE, "queue", "-n", team.namespace]
    with output.open("w") as sink:
        subprocess.run(command, env=env, stdout=sink, check=True, timeout=60)
    [view] = queue_views(output)
    assert ["a100", "-", "-", "4", "1", "4"] in view  # pool, no NodePool, held, waiting, queued
    assert [team.namespace, "gpus", "a100", "4", "4", "4"] in view
    [queued] = [row for row in view if "trainingjob/g2" in row]
    assert queued[:6] == [team.namespace, "a100", "1", "trainingjob/g2", "4", "WaitingForQuota"]
    with output.open("w") as sink:
        watch = [*command, "--watch", "--interval", "0.5"]
        watching = subprocess.Popen(watch, env=env, stdout=sink)
    try:
        wait_for(lambda: queue_views(output), 30)

        team.objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            team.namespace,
            "gpuquotas",
            "gpus",
            {"spec": {"pools": [{"name": "a100", "gpus": 8}]}},
        )
        edited = time.monotonic()
        wait_for(phase_is(team, "g2", "Starting"), 15, every=0.05)
        waited = time.monotonic() - edited
        assert waited < 2 * INTERVAL + 1.0, f"admitted {waited:.1f}s after the quota was raised"
        assert wait_for(lambda: quota_shows("a100 8/8"), 3 * INTERVAL + 5)["waiting"] == 0

        def watch_shows_g2_admitted() -> bool:
            view = (queue_views(output) or [[]])[-1]
            return [team.namespace, "gpus", "a100", "8", "8", "0"] in view and not any(
                "trainingjob/g2" in row for row in view
            )

        wait_for(watch_shows_g2_admitted, 10)
    finally:
        watching.kill()
        watching.wait()


def test_a_job_larger_than_its_pool_fails_at_once_and_holds_up_no_one(
    namespaces: Callable[[str], Resources],
) -> None:
    team = namespaces(f"kuberay-big-{SUFFIX}")
    team.apply(training_job("big", workers=7))  # 28 GPUs; a100 has 3 nodes of 8
    failed = wait_for(phase_is(team, "big", "Failed"), 30)
    reason = conditions(failed)["Failed"]
    assert reason["reason"] == "ExceedsPoolCapacity"
    assert reason["message"] == "needs 28 a100 GPUs; pool a100 has 24 GPUs in all"
    apply_in_order(team, training_job("after"))
    assert status(team, "after")["phase"] == "Starting"
    assert rayjobs(team) == ["after-a1"]


def test_a_node_pool_resource_places_and_counts_work_by_its_nodes_without_a_restart(
    namespaces: Callable[[str], Resources], k8s_api: client.ApiClient, kubeconfig: Path
) -> None:
    team = namespaces(f"kuberay-np-{SUFFIX}")
    objects = client.CustomObjectsApi(k8s_api)
    name = f"t4-{SUFFIX}"  # the operator's configuration has no such pool

    def on_pool(job: str, workers: int) -> dict[str, Any]:
        found = training_job(job, workers=workers)
        found["spec"]["resources"]["nodePool"] = name
        return found

    def shown(summary: str) -> dict[str, Any]:
        found = objects.get_cluster_custom_object(GROUP, VERSION, "nodepools", name)
        return found.get("status", {}) if found.get("status", {}).get("summary") == summary else {}

    def select(pool: str) -> dict[str, Any]:
        return {
            "nodeSelector": {"mlplane.dev/pool": pool},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }

    objects.create_cluster_custom_object(
        GROUP,
        VERSION,
        "nodepools",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodePool", "metadata": {"name": name},
         "spec": select("t4")},
    )  # fmt: skip
    try:
        # Its GPUs are its kwok nodes' allocatable: 2 t4 nodes of 4.
        counted = wait_for(lambda: shown("0/8"), 3 * INTERVAL + 5)
        assert (counted["nodes"], counted["capacity"], counted["gpusPerNode"]) == (2, 8, 4)

        apply_in_order(team, on_pool("small", workers=1))
        assert status(team, "small")["phase"] == "Starting"
        worker = rayjob(team, "small-a1")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        assert worker["template"]["spec"]["nodeSelector"] == {"mlplane.dev/pool": "t4"}
        cluster = kuberay_reached(team, "small", "Running")["status"]["rayClusterName"]
        workers = [
            pod.spec.node_name
            for pod in pods_of(k8s_api, team.namespace, cluster)
            if pod.metadata.labels["ray.io/node-type"] == "worker"
        ]
        assert [node[:3] for node in workers] == ["t4-"]
        assert wait_for(lambda: shown("4/8"), 3 * INTERVAL + 5)["allocated"] == 4
        queue = subprocess.run(
            [MLPLANE, "queue", "-n", team.namespace],
            env=os.environ | {"KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        pools = [line.split() for line in queue.stdout.splitlines()]
        assert [name, "2", "4/8", "4", "0", "0"] in pools  # nodes, GPUs, held, waiting, queued

        team.apply(on_pool("big", workers=3))
        failed = wait_for(phase_is(team, "big", "Failed"), 30)
        assert conditions(failed)["Failed"]["message"] == (
            f"needs 12 {name} GPUs; pool {name} has 8 GPUs in all"
        )

        # An edit counts from the next admission: the pool is now the a100 nodes, 3 of 8.
        objects.patch_cluster_custom_object(
            GROUP, VERSION, "nodepools", name, {"spec": select("a100")}
        )
        wait_for(lambda: shown("4/24"), 3 * INTERVAL + 5)
        apply_in_order(team, on_pool("bigger", workers=3))
        assert status(team, "bigger")["phase"] == "Starting"
        worker = rayjob(team, "bigger-a1")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        assert worker["template"]["spec"]["nodeSelector"] == {"mlplane.dev/pool": "a100"}
    finally:
        objects.delete_cluster_custom_object(GROUP, VERSION, "nodepools", name)


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


def test_a_cluster_no_node_can_hold_says_so_within_an_interval(
    namespaces: Callable[[str], Resources],
) -> None:
    team = namespaces(f"kuberay-unfit-{SUFFIX}")
    huge = training_job("huge")
    huge["spec"]["resources"]["perWorker"]["cpu"] = 200  # a100 nodes have 96
    team.apply(huge)
    kuberay_reached(team, "huge", "Initializing")  # and there KubeRay stays, saying nothing

    def unschedulable() -> dict[str, Any]:
        running = conditions(status(team, "huge")).get("Running", {})
        return running if running.get("reason") == "Unschedulable" else {}

    stuck = wait_for(unschedulable, KUBERAY_TIMEOUT)
    assert stuck["status"] == "False"
    assert "Insufficient cpu" in stuck["message"], stuck["message"]
    assert status(team, "huge")["phase"] == "Starting"


def test_a_ray_image_no_node_can_pull_is_named_on_the_job(
    namespaces: Callable[..., Resources], kubeconfig: Path, mlflow_server: str, tmp_path: Path
) -> None:
    """A platform team's typo in `ray_image`: KubeRay's pods wait in ErrImagePull (kwok plays the
    kubelet, for a registry that does not resolve) and KubeRay's RayJob says only Initializing;
    the job says why. Its own operator, as `ray_image` is the operator's setting."""
    image = "registry.invalid/mlplane/runtime:typo"
    # One operator on a cluster writes NodePool status: the module's.
    settings = {"ray_image": image, "node_pool_status": False}
    operator = start_kuberay_operator(
        kubeconfig, mlflow_server, tmp_path, f"pull-{SUFFIX}", **settings
    )
    try:
        team = namespaces(f"pull-{SUFFIX}", operator)
        team.apply(training_job("typo"))

        def cannot_pull() -> dict[str, Any]:
            running = conditions(status(team, "typo")).get("Running", {})
            return running if running.get("reason") == "ErrImagePull" else {}

        stuck = wait_for(cannot_pull, KUBERAY_TIMEOUT)
        assert stuck["status"] == "False"
        assert image in stuck["message"] and "no such host" in stuck["message"], stuck["message"]
        assert status(team, "typo")["phase"] == "Starting"
        assert rayjob(team, "typo-a1")["status"]["jobDeploymentStatus"] == "Initializing"
        team.delete("trainingjobs", "typo")  # while its operator runs to release it
        wait_for(lambda: "typo" not in trainingjobs(team), 30)
    finally:
        operator.stop()


def test_kuberay_ends_a_job_past_its_deadline(namespaces: Callable[[str], Resources]) -> None:
    team = namespaces(f"kuberay-deadline-{SUFFIX}")
    team.apply(training_job("slow", activeDeadlineSeconds=3))
    assert rayjob(team, "slow-a1")["spec"]["activeDeadlineSeconds"] == 3
    failed = wait_for(phase_is(team, "slow", "Failed"), 30)
    assert conditions(failed)["Failed"]["reason"] == "DeadlineExceeded"


def test_kueue_gets_a_suspended_labelled_rayjob(
    namespaces: Callable[[str], Resources],
) -> None:
    team = namespaces(f"kuberay-kueue-{SUFFIX}")
    team.apply(training_job("kq", queueName="team-a-gpus"))
    found = rayjob(team, "kq-a1")
    assert found["spec"]["suspend"] is True
    assert found["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    kuberay_reached(team, "kq", "Suspended")  # KubeRay holds it: no RayCluster
    waiting = wait_for(phase_is(team, "kq", "Queued"), 15)
    assert waiting["queue"]["name"] == "team-a-gpus"
    assert conditions(waiting)["Admitted"]["status"] == "Unknown"
    # Kueue admits by unsuspending the RayJob; KubeRay then starts the cluster.
    team.objects.patch_namespaced_custom_object(
        "ray.io", "v1", team.namespace, "rayjobs", "kq-a1", {"spec": {"suspend": False}}
    )
    started = wait_for(phase_is(team, "kq", "Starting"), 30)
    assert conditions(started)["Admitted"]["reason"] == "KueueAdmitted"
    kuberay_reached(team, "kq", "Running")


def test_the_ledger_survives_an_operator_restart(
    namespaces: Callable[[str], Resources],
    k8s_api: client.ApiClient,
    kuberay_operator: OperatorProcess,
    mlflow_server: str,
) -> None:
    team = namespaces(RESTARTED)
    apply_in_order(team, *(training_job(f"s{n}") for n in (1, 2, 3)))
    reports_running(team, k8s_api, "s2", phase_is(team, "s2", "Running"))

    kuberay_operator.kill()
    team.apply(training_job("s4"))  # arrives while no operator runs
    kuberay_operator.start()
    kuberay_operator.wait_healthy(STARTUP_TIMEOUT)
    # A restarted operator lists every object before its first decision: on a loaded machine that
    # has taken over 15 s, as its first start has (test_gpu_job_runs_through_kuberays_states).
    wait_for(phase_is(team, "s4", "Queued"), 60)
    time.sleep(3 * INTERVAL)  # every timer has run at least twice since the restart
    # Nothing admitted twice, no GPU counted twice: the same two hold the quota, in line order.
    assert rayjobs(team) == ["s1-a1", "s2-a1"]
    assert [status(team, f"s{n}")["attempts"] for n in (1, 2)] == [1, 1]
    assert [status(team, f"s{n}")["queue"]["position"] for n in (3, 4)] == [1, 2]

    ray_job_reports(team, k8s_api, "s1", "SUCCEEDED", mlflow_server)
    wait_for(phase_is(team, "s3", "Starting"), 30)
    # s4's own timer moves it up once s3 has left the line.
    wait_for(lambda: status(team, "s4")["queue"]["position"] == 1, 15)
    assert rayjobs(team) == ["s1-a1", "s2-a1", "s3-a1"]
