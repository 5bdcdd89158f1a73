"""The `kuberay` backend: each attempt is a `ray.io/v1` RayJob owned by the resource.

`render_rayjob` is a pure function (spec in, dict out) so what lands on the cluster is unit-tested
without one; `KubeRayBackend` only creates, reads and deletes the objects it renders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.crds.base import quantity_value
from mlplane.operator.backends.base import JobState, Launch
from mlplane.operator.config import NodePool

RAY_GROUP, RAY_VERSION = "ray.io", "v1"
SUBMISSION_LABEL = "mlplane.dev/submission-id"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass(frozen=True)
class Placement:
    """Where and with what image RayJobs run: the operator's cluster-specific settings."""

    image: str
    head_pool: NodePool | None = None
    worker_pool: NodePool | None = None
    ttl_seconds_after_finished: int = 600
    head_resources: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})


def rayjob_name(launch: Launch) -> str:
    """Readable and unique per attempt; short enough for KubeRay's derived pod names."""
    return f"{launch.owner.name[:40]}-a{launch.attempt}"


def _pod_spec(
    container: str, image: str, resources: dict[str, Any], pool: NodePool | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": container, "image": image, "resources": resources}]
    }
    if pool:
        if pool.node_selector:
            spec["nodeSelector"] = dict(pool.node_selector)
        if pool.tolerations:
            spec["tolerations"] = list(pool.tolerations)
    return spec


def _worker_resources(launch: Launch, pool: NodePool | None) -> dict[str, Any]:
    per_worker = launch.resources.per_worker
    requests: dict[str, Any] = {"cpu": str(per_worker.cpu)}
    if per_worker.memory is not None:
        requests["memory"] = str(per_worker.memory)
    limits = dict(requests)
    if per_worker.gpu:
        gpu_resource = pool.gpu_resource if pool else "nvidia.com/gpu"
        requests[gpu_resource] = limits[gpu_resource] = str(per_worker.gpu)
    return {"requests": requests, "limits": limits}


def render_rayjob(launch: Launch, placement: Placement) -> dict[str, Any]:
    """The RayJob for one attempt: head on the CPU pool, workers on the requested pool."""
    workers = launch.resources.workers
    per_worker = launch.resources.per_worker
    labels = {SUBMISSION_LABEL: launch.submission_id, "mlplane.dev/name": launch.owner.name}
    if launch.queue_name:
        labels[KUEUE_QUEUE_LABEL] = launch.queue_name
    worker_start_params = {"num-cpus": str(int(max(1, quantity_value(per_worker.cpu))))}
    if per_worker.gpu:
        worker_start_params["num-gpus"] = str(per_worker.gpu)
    spec: dict[str, Any] = {
        "entrypoint": launch.entrypoint,
        "jobId": launch.submission_id,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": placement.ttl_seconds_after_finished,
        # Kueue admits a suspended RayJob by unsuspending it; without Kueue it starts at once.
        "suspend": bool(launch.queue_name),
        "rayClusterSpec": {
            "headGroupSpec": {
                # The head only coordinates: no training runs there.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": {
                    "spec": _pod_spec(
                        "ray-head",
                        placement.image,
                        {
                            "requests": dict(placement.head_resources),
                            "limits": dict(placement.head_resources),
                        },
                        placement.head_pool,
                    )
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": worker_start_params,
                    "template": {
                        "spec": _pod_spec(
                            "ray-worker",
                            placement.image,
                            _worker_resources(launch, placement.worker_pool),
                            placement.worker_pool,
                        )
                    },
                }
            ],
        },
    }
    if launch.runtime_env:
        spec["runtimeEnvYAML"] = json.dumps(launch.runtime_env)  # JSON is YAML
    if launch.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = launch.active_deadline_seconds
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": rayjob_name(launch),
            "namespace": launch.owner.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": launch.owner.api_version,
                    "kind": launch.owner.kind,
                    "name": launch.owner.name,
                    "uid": launch.owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def job_state(rayjob_status: dict[str, Any] | None) -> JobState:
    """KubeRay's two status fields folded into one JobState, failure reasons kept."""
    status = rayjob_status or {}
    deployment = status.get("jobDeploymentStatus", "")
    job = status.get("jobStatus", "")
    reason = status.get("reason", "")
    message = status.get("message", "")
    detail = f"{reason}: {message}" if reason and message else reason or message
    if deployment == "Failed" or job == "FAILED":
        return JobState("FAILED", detail or "RayJob failed", reason)
    if deployment == "Complete" and job == "SUCCEEDED":
        return JobState("SUCCEEDED", detail)
    if job == "STOPPED":
        return JobState("STOPPED", detail, reason)
    if deployment == "Running" and job == "RUNNING":
        return JobState("RUNNING", detail)
    return JobState("PENDING", detail or deployment or "waiting for the RayCluster", reason)


class KubeRayBackend:
    """Create, observe and delete RayJobs through the Kubernetes API."""

    name = "kuberay"

    def __init__(self, api: client.ApiClient, placement_for: Callable[[Launch], Placement]) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.placement_for = placement_for

    def submit(self, launch: Launch) -> None:
        body = render_rayjob(launch, self.placement_for(launch))
        try:
            self.objects.create_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, launch.owner.namespace, "rayjobs", body
            )
        except ApiException as error:
            if error.status != 409:  # already created by an earlier, interrupted step
                raise

    def _find(self, submission_id: str) -> dict[str, Any] | None:
        found = self.objects.list_cluster_custom_object(
            RAY_GROUP, RAY_VERSION, "rayjobs", label_selector=f"{SUBMISSION_LABEL}={submission_id}"
        )
        items = found.get("items", [])
        return items[0] if items else None

    def state(self, submission_id: str) -> JobState:
        rayjob = self._find(submission_id)
        if rayjob is None:
            return JobState("MISSING")
        return job_state(rayjob.get("status"))

    def logs_tail(self, submission_id: str, lines: int = 20) -> str:
        rayjob = self._find(submission_id)
        return (rayjob or {}).get("status", {}).get("message", "")

    def stop(self, submission_id: str) -> None:
        rayjob = self._find(submission_id)
        if rayjob is None:
            return
        meta = rayjob["metadata"]
        try:
            self.objects.delete_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, meta["namespace"], "rayjobs", meta["name"]
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def dashboard_url(self, submission_id: str) -> str | None:
        rayjob = self._find(submission_id)
        return (rayjob or {}).get("status", {}).get("dashboardURL")
