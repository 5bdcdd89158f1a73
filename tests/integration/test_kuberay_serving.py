"""A ModelDeployment on the kuberay backend: the reconciler writes a RayService to the real API
server, reads KubeRay's status back, and the real scheduler places its replicas' pool.

KubeRay's status moves are written by the test (tests/kuberay_standin.py). Budget: about 10 s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kuberay_standin import install_crds, set_status
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
MODEL_URI = "s3://models/churn/"  # not a registry URI: served as written, no MLflow lookup


@pytest.fixture
def namespace(k8s_api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """A namespace no operator watches: the reconciler under test is the only one acting."""
    install_crds(k8s_api)
    core = client.CoreV1Api(k8s_api)
    name = f"kuberay-serving-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"mlplane.dev/test": "true"}}})
    yield name
    core.delete_namespace(name)


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

    # Repeating the step changes nothing on the cluster.
    deployment.status = step.status
    reconciler.reconcile(deployment)
    again = objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "churn")
    assert again["metadata"]["resourceVersion"] == rayservice["metadata"]["resourceVersion"]

    # KubeRay reports the application running on one worker.
    set_status(
        k8s_api,
        namespace,
        "rayservices",
        "churn",
        {
            "observedGeneration": again["metadata"]["generation"],
            "serviceStatus": "Running",
            "activeServiceStatus": {
                "applicationStatuses": {
                    f"{namespace}.churn": {
                        "status": "RUNNING",
                        "serveDeploymentStatuses": {"ModelServer": {"status": "HEALTHY"}},
                    }
                },
                "rayClusterStatus": {"availableWorkerReplicas": 1, "desiredWorkerReplicas": 1},
            },
        },
    )
    status = reconciler.reconcile(deployment).status
    assert status.phase == "Available"
    assert status.url == f"http://churn-serve-svc.{namespace}.svc:8000/{namespace}/churn"
    assert (status.replicas.ready, status.replicas.desired) == (1, 1)

    # The worker template lands on a t4 node, past the GPU taint.
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": "replica"}, "spec": workers["template"]["spec"]}
    )
    deadline = time.monotonic() + 30
    while not (node := core.read_namespaced_pod("replica", namespace).spec.node_name):
        assert time.monotonic() < deadline, "the scheduler did not bind the replica's pod"
        time.sleep(0.2)
    assert node.startswith("t4-")

    reconciler.delete(deployment)
    with pytest.raises(ApiException) as gone:
        objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "churn")
    assert gone.value.status == 404
