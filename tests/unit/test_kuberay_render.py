"""What the kuberay backend puts on the cluster, and how it reads KubeRay's status back."""

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from urllib3.exceptions import HTTPError

from mlplane.crds.trainingjob import ResourceRequest
from mlplane.operator.backends.base import AttemptRef, Launch, Owner
from mlplane.operator.backends.kuberay import (
    KUEUE_QUEUE_LABEL,
    SUBMISSION_LABEL,
    KubeRayBackend,
    Placement,
    job_state,
    kuberay_name,
    placements,
    pod_problem,
    render_rayjob,
)
from mlplane.operator.config import NodePool, OperatorConfig

A100 = NodePool(
    name="a100",
    node_selector={"mlplane.dev/pool": "a100"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    gpus_per_node=8,
)
CPU = NodePool(name="cpu", node_selector={"mlplane.dev/pool": "cpu"})


def launch(**extra) -> Launch:
    return Launch(
        submission_id="mlplane-u1-2",
        entrypoint="python -m mlplane.training train --spec-json e30=",
        owner=Owner("mlplane.dev/v1alpha1", "TrainingJob", "churn", "team-a", "u1"),
        attempt=2,
        resources=ResourceRequest.model_validate(
            {"workers": 2, "perWorker": {"cpu": 4, "memory": "16Gi", "gpu": 4}, "nodePool": "a100"}
        ),
        runtime_env={"env_vars": {"A": "1"}},
        active_deadline_seconds=3600,
        **extra,
    )


DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""What KubeRay asks of a RayJob's or RayService's name (besides its 47 characters)."""


@pytest.mark.parametrize(
    "name",
    ["churn", "7day-churn", "churn-" + "x" * 57, "0" * 63, "churn-" + "x" * 37 + "-y"],
)
def test_every_kubernetes_name_becomes_one_kuberay_takes(name: str) -> None:
    for suffix in ("", "-a1", "-a12"):
        stand_in = kuberay_name(name, suffix)
        assert DNS_1035_LABEL.match(stand_in) and len(stand_in) <= 47, stand_in
        assert stand_in.endswith(suffix)
        assert stand_in.lstrip("r").startswith(name[:20])  # still readable as the resource's


def test_names_kuberay_takes_are_kept_and_stand_ins_never_collide() -> None:
    assert kuberay_name("churn", "-a2") == "churn-a2"
    assert kuberay_name("x" * 44, "-a1") == "x" * 44 + "-a1"
    cut = ["churn-" + "x" * 50 + tail for tail in ("a", "b")]
    assert kuberay_name(cut[0], "-a1") != kuberay_name(cut[1], "-a1")
    assert kuberay_name("7day-churn") != kuberay_name("r7day-churn")


def render(**extra) -> dict:
    return render_rayjob(launch(**extra), Placement("mlplane/runtime:0.1", CPU, A100))


def test_workers_land_on_the_gpu_pool_and_tolerate_its_taint() -> None:
    group = render()["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"mlplane.dev/pool": "a100"}
    assert pod["tolerations"] == A100.tolerations
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "4"
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "4"}
    assert group["rayStartParams"] == {"num-cpus": "4", "num-gpus": "4"}
    # The Ray node label lets Serve replicas (and anything else) select the pool. KubeRay 1.5
    # refuses it inside rayStartParams: it goes in the group's own labels.
    assert group["labels"] == {"mlplane.dev/pool": "a100"}


def test_head_runs_on_the_cpu_pool_without_gpus() -> None:
    head = render()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["template"]["spec"]["nodeSelector"] == {"mlplane.dev/pool": "cpu"}
    assert "tolerations" not in head["template"]["spec"]
    assert head["rayStartParams"]["num-cpus"] == "0"


def test_job_settings_owner_and_name() -> None:
    rayjob = render()
    spec = rayjob["spec"]
    assert spec["entrypoint"].startswith("python -m mlplane.training train")
    assert spec["jobId"] == "mlplane-u1-2"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["suspend"] is False
    assert json.loads(spec["runtimeEnvYAML"]) == {"env_vars": {"A": "1"}}
    assert spec["ttlSecondsAfterFinished"] == 600
    assert rayjob["metadata"]["name"] == "churn-a2"
    assert rayjob["metadata"]["labels"]["mlplane.dev/submission-id"] == "mlplane-u1-2"
    owner = rayjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingJob", "u1", True)


def pod_templates(rayjob: dict) -> dict[str, dict]:
    """Every pod template of a RayJob by role: what KubeRay makes each of its pods from."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"]["template"],
        "worker": cluster["workerGroupSpecs"][0]["template"],
        "submitter": rayjob["spec"]["submitterPodTemplate"],
    }


