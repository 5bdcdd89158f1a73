"""What the kuberay serving backend puts on the cluster, and how it reads a RayService back."""

import pytest
import yaml

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends.base import Owner
from mlplane.operator.backends.kuberay import RAY_POOL_LABEL, Placement, kuberay_name
from mlplane.operator.backends.rayservice import app_state, pool_of, render_rayservice
from mlplane.operator.config import NodePool, OperatorConfig
from mlplane.serving.config import ModelRef, serve_application

T4 = NodePool(
    name="t4",
    node_selector={"mlplane.dev/pool": "t4"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    gpus_per_node=4,
)
CPU = NodePool(name="cpu", node_selector={"mlplane.dev/pool": "cpu"})
OWNER = Owner("mlplane.dev/v1alpha1", "ModelDeployment", "churn", "team-a", "u9")


def application(name: str = "churn", **ray: object) -> dict:
    deployment = ModelDeployment.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"model": {"uri": "models:/churn@prod"}, "ray": ray},
        }
    )
    # The kuberay runtime passes the Ray pool label, so replicas select their pool.
    return serve_application(
        deployment, ModelRef("models:/churn/7", "7"), node_pool_label=RAY_POOL_LABEL
    )


def render(app: dict) -> dict:
    return render_rayservice(app, OWNER, Placement("mlplane/runtime:0.1", CPU, T4))


def test_serve_config_is_the_ray_backends_application() -> None:
    app = application(nodePool="t4")
    rayservice = render(app)
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == {"applications": [app]}
    meta = rayservice["metadata"]
    assert (meta["namespace"], meta["name"]) == ("team-a", "churn")
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", "u9", True)


def test_a_name_kuberay_would_refuse_gets_a_stand_in_and_keeps_its_label() -> None:
    meta = render(application("2026-churn"))["metadata"]
    assert meta["name"] == kuberay_name("2026-churn") != "2026-churn"
    assert meta["labels"] == {"mlplane.dev/name": "2026-churn"}


def test_one_worker_per_replica_on_the_replicas_pool() -> None:
    app = application(
        nodePool="t4",
        replicas={"min": 2, "max": 6},
        perReplica={"cpu": "500m", "memory": "2Gi", "gpu": 1},
    )
    assert pool_of(app) == "t4"
    cluster = render(app)["spec"]["rayClusterConfig"]
    group = cluster["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 6)
    assert cluster["enableInTreeAutoscaling"] is True
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"mlplane.dev/pool": "t4"}
    assert pod["tolerations"] == T4.tolerations
    assert pod["containers"][0]["resources"]["requests"] == {
        "cpu": "500m",
        "memory": str(2 * 1024**3),
        "nvidia.com/gpu": "1",
    }
    assert group["labels"] == {"mlplane.dev/pool": "t4"}
    assert "labels" not in group["rayStartParams"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"mlplane.dev/pool": "cpu"}
    # Serve's controller and proxy run on the head, replicas on the workers: both read the mode.
    for spec in (head, pod):
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"


def test_fixed_replicas_need_no_autoscaler() -> None:
    cluster = render(application(replicas={"min": 2, "max": 2}))["spec"]["rayClusterConfig"]
    assert "enableInTreeAutoscaling" not in cluster
    assert "autoscalerOptions" not in cluster
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is False


HARDENED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_serving_pods_run_non_root_and_only_the_autoscaler_holds_a_token() -> None:
    cluster = render(application(replicas={"min": 1, "max": 3}))["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]
    worker = cluster["workerGroupSpecs"][0]["template"]
    for template in (head, worker):
        pod = template["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 100,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod["containers"][0]["securityContext"] == HARDENED_CONTAINER
        assert template["metadata"]["labels"] == {"mlplane.dev/name": "churn"}
    # Replica pods, where the model's code runs, get no Kubernetes credential. KubeRay's
    # autoscaler, which it adds to the head, scales the workers through the Kubernetes API: the
    # head keeps the token of the ServiceAccount KubeRay makes for it.
    assert worker["spec"]["automountServiceAccountToken"] is False
    assert head["spec"]["automountServiceAccountToken"] is True
    assert cluster["autoscalerOptions"] == {"securityContext": HARDENED_CONTAINER}


def served(app: dict, generation: int = 2, observed: int = 2, **status: object) -> dict:
    rayservice = render(app)
    rayservice["metadata"]["generation"] = generation
    rayservice["status"] = {"observedGeneration": observed, **status}
    return rayservice


def active(app_status: str, server: str, available: int = 2, desired: int = 2) -> dict:
    return {
        "activeServiceStatus": {
            "applicationStatuses": {
                "team-a.churn": {
                    "status": app_status,
                    "serveDeploymentStatuses": {"ModelServer": {"status": server}},
                }
            },
            "rayClusterStatus": {
                "availableWorkerReplicas": available,
                "desiredWorkerReplicas": desired,
            },
        }
    }


def test_running_application_reports_its_config_and_replicas() -> None:
    app = application()
    state = app_state(served(app, **active("RUNNING", "HEALTHY")), "team-a.churn")
    assert (state.status, state.ready_replicas, state.desired_replicas) == ("RUNNING", 2, 2)
    assert state.config == app


def test_a_spec_kuberay_has_not_acted_on_is_not_live_yet() -> None:
    app = application()
    behind = app_state(served(app, observed=1, **active("RUNNING", "HEALTHY")), "team-a.churn")
    assert behind.config is None
    upgrading = served(
        app, **active("RUNNING", "HEALTHY"), pendingServiceStatus={"rayClusterName": "churn-x"}
    )
    assert app_state(upgrading, "team-a.churn").config is None


def test_a_cluster_that_cannot_start_says_why() -> None:
    stuck = served(
        application(),
        pendingServiceStatus={
            "rayClusterStatus": {
                "conditions": [
                    {
                        "type": "HeadPodReady",
                        "status": "False",
                        "reason": "ErrImagePull",
                        "message": "pull access denied",
                    }
                ]
            }
        },
    )
    state = app_state(stuck, "team-a.churn")
    assert state.status == "NOT_STARTED"
    assert state.message == "ErrImagePull: pull access denied"
    assert app_state(None, "team-a.churn").status == "MISSING"


def test_a_replica_no_node_fits_is_named_from_its_pod() -> None:
    waiting = served(application(), pendingServiceStatus={"rayClusterName": "churn-x"})
    unschedulable = ("Unschedulable", "pod churn-x-t4-abc: 0/7 nodes are available")
    state = app_state(waiting, "team-a.churn", pods=unschedulable)
    assert state.status == "NOT_STARTED"
    assert state.message == "Unschedulable: pod churn-x-t4-abc: 0/7 nodes are available"
    # Without a problem on the pods it is only waiting.
    assert app_state(waiting, "team-a.churn").message == "waiting for the RayCluster"


def test_serve_is_reached_through_the_api_server_only_from_outside_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert OperatorConfig(
        backend="kuberay", checkpoint_storage="s3://b/c"
    ).through_kubernetes_proxy  # cluster DNS is not ours
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # what the kubelet sets in a pod
    assert not OperatorConfig(
        backend="kuberay", checkpoint_storage="s3://b/c"
    ).through_kubernetes_proxy
    assert OperatorConfig(use_kubernetes_proxy=True).through_kubernetes_proxy  # no route to pods
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert not OperatorConfig(use_kubernetes_proxy=False).through_kubernetes_proxy
