"""A ModelDeployment on the kuberay backend: the reconciler writes a RayService to the real API
server, reads KubeRay's status back, and the real scheduler places its replicas' pool.

The RayService lands on KubeRay's own CRDs, whose schema prunes any field KubeRay does not know.
KubeRay's RayService status (the application RUNNING on a healthy replica, which a real Serve
would report) is written by the test. An operator outside the cluster reads Serve's figures
through the API server's service proxy; kwok pods run no Serve, so the test answers for it on
this machine's own address, behind a pod and Service of the names KubeRay gives them.
Budget: about 25 s.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.crds.base import GROUP, VERSION
from mlplane.crds.modeldeployment import Canary, ModelDeployment
from mlplane.operator.backends.kuberay import RAY_POOL_LABEL, placements
from mlplane.operator.backends.rayservice import RayServiceBackend
from mlplane.operator.config import OperatorConfig
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelDeploymentReconciler
from mlplane.serving.config import ModelRef, serve_application

pytestmark = pytest.mark.cluster

REPO = Path(__file__).parents[2]
T = TypeVar("T")
MODEL_URI = "s3://models/churn/"  # not a registry URI: served as written, no MLflow lookup
CANARY_URI = "s3://models/churn-v2/"


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


def ready_cluster(objects: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    """The RayCluster once KubeRay calls it ready (its pods run on kwok nodes)."""

    def ready() -> dict[str, Any] | None:
        try:
            found = objects.get_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayclusters", name
            )
        except ApiException as error:
            if error.status == 404:  # named in the RayService's status a moment before
                return None
            raise
        return found if found.get("status", {}).get("state") == "ready" else None

    return eventually(ready)


def serve_reports_running(
    objects: client.CustomObjectsApi, namespace: str, cluster: str, ready: dict[str, Any]
) -> None:
    """What KubeRay writes once Serve in `cluster` runs the RayService's current spec on a
    healthy replica. kwok pods run no Serve, so the test writes it (KubeRay's real objects
    beneath are untouched)."""
    current = objects.get_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayservices", "churn"
    )
    objects.patch_namespaced_custom_object_status(
        "ray.io",
        "v1",
        namespace,
        "rayservices",
        "churn",
        {
            "status": {
                "observedGeneration": current["metadata"]["generation"],
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


def create_deployment(objects: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    return objects.create_namespaced_custom_object(
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


def kuberay_reconciler(
    k8s_api: client.ApiClient, through_api_server: bool = False
) -> ModelDeploymentReconciler:
    config = OperatorConfig(node_pools_file=REPO / "operator" / "cluster" / "nodepools.yaml")
    return ModelDeploymentReconciler(
        RayServiceBackend(k8s_api, placements(config), through_api_server=through_api_server),
        MlflowModelResolver("http://127.0.0.1:1"),  # never asked: the URIs are not a registry's
        job_models=lambda namespace, name: None,
        node_pool_label=RAY_POOL_LABEL,
    )


def test_model_deployment_becomes_a_rayservice_on_its_pool(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(k8s_api)
    created = create_deployment(objects, namespace)
    deployment = ModelDeployment.model_validate(created)
    reconciler = kuberay_reconciler(k8s_api)

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
    ready = ready_cluster(objects, namespace, cluster)
    assert reconciler.reconcile(deployment).status.phase == "Deploying"

    # Serve inside the cluster reports the application running (kwok pods run no Serve, so the
    # test writes what KubeRay would read from it), and KubeRay makes the cluster the active one.
    serve_reports_running(objects, namespace, cluster, ready)
    status = reconciler.reconcile(deployment).status
    assert status.phase == "Available"
    assert status.url == f"http://churn-serve-svc.{namespace}.svc:8000/{namespace}/churn"
    assert (status.replicas.ready, status.replicas.desired) == (1, 1)

    reconciler.delete(deployment)
    with pytest.raises(ApiException) as gone:
        objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "churn")
    assert gone.value.status == 404


class ServeFigures(ThreadingHTTPServer):
    """Answers `<route>/-/metrics` as Serve's proxy in a Ray pod would, with `figures`."""

    def __init__(self, address: str) -> None:
        self.figures: dict[str, Any] = {}
        self.asked: list[str] = []
        super().__init__((address, 0), _FiguresHandler)