def test_every_pod_runs_as_rays_non_root_user_without_a_kubernetes_token() -> None:
    for role, template in pod_templates(render()).items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, role
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 100,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, role
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }, role
        # The label the chart's NetworkPolicy admits to MLflow, and `kubectl get pods -l` finds.
        assert template["metadata"]["labels"] == {"mlplane.dev/name": "churn"}, role


def test_the_submitter_is_kuberays_default_pod_on_the_head_pool() -> None:
    submitter = render()["spec"]["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert submitter["nodeSelector"] == {"mlplane.dev/pool": "cpu"}
    [container] = submitter["containers"]
    # KubeRay fills in `ray job submit` for a container of this name that has no command.
    assert container["name"] == "ray-job-submitter" and "command" not in container
    assert container["image"] == "mlplane/runtime:0.1"
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}


def test_kueue_gets_a_suspended_labelled_rayjob() -> None:
    rayjob = render(queue_name="team-a-gpus")
    assert rayjob["spec"]["suspend"] is True
    assert rayjob["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-gpus"


@pytest.mark.parametrize(
    ("status", "expected", "reason"),
    [
        (None, "PENDING", ""),
        ({"jobDeploymentStatus": "Initializing"}, "PENDING", ""),
        ({"jobDeploymentStatus": "Suspended"}, "PENDING", "Suspended"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "RUNNING", ""),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "SUCCEEDED", ""),
        (
            {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "ran 3600s"},
            "FAILED",
            "DeadlineExceeded",
        ),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "FAILED", ""),
        (
            {
                "jobDeploymentStatus": "ValidationFailed",
                "reason": "ValidationFailed",
                "message": "The RayJob metadata is invalid: ...",
            },
            "FAILED",
            "ValidationFailed",
        ),
    ],
)
def test_status_mapping(status: dict | None, expected: str, reason: str) -> None:
    state = job_state(status)
    assert (state.status, state.reason) == (expected, reason)


def test_failure_keeps_kuberays_reason_and_message() -> None:
    state = job_state(
        {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "ran 3600s"}
    )
    assert state.message == "DeadlineExceeded: ran 3600s"


def initializing(*conditions: dict) -> dict:
    return {
        "jobDeploymentStatus": "Initializing",
        "rayClusterStatus": {"conditions": list(conditions)},
    }


def test_an_image_that_cannot_be_pulled_is_named_not_hidden_in_initializing() -> None:
    state = job_state(
        initializing(
            {
                "type": "HeadPodReady",
                "status": "False",
                "reason": "ImagePullBackOff",
                "message": 'Back-off pulling image "mlplane/runtime:typo"',
            }
        )
    )
    assert (state.status, state.reason) == ("PENDING", "ImagePullBackOff")
    assert "mlplane/runtime:typo" in state.message


def test_pods_a_resource_quota_forbids_are_reported_as_quota() -> None:
    state = job_state(
        initializing(
            {
                "type": "RayClusterReplicaFailure",
                "status": "True",
                "reason": "FailedCreateWorkerPod",
                "message": 'pods "churn-a1-workers-x" is forbidden: exceeded quota: gpus',
            }
        )
    )
    assert state.reason == "ResourceQuotaExceeded"
    assert state.message.startswith("FailedCreateWorkerPod: pods")


def test_pods_still_being_created_are_not_a_problem() -> None:
    state = job_state(
        initializing(
            {"type": "HeadPodReady", "status": "False", "reason": "ContainerCreating"},
            {"type": "RayClusterProvisioned", "status": "False", "reason": "PodsProvisioning"},
        )
    )
    assert (state.status, state.reason) == ("PENDING", "")


def test_placements_come_from_the_node_pools() -> None:
    config = OperatorConfig(node_pools=[A100, CPU], ray_image="example/ray:1")
    placement = placements(config)("a100")
    assert (placement.image, placement.head_pool, placement.worker_pool) == (
        "example/ray:1",
        CPU,  # the first pool without GPUs, unless head_node_pool says otherwise
        A100,
    )
    assert placements(config)(None).worker_pool is None
    pinned = OperatorConfig(node_pools=[A100, CPU], head_node_pool="a100")
    assert placements(pinned)("a100").head_pool == A100


OWNER = Owner("mlplane.dev/v1alpha1", "TrainingJob", "churn", "team-a", "u1")


