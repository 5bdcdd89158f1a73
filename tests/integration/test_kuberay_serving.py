"""A ModelDeployment on the kuberay backend: the reconciler writes a RayService to the real API
server, reads KubeRay's status back, and the real scheduler places its replicas' pool.

The RayService lands on KubeRay's own CRDs, whose schema prunes any field KubeRay does not know.
KubeRay's RayService status (the application RUNNING on a healthy replica, which a real Serve
would report) is written by the test. Budget: about 10 s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.crds.base import GROUP, VERSION
from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends.kuberay import RAY_POOL_LABEL, placements
from mlplane.operator.backends.rayservice import RayServiceBackend
from mlplane.operator.config import OperatorConfig
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelDeploymentReconciler
from mlplane.serving.config import ModelRef, serve_application

pytestmark = pytest.mark.cluster

REPO = Path(__file__).parents[2]
T = TypeVar("T")
MODEL_URI = "s3://models/churn/"  # not a registry URI: served as written, no MLflow lookup


@pytest.fixture
def namespace(k8s_api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """A namespace no mlplane operator watches: the reconciler under test is the only one."""
    core = client.CoreV1Api(k8s_api)
    name = f"kuberay-serving-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"mlplane.dev/test": "true"}}})
    yield name
    core.delete_namespace(name)


def eventually(probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"not true within {timeout:.0f}s: {probe}"
        time.sleep(0.2)
    return found


def rayservice_status(objects: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    found = objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "churn")
    return found.get("status") or {}


def test_model_deployment_becomes_a_rayservice_on_its_pool(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(k8s_api)
    created = objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "churn"},
            "spec": {
                "model": {"uri": MODEL_URI},
                "ray": {
                    "replicas": {"min": 1, "max": 3},
                    "perReplica": {"cpu": 1, "gpu": 1},
                    "nodePool": "t4",
                },
            },
        },
    )
    deployment = ModelDeployment.model_validate(created)
    config = OperatorConfig(node_pools_file=REPO / "operator" / "cluster" / "nodepools.yaml")
    reconciler = ModelDeploymentReconciler(
        RayServiceBackend(k8s_api, placements(config)),
        MlflowModelResolver("http://127.0.0.1:1"),  # never asked: the URI is not a registry's
        job_models=lambda namespace, name: None,
        node_pool_label=RAY_POOL_LABEL,
    )

    step = reconciler.reconcile(deployment)
    assert step.status.phase == "Deploying"
    rayservice = objects.get_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayservices", "churn"
    )
    owner = rayservice["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("ModelDeployment", created["metadata"]["uid"])
    served = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    expected = serve_application(deployment, ModelRef(MODEL_URI), node_pool_label=RAY_POOL_LABEL)
    assert served == [expected]  # the very config the ray backend would PUT to Serve
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 3)

    # Repeating the step leaves the spec alone (KubeRay writes status and finalizers meanwhile).
    deployment.status = step.status
    reconciler.reconcile(deployment)
    again = objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "churn")
    assert again["metadata"]["generation"] == rayservice["metadata"]["generation"]
    assert again["spec"] == rayservice["spec"]

    # KubeRay accepts it and makes its RayCluster; the scheduler binds the replica's worker pod
    # to a t4 node (past the GPU taint) and the head to a cpu node.
    cluster = eventually(
        lambda: (
            rayservice_status(objects, namespace)
            .get("pendingServiceStatus", {})
            .get("rayClusterName")
        )
    )
    core = client.CoreV1Api(k8s_api)

    def bound() -> dict[str, str]:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"ray.io/cluster={cluster},ray.io/node-type"
        ).items
        nodes = {p.metadata.labels["ray.io/node-type"]: p.spec.node_name for p in pods}
        return nodes if len(pods) == 2 and all(nodes.values()) else {}

    nodes = eventually(bound)
    assert nodes["worker"].startswith("t4-") and nodes["head"].startswith("cpu-")
    ready = eventually(
        lambda: (
            found
            if (
                found := objects.get_namespaced_custom_object(
                    "ray.io", "v1", namespace, "rayclusters", cluster
                )
            )
            .get("status", {})
            .get("state")
            == "ready"
            else None
        )
    )
    assert reconciler.reconcile(deployment).status.phase == "Deploying"

    # Serve inside the cluster reports the application running (kwok pods run no Serve, so the
    # test writes what KubeRay would read from it), and KubeRay makes the cluster the active one.
    objects.patch_namespaced_custom_object_status(
        "ray.io",
        "v1",
        namespace,
        "rayservices",
        "churn",
        {
            "status": {
                "observedGeneration": again["metadata"]["generation"],
                "serviceStatus": "Running",
                "pendingServiceStatus": None,
                "activeServiceStatus": {
                    "rayClusterName": cluster,
                    "rayClusterStatus": ready["status"],
                    "applicationStatuses": {
                        f"{namespace}.churn": {
                            "status": "RUNNING",
                            "serveDeploymentStatuses": {"ModelServer": {"status": "HEALTHY"}},
                        }
                    },
                },
            }
        },
    )
    status = reconciler.reconcile(deployment).status
    assert status.phase == "Available"
    assert status.url == f"http://churn-serve-svc.{namespace}.svc:8000/{namespace}/churn"
    assert (status.replicas.ready, status.replicas.desired) == (1, 1)

    reconciler.delete(deployment)
    with pytest.raises(ApiException) as gone:
        objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "churn")
    assert gone.value.status == 404
