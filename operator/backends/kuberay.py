"""The `kuberay` backend: each attempt is a `ray.io/v1` RayJob owned by the resource.

`render_rayjob` is a pure function (spec in, dict out) so what lands on the cluster is unit-tested
without one; `KubeRayBackend` only creates, reads and deletes the objects it renders. The RayJob of
an attempt is found again by name (`<resource>-a<attempt>`, readable in `kubectl get rayjobs`, or
the stand-in `kuberay_name` makes where KubeRay would refuse that), and its
`mlplane.dev/submission-id` label tells it apart from a same-named RayJob a deleted resource left
behind.

KubeRay reports a RayJob that cannot start as `Initializing` for as long as it cannot start. The
reason sits in the RayCluster conditions it copies into `status.rayClusterStatus` (a pod the
namespace's ResourceQuota forbids), which `job_state` lifts out, or only on the pods (one no node
fits, an image that cannot be pulled), which `pod_problem` reads from the operator's watch of Ray
pods: the resource says why instead of waiting silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlplane.crds.base import quantity_value
from mlplane.operator.backends.base import AttemptRef, JobState, Launch, Owner
from mlplane.operator.config import DEFAULT_RAY_VERSION, NodePool, OperatorConfig

RAY_GROUP, RAY_VERSION = "ray.io", "v1"
RAY_API_VERSION = f"{RAY_GROUP}/{RAY_VERSION}"
SUBMISSION_LABEL = "mlplane.dev/submission-id"
NAME_LABEL = "mlplane.dev/name"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RAY_POOL_LABEL = "mlplane.dev/pool"
"""The Ray node label (KubeRay's worker group `labels`, which it passes to `ray start --labels`)
naming the node pool a worker runs on; Serve replicas select their pool by it."""
RAY_UID, RAY_GID = 1000, 100
"""Who Ray pods run as: the `ray` user of Ray's official images (uid 1000, in group `users`,
gid 100), which an image built from them keeps. Numeric, so the kubelet can check it is not root
without reading the image's /etc/passwd."""
SUBMITTER_CONTAINER = "ray-job-submitter"
"""The name KubeRay gives the container of a RayJob's submitter pod."""

# Container waiting reasons that never clear by waiting: reported instead of "Initializing".
POD_PROBLEMS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class Placement:
    """Where and with what image Ray pods run: the operator's cluster-specific settings."""

    image: str
    head_pool: NodePool | None = None
    worker_pool: NodePool | None = None
    ray_version: str = DEFAULT_RAY_VERSION
    ttl_seconds_after_finished: int = 600
    head_resources: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})


def placements(config: OperatorConfig) -> Callable[[str | None], Placement]:
    """Node pool name (or None) → Placement, from the operator's configuration and the
    NodePools it watches, as they are at the time of the call."""

    def placement(pool: str | None) -> Placement:
        if config.head_node_pool:
            head = config.pool(config.head_node_pool)
        else:
            head = next((p for p in config.pools() if not p.gpus_per_node), None)
        worker = config.pool(pool) if pool else None
        return Placement(config.ray_image, head, worker, config.ray_version)

    return placement


KUBERAY_NAME_MAX = 47
"""The longest RayJob or RayService name KubeRay takes: it names a RayCluster after it with six
characters more, and that cluster's Services (`<cluster>-head-svc`) must stay DNS labels."""


def kuberay_name(name: str, suffix: str = "") -> str:
    """`name + suffix` if KubeRay takes it (a DNS-1035 label: a letter first, at most 47
    characters); otherwise a stand-in still recognisably `name`'s: an `r` before a leading digit,
    the name cut to fit, and six hex characters of its hash so that no two names share one.

    Kubernetes names may start with a digit and run to 63 characters; KubeRay refuses such a
    RayJob or RayService outright. With this, every name mlplane accepts runs on KubeRay as it
    does on a local Ray."""
    wanted = name + suffix
    if len(wanted) <= KUBERAY_NAME_MAX and wanted[:1].isalpha():
        return wanted
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    lead = "" if name[:1].isalpha() else "r"
    room = KUBERAY_NAME_MAX - len(lead) - len(digest) - len(suffix) - 1
    return f"{lead}{name[:room].rstrip('-')}-{digest}{suffix}"


def rayjob_name(owner_name: str, attempt: int) -> str:
    """Readable and unique per attempt, and one KubeRay takes."""
    return kuberay_name(owner_name, f"-a{attempt}")


