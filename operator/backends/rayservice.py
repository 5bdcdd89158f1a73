"""The `kuberay` serving backend: one `ray.io/v1` RayService per ModelDeployment.

It implements the same `ServingBackend` protocol as Serve's REST API, so the ModelDeployment
reconciler (canary steps, rollback, status) is the same for both backends. The Serve application
is the very dict `mlplane.serving.config.serve_application` builds; `render_rayservice` embeds it
in `serveConfigV2` and sizes the worker group from it: one worker pod per replica, on the node pool
the application's label selector names, between the autoscaling bounds. A canary step changes only
`user_config`, so KubeRay applies it to the running cluster in place; a change of resources or pool
changes `rayClusterConfig`, which KubeRay rolls out as a new cluster with no downtime.

A RayService is named after its ModelDeployment, or the stand-in `kuberay_name` makes where
KubeRay would refuse the name (one starting with a digit, or longer than 47 characters). A
RayService KubeRay refuses all the same (a spec it cannot run) gets no status at all: KubeRay
says why only in a Warning Event on it. Until KubeRay has acted on a RayService's generation,
`state` reads those Events, so the deployment fails with KubeRay's reason and message instead of
deploying forever.

Serve's own figures (the live metrics on the status, the canary's guard) come from the
application's HTTP route on KubeRay's `<name>-serve-svc` Service. An operator inside the cluster
reaches it by cluster DNS; one outside (on a laptop, or on a cluster without a route to pod IPs)
goes through the API server's service proxy, as KubeRay's own operator does with
`--use-kubernetes-proxy`. Without it, figures would never come and a canary would hold its first
step forever.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import requests
import urllib3
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.crds.base import API_VERSION, GROUP, VERSION
from mlplane.operator.backends.base import Owner
from mlplane.operator.backends.kuberay import (
    NAME_LABEL,
    RAY_API_VERSION,
    RAY_GROUP,
    RAY_POOL_LABEL,
    RAY_VERSION,
    ClusterProblems,
    Placement,
    cluster_problem,
    cluster_spec,
    kuberay_name,
    owner_reference,
    unobserved,
    worker_group,
)
from mlplane.operator.backends.serve import (
    METRICS_PATH,
    AppState,
    metrics_query,
    read_metrics,
    same_config,
)
from mlplane.serving.config import SERVE_PROCESS_ENV, SERVER_DEPLOYMENT

SERVE_PORT = 8000
"""Serve's HTTP port in KubeRay's `<name>-serve-svc` Service."""


def serve_service(rayservice: str) -> str:
    """The Service KubeRay puts in front of a RayService's Serve proxies."""
    return f"{rayservice}-serve-svc"


def split_app_name(app: str) -> tuple[str, str]:
    """`namespace.name` (mlplane.serving.config.app_name) → (namespace, ModelDeployment name)."""
    namespace, name = app.split(".", 1)
    return namespace, name


def rayservice_of(app: str) -> tuple[str, str]:
    """`namespace.name` (mlplane.serving.config.app_name) → its RayService's (namespace, name)."""
    namespace, deployment = split_app_name(app)
    return namespace, kuberay_name(deployment)


def _cpu_quantity(cpus: float) -> str:
    millis = int(Decimal(str(cpus)) * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def pool_of(application: dict[str, Any]) -> str | None:
    """The node pool the application's replicas select (their Ray label selector)."""
    server = _server(application)
    return (server["ray_actor_options"].get("label_selector") or {}).get(RAY_POOL_LABEL)


def _server(application: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in application["deployments"] if d["name"] == SERVER_DEPLOYMENT)


def rayservice_spec(application: dict[str, Any], placement: Placement) -> dict[str, Any]:
    """The spec serving `application`: head on the CPU pool, one worker pod per replica."""
    server = _server(application)
    options = server["ray_actor_options"]
    autoscaling = server["autoscaling_config"]
    least, most = autoscaling["min_replicas"], autoscaling["max_replicas"]
    memory = options.get("memory")
    workers = worker_group(
        placement,
        (least, least, most),
        _cpu_quantity(max(options["num_cpus"], 0.001)),
        str(int(memory)) if memory else None,
        int(options.get("num_gpus", 0)),
    )
    # Serve's autoscaler asks Ray for replicas; Ray's asks KubeRay for worker pods.
    _, name = split_app_name(application["name"])
    cluster = cluster_spec(placement, workers, name, autoscaling=most > least)
    for group in (cluster["headGroupSpec"], workers):
        _add_serve_env(group)
    return {
        "serveConfigV2": yaml.safe_dump({"applications": [application]}, sort_keys=False),
        "rayClusterConfig": cluster,
    }


def _add_serve_env(group: dict[str, Any]) -> None:
    env = [{"name": name, "value": value} for name, value in SERVE_PROCESS_ENV.items()]
    for container in group["template"]["spec"]["containers"]:
        container["env"] = [*container.get("env", []), *env]


def render_rayservice(
    application: dict[str, Any], owner: Owner, placement: Placement
) -> dict[str, Any]:
    """The RayService for `application`, owned by its ModelDeployment."""
    namespace, deployment = split_app_name(application["name"])
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": kuberay_name(deployment),
            "namespace": namespace,
            "labels": {NAME_LABEL: deployment},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": rayservice_spec(application, placement),
    }


