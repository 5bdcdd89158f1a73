"""kopf handlers: thin wiring from watch events and timers to the reconcilers.

The timers and deletion handlers wait on the API server, Ray and MLflow, so they are sync and
kopf runs them on its RECONCILE_THREADS. The handlers that only read the body (the metrics watch,
the indices) are async and run on kopf's event loop: in a thread, each watch event would cost a
thread hand-off and a wake-up of the loop, more than the handler itself.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import aiohttp
import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from mlplane.crds import KINDS
from mlplane.crds.base import GROUP, VERSION
from mlplane.crds.nodepool import NodePool as NodePoolResource
from mlplane.crds.validation import parse_object
from mlplane.operator.admission import Work
from mlplane.operator.backends.aws import CredentialsUnavailable
from mlplane.operator.backends.kuberay import (
    RAY_GROUP,
    RAY_VERSION,
    SUBMISSION_LABEL,
    pod_problem,
    unobserved,
)
from mlplane.operator.config import (
    API_SERVER_REQUESTS,
    RECONCILE_THREADS,
    NodePool,
    OperatorConfig,
)
from mlplane.operator.kube_client import connect
from mlplane.operator.lifecycle import RunReconciler
from mlplane.operator.metrics import ObserveLag, OperatorMetrics, seen
from mlplane.operator.modeldeployment import DeletionPending
from mlplane.operator.pool_resources import Node, as_node_pool, pool_status
from mlplane.operator.quota import GpuLedger, GpuQuotas, quota_status
from mlplane.operator.runtime import Runtime
from mlplane.operator.status import TERMINAL_PHASES, Event, invalid_spec_status
from mlplane.operator.watchdog import ENDLESS_BACKOFFS, ObserveWatchdog, OperatorStuck

FINALIZER = f"{GROUP}/finalizer"


class NoDiffBase(kopf.DiffBaseStorage):
    """No record of the last handled spec. kopf keeps one for on.create/on.update handlers, and
    mlplane has none: its timers reconcile from the whole object. Stored, the record would cost
    a status write per object created and per spec change, which nothing reads, and a copy of
    the spec in every object the watches send."""

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's body views as the plain dict Pydantic validates."""
    return {key: body[key] for key in body}