def owner_reference(owner: Owner) -> dict[str, Any]:
    """The child's ownerReference: deleting the resource deletes it (and its pods)."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_security_context() -> dict[str, Any]:
    """Every container of a Ray pod, KubeRay's own included (the workers' wait-gcs-ready init
    container, the head's autoscaler), runs as Ray's non-root user under the runtime's default
    seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Nothing to gain: no setuid escalation, no Linux capabilities (Ray needs none)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_template(
    container: str,
    image: str,
    resources: dict[str, Any],
    pool: NodePool | None,
    secret_env: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A hardened pod template: one container, placed on `pool` (selector and tolerations),
    with the keys of the `secret_env` Secrets as its environment (the kubelet reads them: the
    values never pass through mlplane or into the RayJob).

    No ServiceAccount token is mounted: the code in a Ray pod (the tenant's own, in training
    and serving) never needs the Kubernetes API, so it gets no credential for it.
    """
    main: dict[str, Any] = {
        "name": container,
        "image": image,
        "resources": resources,
        "securityContext": container_security_context(),
    }
    if secret_env:
        main["envFrom"] = [{"secretRef": {"name": name}} for name in secret_env]
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [main],
    }
    if pool:
        if pool.node_selector:
            spec["nodeSelector"] = dict(pool.node_selector)
        if pool.tolerations:
            spec["tolerations"] = list(pool.tolerations)
    return {"spec": spec}


def cluster_spec(
    placement: Placement,
    workers: dict[str, Any],
    owner_name: str,
    autoscaling: bool = False,
    secret_env: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A RayCluster spec: the head, one worker group, and the Ray version KubeRay starts them
    with (without it KubeRay cannot tell which `ray start` flags the image takes, and the
    RayJob waits in Initializing with the error only in KubeRay's log).

    Every pod carries the owner's `mlplane.dev/name` label, by which the chart's NetworkPolicy
    lets them reach MLflow (and `kubectl get pods -l mlplane.dev/name=<name>` finds them).

    With `autoscaling`, KubeRay adds its autoscaler to the head pod: a container that scales the
    worker group through the Kubernetes API, so the head keeps the token of the ServiceAccount
    KubeRay makes for it, and the autoscaler gets the same container hardening.
    """
    head = head_group(placement, secret_env)
    for group in (head, workers):
        group["template"]["metadata"] = {"labels": {NAME_LABEL: owner_name}}
    spec: dict[str, Any] = {
        "rayVersion": placement.ray_version,
        "headGroupSpec": head,
        "workerGroupSpecs": [workers],
    }
    if autoscaling:
        spec["enableInTreeAutoscaling"] = True
        spec["autoscalerOptions"] = {"securityContext": container_security_context()}
        head["template"]["spec"]["automountServiceAccountToken"] = True
    return spec


def submitter_template(placement: Placement, owner_name: str) -> dict[str, Any]:
    """The pod that runs `ray job submit` (KubeRay fills in its command): KubeRay's own default
    (the head's image and resources) hardened like the Ray pods, on the head's pool."""
    resources = {
        "requests": {"cpu": "500m", "memory": "200Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    template = pod_template(SUBMITTER_CONTAINER, placement.image, resources, placement.head_pool)
    template["metadata"] = {"labels": {NAME_LABEL: owner_name}}
    template["spec"]["restartPolicy"] = "Never"
    return template


def head_group(placement: Placement, secret_env: tuple[str, ...] = ()) -> dict[str, Any]:
    """The head only coordinates (num-cpus 0): no training or replica runs there, but the job's
    driver does, so it sees the job's `secret_env` too."""
    resources = dict(placement.head_resources)
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": pod_template(
            "ray-head",
            placement.image,
            {"requests": resources, "limits": dict(resources)},
            placement.head_pool,
            secret_env,
        ),
    }


def worker_group(
    placement: Placement,
    replicas: tuple[int, int, int],
    cpu: int | str,
    memory: int | str | None,
    gpus: int,
    secret_env: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A worker group on the placement's pool; each pod holds what one Ray worker needs.

    `replicas` is (initial, min, max). Requests equal limits, so the pods are Guaranteed and the
    GPUs counted by a ResourceQuota are the GPUs the ledger admitted.
    """
    pool = placement.worker_pool
    requests: dict[str, Any] = {"cpu": str(cpu)}
    if memory is not None:
        requests["memory"] = str(memory)
    start_params = {"num-cpus": str(max(1, int(quantity_value(cpu))))}
    if gpus:
        gpu_resource = pool.gpu_resource if pool else "nvidia.com/gpu"
        requests[gpu_resource] = str(gpus)
        start_params["num-gpus"] = str(gpus)
    initial, least, most = replicas
    group: dict[str, Any] = {
        "groupName": pool.name if pool else "workers",
        "replicas": initial,
        "minReplicas": least,
        "maxReplicas": most,
        "rayStartParams": start_params,
        "template": pod_template(
            "ray-worker",
            placement.image,
            {"requests": requests, "limits": dict(requests)},
            pool,
            secret_env,
        ),
    }
    if pool:
        # KubeRay passes the group's `labels` to `ray start --labels` (and onto the pods); it
        # refuses the same labels given in rayStartParams.
        group["labels"] = {RAY_POOL_LABEL: pool.name}
    return group


def render_rayjob(launch: Launch, placement: Placement) -> dict[str, Any]:
    """The RayJob for one attempt: head on the CPU pool, workers on the requested pool."""
    workers = launch.resources.workers
    per_worker = launch.resources.per_worker
    labels = {SUBMISSION_LABEL: launch.submission_id, NAME_LABEL: launch.owner.name}
    if launch.queue_name:
        labels[KUEUE_QUEUE_LABEL] = launch.queue_name
    spec: dict[str, Any] = {
        "entrypoint": launch.entrypoint,
        "jobId": launch.submission_id,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": placement.ttl_seconds_after_finished,
        # Kueue admits a suspended RayJob by unsuspending it; without Kueue it starts at once.
        "suspend": bool(launch.queue_name),
        "rayClusterSpec": cluster_spec(
            placement,
            worker_group(
                placement,
                (workers, workers, workers),
                per_worker.cpu,
                per_worker.memory,
                per_worker.gpu,
                launch.secret_env,
            ),
            launch.owner.name,
            secret_env=launch.secret_env,
        ),
        "submitterPodTemplate": submitter_template(placement, launch.owner.name),
    }
    if launch.metadata:
        spec["metadata"] = dict(launch.metadata)
    if launch.runtime_env:
        spec["runtimeEnvYAML"] = json.dumps(launch.runtime_env)  # JSON is YAML
    if launch.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = launch.active_deadline_seconds
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": rayjob_name(launch.owner.name, launch.attempt),
            "namespace": launch.owner.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(launch.owner)],
        },
        "spec": spec,
    }


def cluster_problem(cluster_status: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when the RayCluster's pods cannot start, else None.

    A pod the namespace's ResourceQuota forbids is reported as ResourceQuotaExceeded, a head pod
    stuck on its container as the container's waiting reason (ImagePullBackOff and the like).
    """
    for condition in (cluster_status or {}).get("conditions") or []:
        kind, state = condition.get("type"), condition.get("status")
        reason, message = condition.get("reason", ""), condition.get("message", "")
        if kind == "RayClusterReplicaFailure" and state == "True":
            if "exceeded quota" in message:
                return "ResourceQuotaExceeded", f"{reason}: {message}"
            return reason or "ReplicaFailure", message
        if kind == "HeadPodReady" and state == "False" and reason in POD_PROBLEMS:
            return reason, message or f"the Ray head pod is in {reason}"
    return None


def job_state(rayjob_status: dict[str, Any] | None) -> JobState:
    """KubeRay's status folded into one JobState, failure and waiting reasons kept."""
    status = rayjob_status or {}
    return replace(_job_state(status), dashboard_url=status.get("dashboardURL") or None)


def _job_state(status: dict[str, Any]) -> JobState:
    deployment = status.get("jobDeploymentStatus", "")
    job = status.get("jobStatus", "")
    reason = status.get("reason", "")
    message = status.get("message", "")
    detail = f"{reason}: {message}" if reason and message else reason or message
    if deployment in ("Failed", "ValidationFailed") or job == "FAILED":
        return JobState("FAILED", detail or "RayJob failed", reason)
    if deployment == "Complete" and job == "SUCCEEDED":
        return JobState("SUCCEEDED", detail)
    if job == "STOPPED":
        return JobState("STOPPED", detail, reason)
    if deployment == "Running" and job == "RUNNING":
        return JobState("RUNNING", detail)
    if deployment in ("Suspended", "Suspending"):
        return JobState("PENDING", "the RayJob is suspended until Kueue admits it", "Suspended")
    problem = cluster_problem(status.get("rayClusterStatus"))
    if problem:
        return JobState("PENDING", problem[1], problem[0])
    return JobState("PENDING", detail or deployment or "waiting for the RayCluster")


def pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a Ray pod cannot start by waiting, else None: the scheduler finds
    no node for it (Unschedulable, with the scheduler's count of nodes and why each was ruled
    out), or one of its containers is stuck on its image or configuration (ImagePullBackOff and
    the like). KubeRay leaves its RayJob in Initializing either way."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return "Unschedulable", f"pod {name}: {condition.get('message', 'no node fits')}"
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in POD_PROBLEMS:
            return waiting["reason"], f"pod {name}: {waiting.get('message') or waiting['reason']}"
    return None


ObservedRayJobs = Callable[[str, str], dict[str, Any] | None]
"""(namespace, name) → the RayJob as last seen by the operator's watch, or None if not seen."""

ClusterProblems = Callable[[str, str], tuple[str, str] | None]
"""(namespace, RayCluster name) → the `pod_problem` of one of its pods, from the operator's watch
of Ray pods; None when none has one (or nothing watches)."""


def unobserved(namespace: str, name: str) -> None:
    return None


def _submission(rayjob: dict[str, Any]) -> str | None:
    return (rayjob.get("metadata", {}).get("labels") or {}).get(SUBMISSION_LABEL)


class KubeRayBackend:
    """Create, observe and delete RayJobs through the Kubernetes API."""

    name = "kuberay"

    def __init__(
        self,
        api: client.ApiClient,
        placement_for: Callable[[str | None], Placement],
        observed: ObservedRayJobs = unobserved,
        cluster_problems: ClusterProblems = unobserved,
    ):
        """`placement_for` maps a node pool name (None: unset) to where pods go. `observed` is
        the operator's watch of RayJobs: a RayJob it has seen is read from there, so a thousand
        runs observed every few seconds cost the API server nothing; one it has not seen yet
        (just created, or deleted) is read from the API server. `cluster_problems` is its watch
        of Ray pods: why a RayCluster KubeRay waits on cannot start."""
        self.objects = client.CustomObjectsApi(api)
        self.placement_for = placement_for
        self.observed = observed
        self.cluster_problems = cluster_problems

    def submit(self, launch: Launch) -> str:
        body = render_rayjob(launch, self.placement_for(launch.resources.node_pool))
        name = body["metadata"]["name"]
        try:
            self.objects.create_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, launch.owner.namespace, "rayjobs", body
            )
        except ApiException as error:
            if error.status != 409:
                raise
            # Created by an earlier, interrupted step; or left by a deleted namesake.
            if self._get(launch.ref) is None:
                raise RuntimeError(
                    f"RayJob {name} belongs to an earlier {launch.owner.kind} of the same name; "
                    "retrying once Kubernetes has deleted it"
                ) from error
        return name

    def _get(self, ref: AttemptRef) -> dict[str, Any] | None:
        """The attempt's RayJob, or None (absent, or a namesake of another submission)."""
        name = rayjob_name(ref.owner.name, ref.attempt)
        rayjob = self.observed(ref.owner.namespace, name)
        if rayjob is None or _submission(rayjob) != ref.submission_id:
            try:
                rayjob = cast(
                    dict[str, Any],
                    self.objects.get_namespaced_custom_object(
                        RAY_GROUP, RAY_VERSION, ref.owner.namespace, "rayjobs", name
                    ),
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return rayjob if _submission(rayjob) == ref.submission_id else None

    def state(self, ref: AttemptRef) -> JobState:
        rayjob = self._get(ref)
        if rayjob is None:
            return JobState("MISSING")
        status = rayjob.get("status") or {}
        state = job_state(status)
        cluster = status.get("rayClusterName")
        if state.status == "PENDING" and not state.reason and cluster:
            problem = self.cluster_problems(ref.owner.namespace, cluster)
            if problem:
                return replace(state, reason=problem[0], message=problem[1])
        return state

    def logs_tail(self, ref: AttemptRef, lines: int = 20) -> str:
        """KubeRay's message: the operator reads no pod logs (the runner's error is in MLflow)."""
        rayjob = self._get(ref)
        return job_state(rayjob.get("status")).message if rayjob else ""

    def stop(self, ref: AttemptRef) -> None:
        rayjob = self._get(ref)
        if rayjob is None:
            return
        meta = rayjob["metadata"]
        try:
            self.objects.delete_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                meta["namespace"],
                "rayjobs",
                meta["name"],
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=meta["uid"])),
            )
        except ApiException as error:
            if error.status not in (404, 409):  # gone already, or replaced since the read
                raise

    def dashboard_url(self, ref: AttemptRef) -> str | None:
        """Unknown at launch: KubeRay sets it once the RayCluster is up, and `state` carries it."""
        return None