def deployed_application(rayservice: dict[str, Any]) -> dict[str, Any] | None:
    """The application a RayService's serveConfigV2 holds (there is one)."""
    config = yaml.safe_load(rayservice.get("spec", {}).get("serveConfigV2") or "") or {}
    applications = config.get("applications") or []
    return applications[0] if applications else None


def _contains(current: Any, wanted: Any) -> bool:
    """Whether `current` has every field `wanted` sets (the API server may add defaults)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(
            k in current and _contains(current[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(current, list)
            and len(current) == len(wanted)
            and all(_contains(c, w) for c, w in zip(current, wanted, strict=True))
        )
    return same_config({"v": current}, {"v": wanted})


def app_state(
    rayservice: dict[str, Any] | None, app: str, pods: tuple[str, str] | None = None
) -> AppState:
    """A RayService's status in the terms of Serve's own application status; `pods` is why one
    of its clusters' pods cannot start (`pod_problem`), which KubeRay's status does not say.

    `config` is set only once KubeRay has acted on the latest spec and no new cluster is being
    rolled out: only then is the spec's application what Serve runs.
    """
    if rayservice is None:
        return AppState("MISSING")
    status = rayservice.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    problem = (
        cluster_problem(active.get("rayClusterStatus"))
        or cluster_problem(pending.get("rayClusterStatus"))
        or pods
    )
    found = (active.get("applicationStatuses") or {}).get(app)
    if found is None:
        message = f"{problem[0]}: {problem[1]}" if problem else "waiting for the RayCluster"
        return AppState("NOT_STARTED", message)
    generation = rayservice.get("metadata", {}).get("generation", 0)
    caught_up = status.get("observedGeneration", 0) >= generation and not pending.get(
        "rayClusterName"
    )
    deployments = found.get("serveDeploymentStatuses") or {}
    healthy = (deployments.get(SERVER_DEPLOYMENT) or {}).get("status") == "HEALTHY"
    cluster = active.get("rayClusterStatus") or {}
    messages = {n: d["message"] for n, d in deployments.items() if d.get("message")}
    if problem:
        messages["RayCluster"] = f"{problem[0]}: {problem[1]}"
    return AppState(
        status=found.get("status", "NOT_STARTED"),
        message=found.get("message", ""),
        config=deployed_application(rayservice) if caught_up else None,
        ready_replicas=int(cluster.get("availableWorkerReplicas", 0)) if healthy else 0,
        desired_replicas=int(cluster.get("desiredWorkerReplicas", 0)),
        deployment_messages=messages,
    )


KUBERAY_REFUSALS = frozenset({"InvalidRayServiceMetadata", "InvalidRayServiceSpec"})
"""The Event reasons KubeRay gives a RayService it will not run until its spec changes."""


def _event_time(event: client.CoreV1Event) -> datetime:
    """When an Event last happened: Events set one, two or all three of these."""
    return (
        event.last_timestamp
        or event.event_time
        or event.first_timestamp
        or datetime.min.replace(tzinfo=UTC)
    )


class RayServiceBackend:
    """Serve through KubeRay: create, update, read and delete RayServices."""

    name = "kuberay"

    def __init__(
        self,
        api: client.ApiClient,
        placement_for: Callable[[str | None], Placement],
        cluster_problems: ClusterProblems = unobserved,
        timeout_seconds: float = 5.0,
        through_api_server: bool = False,
    ) -> None:
        """`cluster_problems` is the operator's watch of Ray pods (see KubeRayBackend);
        `through_api_server` reads Serve's figures through the API server's service proxy."""
        self.api = api
        self.objects = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.placement_for = placement_for
        self.cluster_problems = cluster_problems
        self.timeout = timeout_seconds
        self.through_api_server = through_api_server
        self.session = requests.Session()
        # route prefix → its RayService's (namespace, name): learnt from every application read
        # or written.
        self._routes: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def _remember(self, application: dict[str, Any]) -> None:
        with self._lock:
            self._routes[application["route_prefix"]] = rayservice_of(application["name"])

    def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self.objects.get_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, namespace, "rayservices", name
                ),
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _owner(self, namespace: str, name: str) -> Owner:
        deployment = cast(
            dict[str, Any],
            self.objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "modeldeployments", name
            ),
        )
        return Owner(API_VERSION, "ModelDeployment", name, namespace, deployment["metadata"]["uid"])

    def apply(self, application: dict[str, Any]) -> bool:
        self._remember(application)
        namespace, deployment = split_app_name(application["name"])
        name = kuberay_name(deployment)
        placement = self.placement_for(pool_of(application))
        current = self._get(namespace, name)
        if current is None:
            body = render_rayservice(application, self._owner(namespace, deployment), placement)
            self.objects.create_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, namespace, "rayservices", body
            )
            return True
        wanted = rayservice_spec(application, placement)
        cluster_same = _contains(
            current["spec"].get("rayClusterConfig"), wanted["rayClusterConfig"]
        )
        if cluster_same and same_config(deployed_application(current), application):
            return False
        self.objects.patch_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, "rayservices", name, {"spec": wanted}
        )
        return True

    def state(self, name: str) -> AppState:
        rayservice = self._get(*rayservice_of(name))
        application = deployed_application(rayservice) if rayservice else None
        if application:
            self._remember(application)
        refusal = self._refusal(rayservice) if rayservice else None
        if refusal:
            return AppState("DEPLOY_FAILED", refusal)
        return app_state(rayservice, name, self._pods_problem(rayservice))

    def _refusal(self, rayservice: dict[str, Any]) -> str | None:
        """KubeRay's word on a RayService it has not acted on (no status for this generation):
        the newest of its validation Warning Events, as `Reason: message`."""
        meta = rayservice["metadata"]
        observed = (rayservice.get("status") or {}).get("observedGeneration", 0)
        if observed >= meta.get("generation", 0):
            return None
        events = self.core.list_namespaced_event(
            meta["namespace"],
            field_selector=f"involvedObject.uid={meta['uid']},type=Warning",
        ).items
        refusals = [e for e in events if (e.reason or "") in KUBERAY_REFUSALS]
        if not refusals:
            return None
        newest = max(refusals, key=_event_time)
        return f"{newest.reason}: {newest.message}"

    def _pods_problem(self, rayservice: dict[str, Any] | None) -> tuple[str, str] | None:
        """Why a pod of the cluster being rolled out (or else of the serving one) cannot start."""
        if rayservice is None:
            return None
        status = rayservice.get("status") or {}
        for side in ("pendingServiceStatus", "activeServiceStatus"):
            cluster = (status.get(side) or {}).get("rayClusterName")
            if cluster and (
                problem := self.cluster_problems(rayservice["metadata"]["namespace"], cluster)
            ):
                return problem
        return None

    def metrics(self, route_prefix: str, window_seconds: float) -> dict[str, Any] | None:
        if not self.through_api_server:
            return read_metrics(self.session, self.url(route_prefix), window_seconds, self.timeout)
        namespace, name = self._route(route_prefix)
        path = (
            f"/api/v1/namespaces/{namespace}/services/{serve_service(name)}:{SERVE_PORT}/proxy"
            f"{route_prefix.rstrip('/')}{METRICS_PATH}"
        )
        # The API client's own request, for its credentials and CA (a kubeconfig's or the pod's).
        request = self.api.param_serialize(
            "GET", path, query_params=metrics_query(window_seconds), auth_settings=["BearerToken"]
        )
        try:
            response = self.api.call_api(*request, _request_timeout=self.timeout)
            body = response.read()
        except (ApiException, urllib3.exceptions.HTTPError):
            return None
        return json.loads(body) if response.status == 200 else None

    def remove(self, name: str) -> None:
        namespace, rayservice = rayservice_of(name)
        try:
            self.objects.delete_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, namespace, "rayservices", rayservice
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def url(self, route_prefix: str) -> str:
        """The route on the RayService's Serve Service (in-cluster DNS)."""
        namespace, name = self._route(route_prefix)
        return (
            f"http://{serve_service(name)}.{namespace}.svc:{SERVE_PORT}{route_prefix.rstrip('/')}"
        )

    def _route(self, route_prefix: str) -> tuple[str, str]:
        """The (namespace, name) of the RayService serving `route_prefix`."""
        with self._lock:
            return self._routes[route_prefix]