def watched_backend(status: dict, problems: dict | None = None) -> KubeRayBackend:
    """A backend whose watch has seen RayJob churn-a2 (attempt 2) with `status`, and whose API
    server cannot be reached: any read that misses the watch fails."""
    unreachable = client.Configuration(host="http://127.0.0.1:1")
    unreachable.retries = False
    seen = {
        "metadata": {
            "name": "churn-a2",
            "namespace": "team-a",
            "uid": "r1",
            "labels": {SUBMISSION_LABEL: "mlplane-u1-2"},
        },
        "status": status,
    }
    problems = {} if problems is None else problems
    return KubeRayBackend(
        client.ApiClient(unreachable),
        lambda pool: Placement("mlplane/runtime:0.1", CPU, A100),
        observed=lambda namespace, name: (
            seen if (namespace, name) == ("team-a", "churn-a2") else None
        ),
        cluster_problems=lambda namespace, cluster: problems.get((namespace, cluster)),
    )


def test_a_rayjob_the_watch_has_seen_is_observed_without_asking_the_api_server() -> None:
    """Timers read the operator's own watch; only a RayJob it has not seen costs a GET."""
    backend = watched_backend({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    assert backend.state(AttemptRef("mlplane-u1-2", OWNER, 2)).status == "RUNNING"
    # Not seen (another attempt) or a namesake of another submission: asked for, and here the
    # API server cannot answer.
    for ref in (AttemptRef("mlplane-u1-3", OWNER, 3), AttemptRef("mlplane-other-2", OWNER, 2)):
        with pytest.raises(HTTPError):
            backend.state(ref)


def ray_pod(name: str, **status) -> dict:
    return {"metadata": {"name": name}, "status": status}


def test_a_pod_no_node_fits_is_named_with_the_schedulers_reasons() -> None:
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/7 nodes are available: 3 Insufficient cpu.",
    }
    assert pod_problem(ray_pod("w", phase="Pending", conditions=[unschedulable])) == (
        "Unschedulable",
        "pod w: 0/7 nodes are available: 3 Insufficient cpu.",
    )


def test_a_container_stuck_on_its_image_is_named() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "x"'}}
    stuck = ray_pod("h", containerStatuses=[{"name": "ray-head", "state": waiting}])
    assert pod_problem(stuck) == ("ImagePullBackOff", 'pod h: Back-off pulling "x"')


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Pending"},  # not yet looked at by the scheduler
        {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
        },
        {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    ],
)
def test_pods_on_their_way_have_no_problem(status: dict) -> None:
    assert pod_problem(ray_pod("w", **status)) is None


def test_a_cluster_kuberay_waits_on_says_why_from_its_pods() -> None:
    problems = {("team-a", "churn-a2-x7k"): ("Unschedulable", "pod w: 0/7 nodes are available")}
    backend = watched_backend(
        {"jobDeploymentStatus": "Initializing", "rayClusterName": "churn-a2-x7k"}, problems
    )
    ref = AttemptRef("mlplane-u1-2", OWNER, 2)
    state = backend.state(ref)
    assert (state.status, state.reason) == ("PENDING", "Unschedulable")
    assert state.message == "pod w: 0/7 nodes are available"
    # Once the pods are fine again, KubeRay's own word stands.
    problems.clear()
    assert backend.state(ref).reason == ""


def test_the_readme_operator_config_loads_and_names_the_ray_version(monkeypatch) -> None:
    repo = Path(__file__).parents[2]
    monkeypatch.chdir(repo)  # the block names its node-pool file relative to the checkout
    readme = (repo / "README.md").read_text()
    block = readme.split("```yaml\nbackend: kuberay", 1)[1].split("```", 1)[0]
    config = OperatorConfig.model_validate(yaml.safe_load("backend: kuberay" + block))
    assert config.ray_version == "2.60.0" and config.through_kubernetes_proxy
    rayjob = render_rayjob(launch(), placements(config)("a100"))
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    # Unset, it is the operator's own Ray: the one the mlplane image carries.
    assert OperatorConfig().ray_version == importlib.metadata.version("ray")


def test_the_jobs_secrets_reach_the_driver_and_workers_by_envfrom_never_the_rayjob() -> None:
    rayjob = render(secret_env=("s3-credentials", "mlflow-login"))
    templates = pod_templates(rayjob)
    for role in ("head", "worker"):
        assert templates[role]["spec"]["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "s3-credentials"}},
            {"secretRef": {"name": "mlflow-login"}},
        ]
    assert "envFrom" not in templates["submitter"]["spec"]["containers"][0]  # it only submits
    assert json.loads(rayjob["spec"]["runtimeEnvYAML"]) == {"env_vars": {"A": "1"}}
    without = pod_templates(render()).values()
    assert all("envFrom" not in template["spec"]["containers"][0] for template in without)
