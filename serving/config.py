"""The Ray Serve application config of one ModelDeployment, as plain data.

A pure function of the resource and the models it resolved to: the `ray` backend PUTs it to Serve's
REST API, and the `kuberay` backend embeds the very same dict in a RayService's `serveConfigV2`.
It therefore imports nothing from Ray; `mlplane.serving.app` is only named, by import path.

One application per ModelDeployment, with two deployments:

- `ModelServer`, the HTTP ingress. Every replica holds the stable model and, during a canary, the
  canary model too, and routes each request by the canary percentage. The model URIs are init
  args, so a model change is a Serve rolling update (new replicas are ready before old ones stop);
  the percentage is `user_config`, so a canary step is an in-place reconfigure with no restart.
- `MetricsCollector`, one replica, no CPU: every ModelServer replica pushes its request counts and
  latency histogram there each second, so `GET <route>/-/metrics` sees the whole application.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlplane.crds.base import quantity_value
from mlplane.crds.modeldeployment import ModelDeployment

IMPORT_PATH = "mlplane.serving.app:build"
SERVER_DEPLOYMENT = "ModelServer"
COLLECTOR_DEPLOYMENT = "MetricsCollector"

SERVE_PROCESS_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
"""The environment of every Ray process that runs Serve (set on the Ray node, not the app: the
controller and proxy read it when they start). Serve's throughput mode runs user code and the
router on the replica's own event loop, talks gRPC from proxy to replica and buffers access logs;
on 2 cores that raised throughput at 64 clients from 25 to 73 requests/s (docs/benchmarks.md).
Its direct ingress stays off: it replaces the proxy by one application on port 8000, and a
cluster serves every ModelDeployment under its own route prefix."""


@dataclass(frozen=True)
class ModelRef:
    """A model as served: a URI pinned to one version when the registry has versions."""

    uri: str
    version: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"uri": self.uri, "version": self.version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRef:
        return cls(uri=str(data["uri"]), version=data.get("version"))


def app_name(namespace: str, name: str) -> str:
    """The Serve application name: unique per cluster, and `.` occurs in neither part."""
    return f"{namespace}.{name}"


def route_prefix(deployment: ModelDeployment) -> str:
    """`spec.ray.routePrefix`, else `/<namespace>/<name>`."""
    prefix = deployment.spec.ray.route_prefix
    return prefix or f"/{deployment.metadata.namespace or 'default'}/{deployment.metadata.name}"


def serve_application(
    deployment: ModelDeployment,
    stable: ModelRef,
    canary: ModelRef | None = None,
    canary_percent: int = 0,
    env: dict[str, str] | None = None,
    node_pool_label: str | None = None,
) -> dict[str, Any]:
    """One entry of Serve's `applications` list for this deployment.

    `env` becomes the replicas' environment (MLFLOW_TRACKING_URI, S3 endpoint and the like).
    `node_pool_label` is the Ray node label that names a node pool (KubeRay worker groups carry
    one); with it, `spec.ray.nodePool` turns into a label selector. The local `ray` backend has no
    pools and passes None.
    """
    ray = deployment.spec.ray
    batching = ray.batching
    replicas = ray.replicas
    actor_options: dict[str, Any] = {
        "num_cpus": float(quantity_value(ray.per_replica.cpu)),
        "num_gpus": float(ray.per_replica.gpu),
    }
    if ray.per_replica.memory is not None:
        actor_options["memory"] = float(quantity_value(ray.per_replica.memory))
    if node_pool_label and ray.node_pool:
        actor_options["label_selector"] = {node_pool_label: ray.node_pool}
    server: dict[str, Any] = {
        "name": SERVER_DEPLOYMENT,
        # Batching only pays when a replica may hold a batch's worth of requests at once, and
        # keeps the model busy when it holds two: one predicting, the next one filling. Requests
        # over the limit wait in the proxy, which retries them with a backoff.
        "max_ongoing_requests": max(
            2 * batching.max_batch_size, math.ceil(replicas.target_ongoing_requests * 2), 5
        ),
        "autoscaling_config": {
            "min_replicas": replicas.min,
            "max_replicas": replicas.max,
            "target_ongoing_requests": replicas.target_ongoing_requests,
        },
        "ray_actor_options": actor_options,
        # A model change starts the new replicas before the old ones stop: no capacity gap.
        "max_surge_percent": 100,
        "user_config": {"canaryPercent": canary_percent if canary else 0},
    }
    collector = {
        "name": COLLECTOR_DEPLOYMENT,
        "num_replicas": 1,
        "max_ongoing_requests": 1000,
        "ray_actor_options": {"num_cpus": 0.0},
    }
    application: dict[str, Any] = {
        "name": app_name(deployment.metadata.namespace or "default", deployment.metadata.name),
        "route_prefix": route_prefix(deployment),
        "import_path": IMPORT_PATH,
        "args": {
            "stable": stable.to_dict(),
            "canary": canary.to_dict() if canary else None,
            "maxBatchSize": batching.max_batch_size,
            "batchWaitTimeoutS": batching.timeout_ms / 1000,
            "maxBodyBytes": ray.max_request_bytes,
        },
        "deployments": [server, collector],
    }
    if env:
        application["runtime_env"] = {"env_vars": dict(sorted(env.items()))}
    return application


def canary_percent(application: dict[str, Any]) -> int:
    """The canary share an application config routes (0 without a canary)."""
    if not application.get("args", {}).get("canary"):
        return 0
    for deployment in application.get("deployments", []):
        if deployment.get("name") == SERVER_DEPLOYMENT:
            return int((deployment.get("user_config") or {}).get("canaryPercent", 0))
    return 0