def _active(status: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> bool:
    """A run still going, or a finished one whose spec changed since: stepping it acknowledges
    the new generation (status.observedGeneration), which Argo CD's health check waits for."""
    lagging = status.get("observedGeneration") != meta.get("generation")
    return status.get("phase") not in TERMINAL_PHASES or lagging


def status_patch(status: Any, current: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch from the stored status to `status`: only what changed, so a thousand
    queued jobs re-checked each tick write nothing, and null for what is gone (a finished run's
    ETA), which a merge patch would otherwise keep."""
    wire = status.to_dict()
    wire.pop("kopf", None)  # kopf's own bookkeeping is written by kopf
    return _merge_patch({key: current[key] for key in current if key != "kopf"}, wire)


def _merge_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {key: None for key in current if key not in wanted}
    for key, value in wanted.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if nested := _merge_patch(old, value):
                patch[key] = nested
        elif old != value:
            patch[key] = value
    return patch


def _emit(body: kopf.Body, events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _namespace(body: kopf.Body) -> str:
    """The namespace of an object of a namespaced kind (kopf's type allows cluster-scoped ones)."""
    return body.meta.namespace or ""


class StatusWriter:
    """Writes a run's status within a step, ahead of kopf's patch at its end: an admission must
    be on the resource before the launch that follows it (see RunReconciler.reconcile)."""

    def __init__(self, kube: client.ApiClient, plural: str, body: kopf.Body) -> None:
        self.objects = client.CustomObjectsApi(kube)
        self.plural = plural
        self.namespace, self.name = _namespace(body), body.meta.name
        self.status: Mapping[str, Any] = body.status
        """The status as the API server has it now: what kopf's patch is made against."""

    def record(self, status: Any) -> None:
        if patch := status_patch(status, self.status):
            self.objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, self.plural, self.name, {"status": patch}
            )
        self.status = status.to_dict()


class Reconciler(Protocol):
    def reconcile(self, resource: Any) -> Any: ...

    def delete(self, resource: Any) -> None: ...


# The reconciler each kind is driven by (looked up on the started runtime), and whether its
# timer stops once the resource is done: runs end, a deployment is observed for as long as it lives.
KIND_RECONCILERS: dict[str, tuple[Callable[[Runtime], Reconciler], bool]] = {
    "TrainingJob": (lambda runtime: runtime.training, True),
    "TuningSweep": (lambda runtime: runtime.tuning, True),
    "ModelDeployment": (lambda runtime: runtime.serving, False),
}


def _register_kind(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    metrics: OperatorMetrics,
    watchdog: ObserveWatchdog,
    kind: str,
    reconciler_of: Callable[[Runtime], Reconciler],
    ends: bool,
) -> None:
    """One timer that steps the resource (while it is active, for runs), a deletion handler, and
    a watch of every change that keeps the metrics' and the watchdog's view of it current."""
    plural = KINDS[kind].plural

    @kopf.on.event(GROUP, VERSION, plural, id=f"metrics-{plural}", registry=registry)
    async def watched(body: kopf.Body, type: str | None, **_: Any) -> None:
        gone = type == "DELETED"
        metrics.view.update(body.meta["uid"], None if gone else seen(kind, body))
        # kopf stops the timer of a resource being deleted; its deletion handler takes over.
        timed = not gone and "deletionTimestamp" not in body.meta
        watchdog.watched(
            body.meta["uid"],
            kind,
            f"{body.meta.namespace}/{body.meta.name}",
            active=timed and (not ends or _active(body.status, body.meta)),
        )

    @kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=f"observe-{plural}",
        interval=config.observe_interval_seconds,
        when=_active if ends else None,
        # A step that raised (the API server or MLflow away) is tried again on the next
        # interval, not after kopf's default minute.
        backoff=config.observe_interval_seconds,
        registry=registry,
    )
    def observe(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        try:
            _observe(body, patch, memo)
        finally:
            watchdog.observed(body.meta["uid"])

    def _observe(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
        before = body.status.get("phase")
        with metrics.reconciling(kind):
            resource, problems = parse_object(_plain(body))
            if problems:
                reasons = [f"{p.field}: {p.message}" for p in problems]
                patch.status.update(invalid_spec_status(reasons, body.meta.get("generation")))
                if before != "Failed":  # once per rejection, not once per timer tick
                    metrics.reconcile_errors.labels(kind, "InvalidSpec").inc()
                    metrics.transition(kind, before, "Failed")
                    _emit(body, [Event("Warning", "InvalidSpec", "; ".join(reasons))])
                return
            reconciler = reconciler_of(memo.runtime)
            if isinstance(reconciler, RunReconciler):
                written = StatusWriter(memo.kube, plural, body)
                step = reconciler.reconcile(resource, record=written.record)
                stored = written.status
            else:
                step = reconciler.reconcile(resource)
                stored = body.status
        patch.status.update(status_patch(step.status, stored))
        metrics.transition(kind, before, step.status.phase)
        _emit(body, step.events)

    @kopf.on.delete(GROUP, VERSION, plural, id=f"delete-{plural}", registry=registry)
    def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        resource, problems = parse_object(_plain(body))
        if problems:
            # Nothing was launched for it (an invalid spec never reaches a backend, and a running
            # one cannot change), so there is nothing to stop: a retry would fail the same way
            # and keep the finalizer, and the resource, forever.
            return
        try:
            reconciler_of(memo.runtime).delete(resource)
        except DeletionPending as pending:  # the finalizer stays; kopf asks again later
            raise kopf.TemporaryError(str(pending), delay=pending.delay_seconds) from None


# Kinds whose GPUs the ledger admits, each with the kopf index that holds what it needs to
# rebuild: kopf lists every object into its indices before any handler runs, so the ledger's
# first decision after a (re)start sees every admitted run.
RUN_KINDS = {"TrainingJob": "trainingjobs_runs", "TuningSweep": "tuningsweeps_runs"}


def _register_runs_index(registry: kopf.OperatorRegistry, kind: str, index_id: str) -> None:
    reconciler_of = KIND_RECONCILERS[kind][0]

    @kopf.index(GROUP, VERSION, KINDS[kind].plural, id=index_id, registry=registry)
    async def runs(
        body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> dict[None, tuple[Work, str | None]]:
        resource, problems = parse_object(_plain(body))
        if problems or resource.spec.queue_name:
            return {}  # it never will be admitted, or Kueue admits it
        reconciler = reconciler_of(memo.runtime)
        assert isinstance(reconciler, RunReconciler)  # RUN_KINDS are run kinds
        work = reconciler.work(resource)
        return {None: (work, body.status.get("phase"))}


T = TypeVar("T")
RAYJOBS_INDEX = "rayjobs_by_name"


def _register_rayjobs_index(registry: kopf.OperatorRegistry) -> None:
    """The RayJobs mlplane made, by (namespace, name), as the watch last saw them: the kuberay
    backend observes runs from here instead of reading each RayJob on every timer tick."""

    @kopf.index(
        RAY_GROUP,
        RAY_VERSION,
        "rayjobs",
        id=RAYJOBS_INDEX,
        labels={SUBMISSION_LABEL: kopf.PRESENT},
        registry=registry,
    )
    async def rayjobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
        meta = body.meta
        seen = {
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
                "labels": dict(meta.labels),
            },
            "status": dict(body.status),
        }
        return {(_namespace(body), meta.name): seen}


def _first_of(index: kopf.Index[tuple[str, str], T]) -> Callable[[str, str], T | None]:
    """(namespace, name) → the one value `index` holds for it, or None."""

    def first(namespace: str, name: str) -> T | None:
        return next(iter(index.get((namespace, name), ())), None)

    return first


GPU_QUOTAS_INDEX = "gpu_quotas"


def _register_gpu_quotas(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """GPUQuotas: an index the ledger reads on every decision, so an edit counts from the next
    admission on, and a timer that writes what the namespace holds and who waits."""
    plural = KINDS["GPUQuota"].plural

    @kopf.index(GROUP, VERSION, plural, id=GPU_QUOTAS_INDEX, registry=registry)
    async def gpu_quotas(body: kopf.Body, **_: Any) -> dict[str, dict[str, int]]:
        quota, problems = parse_object(_plain(body))
        if problems:
            return {}  # the API server's schema refuses what the model would
        return {_namespace(body): {pool.name: pool.gpus for pool in quota.spec.pools}}

    _register_ledger_view(registry, config, plural, quota_status)


def _register_ledger_view(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    plural: str,
    status_of: Callable[[Any, GpuLedger], Any | None],
) -> None:
    """A timer that writes what the GPU ledger says of each object of a kind (a GPUQuota's
    namespace, a NodePool's nodes) into its status, every observe interval."""

    @kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=f"observe-{plural}",
        interval=config.observe_interval_seconds,
        backoff=config.observe_interval_seconds,
        registry=registry,
    )
    def observe(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        resource, problems = parse_object(_plain(body))
        if problems or not isinstance(memo.runtime.admission, GpuLedger):
            return  # the API server's schema refuses what the model would
        status = status_of(resource, memo.runtime.admission)
        if status is not None:
            patch.status.update(status_patch(status, body.status))


def _tightest(index: kopf.Index[str, dict[str, int]]) -> GpuQuotas:
    """namespace → GPUs per pool its GPUQuotas allow (the least, if several name a pool)."""

    def pools(namespace: str) -> dict[str, int] | None:
        quotas = list(index.get(namespace, ()))
        if not quotas:
            return None
        tightest: dict[str, int] = {}
        for quota in quotas:
            for pool, gpus in quota.items():
                tightest[pool] = min(gpus, tightest.get(pool, gpus))
        return tightest

    return pools


NODE_POOLS_INDEX = "node_pools"
NODES_INDEX = "nodes"


def _register_node_pools(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """NodePools and the Nodes they count: indices the pools are made from at each use (an edit
    or a node joining counts from the next admission on), and a timer that writes each pool's
    nodes, GPUs and the work holding and waiting for them."""
    plural = KINDS["NodePool"].plural

    @kopf.index(GROUP, VERSION, plural, id=NODE_POOLS_INDEX, registry=registry)
    async def node_pools(body: kopf.Body, **_: Any) -> dict[None, NodePoolResource]:
        pool, problems = parse_object(_plain(body))
        return {} if problems else {None: pool}  # the API server's schema refuses the same

    @kopf.index("v1", "nodes", id=NODES_INDEX, registry=registry)
    async def nodes(body: kopf.Body, **_: Any) -> dict[None, Node]:
        return {None: Node.of(_plain(body))}

    def status(resource: NodePoolResource, ledger: GpuLedger) -> Any:
        pool = config.pool(resource.metadata.name)
        return pool_status(resource, pool, ledger) if pool else None

    if config.node_pool_status:
        _register_ledger_view(registry, config, plural, status)


def _pools_of(
    resources: kopf.Index[None, NodePoolResource], nodes: kopf.Index[None, Node]
) -> Callable[[], list[NodePool]]:
    """The NodePool resources as node pools, counted from the nodes as they are at the call."""
    return lambda: [as_node_pool(pool, nodes.get(None, ())) for pool in resources.get(None, ())]


RAY_PODS_INDEX = "ray_pod_problems"


def _register_ray_pods_index(registry: kopf.OperatorRegistry) -> None:
    """Why a RayCluster cannot start, by (namespace, cluster), from the watch of Ray pods: only
    pods with a problem are kept, so the index stays as small as the trouble."""

    @kopf.index(
        "v1",
        "pods",
        id=RAY_PODS_INDEX,
        labels={"ray.io/is-ray-node": "yes"},
        registry=registry,
    )
    async def ray_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], tuple[str, str]]:
        cluster = body.meta.labels.get("ray.io/cluster")
        problem = pod_problem(body)
        return {(_namespace(body), cluster): problem} if cluster and problem else {}


def bounded_session(info: kopf.ConnectionInfo) -> kopf.AiohttpSession:
    """kopf's own session for these credentials, but with at most API_SERVER_REQUESTS requests
    in flight besides the watch streams."""
    in_flight = asyncio.Semaphore(API_SERVER_REQUESTS)

    async def bounded(
        request: aiohttp.ClientRequest, send: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if request.url.query.get("watch") == "true":
            return await send(request)  # holds its connection for as long as it watches
        async with in_flight:
            response = await send(request)
            await response.read()  # with the body read, the connection is free for the next
            return response

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        middlewares=(bounded,),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        priority=info.priority,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
    )


def _api_server_answers() -> bool:
    """Whether the API server answers now (its version, which every client may read)."""
    try:
        with connect() as api:
            client.VersionApi(api).get_code(_request_timeout=5)
    except ApiException as error:
        return error.status < 500  # a 5xx is an API server not (yet) able to serve
    except (HTTPError, OSError):
        return False
    return True


def _registered_model(kube: client.ApiClient, namespace: str, name: str) -> str | None:
    """status.model.uri of a TrainingJob, for ModelDeployments that reference one."""
    try:
        job = cast(
            dict[str, Any],
            client.CustomObjectsApi(kube).get_namespaced_custom_object(
                GROUP, VERSION, namespace, KINDS["TrainingJob"].plural, name
            ),
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return job.get("status", {}).get("model", {}).get("uri")


def _secret_data(kube: client.ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's decoded data (a SageMaker deployment's AWS credentials, a job's envFrom);
    None if missing."""
    try:
        secret = client.CoreV1Api(kube).read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise CredentialsUnavailable(
            f"cannot read Secret {namespace}/{name}: {error.status} {error.reason}"
        ) from None
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


def build_registry(config: OperatorConfig, metrics: OperatorMetrics) -> kopf.OperatorRegistry:
    """Handlers for every kind, registered on a fresh registry with the configured intervals."""
    registry = kopf.OperatorRegistry()
    watchdog = ObserveWatchdog(config.observe_interval_seconds, _api_server_answers)
    metrics.registry.register(ObserveLag(watchdog.lags))

    @kopf.on.probe(id="observe", registry=registry)
    def observing(**_: Any) -> dict[str, object]:
        """/healthz: red while resources go unobserved for a reason a restart fixes."""
        try:
            return watchdog.check()
        except OperatorStuck as stuck:
            raise kopf.PermanentError(str(stuck)) from None

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        info = kopf.login_via_client(**kwargs)
        return bounded_session(info) if info else None

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
        # Bookkeeping in status, not annotations: GitOps tools then see no drift.
        settings.persistence.progress_storage = kopf.StatusProgressStorage(
            field="status.kopf.progress"
        )
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.persistence.finalizer = FINALIZER
        # Our reconcilers emit the Events users read; kopf's own handler chatter stays in logs.
        settings.posting.level = logging.WARNING
        # Steps wait on MLflow and the API server far more than they compute: with kopf's default
        # of CPUs + 4 threads, a burst of launches would hold up every queued job's re-check.
        settings.execution.max_workers = RECONCILE_THREADS
        # An API server outage of any length is waited out: a status patch that gave up would
        # end its resource's timer for as long as the operator runs (see mlplane.operator.
        # watchdog), and a phase change's Event is posted late rather than never.
        settings.networking.error_backoffs = ENDLESS_BACKOFFS
        settings.posting.default_backoffs = ENDLESS_BACKOFFS
        # A deleted resource's finalizer goes once its observe timer has stopped: when a step was
        # running as the delete came, kopf would otherwise look again only every 60 s.
        settings.background.cancellation_polling = 1.0
        runs = [kwargs[index_id] for index_id in RUN_KINDS.values()]  # kopf passes indices
        config.watch_pools(_pools_of(kwargs[NODE_POOLS_INDEX], kwargs[NODES_INDEX]))
        kube = memo.kube = connect()
        memo.runtime = Runtime.start(
            config,
            job_models=partial(_registered_model, kube),
            kube=kube,
            observed_runs=lambda: [entry for index in runs for entry in index.get(None, ())],
            observed_rayjobs=(
                _first_of(kwargs[RAYJOBS_INDEX]) if RAYJOBS_INDEX in kwargs else unobserved
            ),
            cluster_problems=(
                _first_of(kwargs[RAY_PODS_INDEX]) if RAY_PODS_INDEX in kwargs else unobserved
            ),
            secrets=partial(_secret_data, kube),
            gpu_quotas=_tightest(kwargs[GPU_QUOTAS_INDEX]),
        )

    for kind, (reconciler_of, ends) in KIND_RECONCILERS.items():
        _register_kind(registry, config, metrics, watchdog, kind, reconciler_of, ends)
    for kind, index_id in RUN_KINDS.items():
        _register_runs_index(registry, kind, index_id)
    _register_gpu_quotas(registry, config)
    _register_node_pools(registry, config)
    if config.backend == "kuberay":  # without KubeRay there are no RayJobs to watch
        _register_rayjobs_index(registry)
        _register_ray_pods_index(registry)

    return registry