class _FiguresHandler(BaseHTTPRequestHandler):
    server: ServeFigures

    def do_GET(self) -> None:
        self.server.asked.append(self.path)
        body = json.dumps(self.server.figures).encode()
        self.send_response(200 if self.path.split("?")[0].endswith("/-/metrics") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def outside_loopback() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.254", 9))
        return probe.getsockname()[0]


@pytest.fixture
def serve_in_cluster(k8s_api: client.ApiClient, namespace: str) -> Iterator[ServeFigures]:
    """`churn-serve-svc`, the Service KubeRay makes once Serve runs, with one endpoint: a Serve
    pod whose IP is this machine's. The API server proxies only to an endpoint that is a pod
    with that IP, never to loopback; the pod is never scheduled, so no kubelet rewrites it."""
    server = ServeFigures(outside_loopback())
    address, port = server.server_address[:2]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    core = client.CoreV1Api(k8s_api)
    pod = "churn-head-serve"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": pod},
            "spec": {
                "schedulerName": "nobody",
                "containers": [{"name": "ray-head", "image": "mlplane/runtime:test"}],
            },
        },
    )
    core.patch_namespaced_pod_status(
        pod, namespace, {"status": {"podIP": address, "podIPs": [{"ip": address}]}}
    )
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "churn-serve-svc"},
            "spec": {"ports": [{"name": "serve", "port": 8000, "targetPort": port}]},
        },
    )
    core.create_namespaced_endpoints(
        namespace,
        {
            "metadata": {"name": "churn-serve-svc"},
            "subsets": [
                {
                    "addresses": [
                        {
                            "ip": address,
                            "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
                        }
                    ],
                    "ports": [{"name": "serve", "port": port}],
                }
            ],
        },
    )
    yield server
    server.shutdown()
    server.server_close()


def figures(canary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Serve's figures (mlplane.serving.app) with a healthy stable model and `canary`."""
    stable = {"requests": 750, "errors": 0, "errorRate": 0.0, "p50Ms": 8.0, "p99Ms": 40.0}
    roles = {"stable": stable, **({"canary": canary} if canary else {})}
    return {
        "windowSeconds": 60,
        "total": {"rps": 12.5, "p50Ms": 8.0, "p99Ms": 40.0, "errorRate": 0.0},
        "roles": roles,
    }


def test_serving_figures_and_the_canary_guard_come_through_the_api_server(
    k8s_api: client.ApiClient, namespace: str, serve_in_cluster: ServeFigures
) -> None:
    objects = client.CustomObjectsApi(k8s_api)
    deployment = ModelDeployment.model_validate(create_deployment(objects, namespace))
    reconciler = kuberay_reconciler(k8s_api, through_api_server=True)
    deployment.status = reconciler.reconcile(deployment).status
    cluster = eventually(
        lambda: (
            rayservice_status(objects, namespace)
            .get("pendingServiceStatus", {})
            .get("rayClusterName")
        )
    )
    ready = ready_cluster(objects, namespace, cluster)
    serve_in_cluster.figures = figures()

    serve_reports_running(objects, namespace, cluster, ready)
    status = reconciler.reconcile(deployment).status
    assert status.phase == "Available"
    assert status.metrics is not None
    assert (status.metrics.rps, status.metrics.p99_ms) == (12.5, 40.0)
    # The application's own route, over the status's window, by way of the API server.
    assert serve_in_cluster.asked == [f"/{namespace}/churn/-/metrics?window=60"]

    # A canary whose every request fails: its figures come the same way, and it rolls back.
    deployment.status = status
    deployment.spec.canary = Canary.model_validate(
        {"model": {"uri": CANARY_URI}, "steps": [50], "intervalSeconds": 60}
    )
    deployment.status = reconciler.reconcile(deployment).status
    assert deployment.status.canary is not None
    assert deployment.status.canary.outcome == "InProgress"
    serve_reports_running(objects, namespace, cluster, ready)  # Serve took the 50 % split
    deployment.status = reconciler.reconcile(deployment).status  # the step's clock starts
    failing = {"requests": 20, "errors": 20, "errorRate": 1.0, "p50Ms": 5.0, "p99Ms": 9.0}
    serve_in_cluster.figures = figures(canary=failing)
    time.sleep(1.0)
    serve_reports_running(objects, namespace, cluster, ready)
    step = reconciler.reconcile(deployment)
    assert step.status.canary is not None
    assert step.status.canary.outcome == "RolledBack"
    progressing = next(c for c in step.status.conditions if c.type == "Progressing")
    assert progressing.reason == "CanaryGuardBreached"
    assert f"canary {CANARY_URI}: error rate 100.0% > maxErrorRate" in progressing.message
    # The guard asked over the step so far; the status then over its minute.
    windows = [int(asked.split("?window=")[1]) for asked in serve_in_cluster.asked]
    assert windows[-2] < 60 and windows[-1] == 60
