"""The GPU ledger: which work holds GPUs in which pool, and who waits in what order.

It holds no state that cannot be rebuilt: before its first decision the operator replays every
TrainingJob and TuningSweep status into it (`rebuild`, or lazily from `observed`), so a restart
neither admits twice nor counts a GPU twice. Between restarts it is the single writer of
admissions, updated synchronously on each decision, so two timers running at once never both take
the last GPUs.

Order is FIFO within priority (higher first), per namespace and pool: work never overtakes earlier
work that waits for the same namespace's quota in the same pool, as in Kueue's StrictFIFO.
creationTimestamp has whole seconds only, so work created in the same second keeps the order the
ledger first saw it in (the watch's order); after a restart such ties fall back to name order.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from mlplane.crds.base import Queue
from mlplane.crds.gpuquota import GPUQuota, GPUQuotaStatus, PoolUsage, QueuedWork
from mlplane.operator.admission import Decision, Work
from mlplane.operator.config import OperatorConfig

log = logging.getLogger(__name__)

HOLDING_PHASES = frozenset({"Starting", "Running"})
WAITING_PHASES = frozenset({"Pending", "Queued"})
NAMESPACE_GPU_QUOTA = "requests.nvidia.com/gpu"
"""The ResourceQuota key that limits a namespace's GPUs (extended resources have no limits.*)."""

Observed = Iterable[tuple[Work, str | None]]
"""(work, status.phase) of every TrainingJob and TuningSweep mlplane admits."""


@dataclass(frozen=True)
class Limits:
    """GPU limits the ledger enforces; None means no limit of that kind."""

    pool_capacity: Callable[[str], int | None]
    """GPUs a pool has in total."""
    namespace_pool_quota: Callable[[str, str], int | None]
    """GPUs a namespace may hold in a pool (the operator's configured quotas)."""
    namespace_quota: Callable[[str], int | None]
    """GPUs a namespace may request in total (its ResourceQuota on requests.nvidia.com/gpu).
    It may read the API server, so the ledger asks before taking its lock."""


class GpuLedger:
    """Admission by GPU quota, FIFO within priority, with a visible queue position."""

    def __init__(self, limits: Limits, observed: Callable[[], Observed] | None = None) -> None:
        """`observed` is replayed (`rebuild`) before the first decision, release or read: the
        operator passes what its watch listed at start, complete before any handler runs."""
        self.limits = limits
        self._held: dict[str, Work] = {}
        self._waiting: dict[str, Work] = {}
        self._arrival: dict[str, int] = {}
        """uid -> when the ledger first saw it: the tie-break within one creation second."""
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._observed = observed

    def rebuild(self, observed: Observed) -> None:
        """Start over from statuses: (work, phase) of every TrainingJob and TuningSweep."""
        with self._lock:
            self._observed = None
            self._replay(observed)

    def _replay(self, observed: Observed) -> None:
        self._held.clear()
        self._waiting.clear()
        self._arrival.clear()
        for work, phase in sorted(observed, key=lambda entry: (entry[0].created, entry[0].name)):
            if phase in HOLDING_PHASES:
                self._held[work.uid] = work
            elif phase in WAITING_PHASES or phase is None:
                self._waiting[work.uid] = work
                self._arrived(work)

    def _arrived(self, work: Work) -> None:
        self._arrival.setdefault(work.uid, next(self._arrivals))

    def _ready(self) -> None:
        """Replay `observed` once, under the lock, before anything reads or changes the ledger."""
        if self._observed is not None:
            observed, self._observed = self._observed, None
            self._replay(observed())

    def admit(self, work: Work) -> Decision:
        namespace_quota = self.limits.namespace_quota(work.namespace) if work.gpus else None
        with self._lock:
            self._ready()
            if work.uid in self._held:
                return self._admitted(work)
            self._waiting[work.uid] = work
            self._arrived(work)
            # The line moves from its head for as long as the head fits: earlier work is admitted
            # here on its own behalf (its next step finds itself held and launches), so work
            # never waits behind work that could start, only behind work that cannot. Work that
            # asks more than a limit allows at all is passed over: it holds up no one.
            line = self._line(work)
            held_up = False
            for head in line:
                blocked = self._blocker(head, namespace_quota)
                if blocked is None and not held_up:
                    del self._waiting[head.uid]
                    del self._arrival[head.uid]
                    self._held[head.uid] = head
                    if head.uid == work.uid:
                        return self._admitted(work)
                elif blocked is None or not blocked[0].startswith("Exceeds"):
                    held_up = True
            mine = self._blocker(work, namespace_quota)
            reason, blocker = mine or ("WaitingForEarlierWork", "waiting for earlier work")
            position = [w for w in line if w.uid in self._waiting].index(work) + 1
            message = f"needs {work.gpus} {work.pool} GPUs; {blocker}"
            if reason != "ExceedsPoolCapacity":  # that one is refused, not queued
                message += f"; position {position}"
            return Decision(
                False, Queue(pool=work.pool, gpus=work.gpus, position=position), message, reason
            )

    def release(self, uid: str) -> None:
        with self._lock:
            self._ready()
            self._held.pop(uid, None)
            self._waiting.pop(uid, None)
            self._arrival.pop(uid, None)

    def held(self, pool: str, namespace: str | None = None) -> int:
        with self._lock:
            self._ready()
            return self._sum(pool, namespace)

    def waiting(self) -> list[Work]:
        with self._lock:
            self._ready()
            return sorted(self._waiting.values(), key=self._order)

    def _admitted(self, work: Work) -> Decision:
        return Decision(True, Queue(pool=work.pool, gpus=work.gpus, position=0), "admitted")

    def _line(self, work: Work) -> list[Work]:
        """The waiting work of the same namespace and pool, in admission order."""
        same = [
            w
            for w in self._waiting.values()
            if w.namespace == work.namespace and w.pool == work.pool
        ]
        return sorted(same, key=self._order)

    def _order(self, work: Work) -> tuple[int, str, int]:
        return (-work.priority, work.created, self._arrival[work.uid])

    def _sum(self, pool: str | None, namespace: str | None) -> int:
        return sum(
            w.gpus
            for w in self._held.values()
            if (pool is None or w.pool == pool) and (namespace is None or w.namespace == namespace)
        )

    def _blocker(self, work: Work, namespace_quota: int | None) -> tuple[str, str] | None:
        """(reason, why) `work` cannot have its GPUs now (see Decision.reason), or None."""
        if not work.gpus:
            return None
        ns, pool = work.namespace, work.pool
        capacity = self.limits.pool_capacity(pool)
        if capacity is not None and work.gpus > capacity:
            return "ExceedsPoolCapacity", f"pool {pool} has {capacity} GPUs in all"
        checks = (
            (self.limits.namespace_pool_quota(ns, pool), pool, ns),
            (namespace_quota, None, ns),
            (capacity, pool, None),
        )
        for limit, limit_pool, limit_ns in checks:
            if limit is not None and limit_ns and work.gpus > limit:
                return "ExceedsQuota", _describe(limit_ns, limit_pool, None, limit)
        for limit, limit_pool, limit_ns in checks:
            used = self._sum(limit_pool, limit_ns)
            if limit is not None and used + work.gpus > limit:
                reason = "WaitingForQuota" if limit_ns else "WaitingForCapacity"
                return reason, _describe(limit_ns, limit_pool, used, limit)
        return None


def _describe(namespace: str | None, pool: str | None, used: int | None, limit: int) -> str:
    """The limit that stops work: `used` of it now, or None for a limit the work exceeds."""
    if namespace and pool and limit == 0:
        return f"{namespace}'s GPUQuota gives it no {pool} GPUs"
    if namespace and pool:
        if used is None:
            return f"{namespace} may hold at most {limit} {pool} GPUs"
        return f"{namespace} uses {used} of {limit} {pool} GPUs"
    if namespace:
        if used is None:
            return f"{namespace}'s ResourceQuota allows at most {limit} GPUs"
        return f"{namespace} uses {used} of its ResourceQuota of {limit} GPUs"
    return f"pool {pool} has {limit - (used or 0)} of {limit} GPUs free"


GpuQuotas = Callable[[str], dict[str, int] | None]
"""A namespace's GPUQuota as GPUs per pool (the tightest, if several); None without one."""


def config_limits(
    config: OperatorConfig,
    namespace_quota: Callable[[str], int | None],
    gpu_quotas: GpuQuotas = lambda namespace: None,
) -> Limits:
    """The ledger's limits: pool capacity from the operator's configuration; per-namespace pool
    quotas from the namespace's GPUQuota, else from the configuration's `gpu_quotas`; the
    namespace's ResourceQuota from `namespace_quota`."""

    def namespace_pool_quota(namespace: str, pool: str) -> int | None:
        pools = gpu_quotas(namespace)
        if pools is not None:
            return pools.get(pool, 0)  # a pool the GPUQuota does not list gives none
        return config.gpu_quotas.get(namespace, {}).get(pool)

    def pool_capacity(name: str) -> int | None:
        pool = config.pool(name)
        return pool.capacity if pool else None

    return Limits(
        pool_capacity=pool_capacity,
        namespace_pool_quota=namespace_pool_quota,
        namespace_quota=namespace_quota,
    )


QUEUED_SHOWN = 100
"""Waiting work a GPUQuota's status lists; the count covers all of it."""


def quota_status(quota: GPUQuota, ledger: GpuLedger) -> GPUQuotaStatus:
    """What a GPUQuota's namespace holds and who of it waits, from the ledger's view."""
    namespace = quota.metadata.namespace or ""
    limits = {pool.name: pool.gpus for pool in quota.spec.pools}
    waiting = [work for work in ledger.waiting() if work.namespace == namespace]
    positions: dict[str, int] = {}
    queued = []
    for work in waiting:  # in admission order; a pool's line is its namespace's work for it
        positions[work.pool] = positions.get(work.pool, 0) + 1
        queued.append(
            QueuedWork(
                name=work.name, pool=work.pool, gpus=work.gpus, position=positions[work.pool]
            )
        )
    pools = [
        PoolUsage(
            name=pool,
            limit=limits.get(pool, 0),
            used=ledger.held(pool, namespace),
            queued=sum(work.gpus for work in waiting if work.pool == pool),
        )
        for pool in [*limits, *sorted({w.pool for w in waiting} - limits.keys())]
    ]
    return GPUQuotaStatus(
        observed_generation=quota.metadata.generation,
        pools=pools,
        waiting=len(waiting),
        queued=queued[:QUEUED_SHOWN],
        summary=", ".join(f"{p.name} {p.used}/{p.limit}" for p in pools),
    )


class ResourceQuotaGpus:
    """A namespace's GPU ResourceQuota (the tightest `requests.nvidia.com/gpu`), read from the API.

    The ledger compares it with the GPUs it admitted, not with the quota's `used`: admitted work
    holds its GPUs from admission, before its pods exist. Each namespace is read at most once per
    `max_age_seconds`, so a queue of a thousand jobs costs one read per interval, not a thousand.
    """

    def __init__(
        self,
        api: client.ApiClient,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.max_age = max_age_seconds
        self.clock = clock
        self._read: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, namespace: str) -> int | None:
        with self._lock:
            cached = self._read.get(namespace)
        if cached and self.clock() - cached[0] < self.max_age:
            return cached[1]
        limit = self._limit(namespace)  # not under the lock: a slow read holds up no one else
        with self._lock:
            self._read[namespace] = (self.clock(), limit)
        return limit

    def _limit(self, namespace: str) -> int | None:
        try:
            quotas = self.core.list_namespaced_resource_quota(namespace).items
        except ApiException as error:
            if error.status != 403:
                raise
            log.warning("cannot read ResourceQuotas in %s: %s", namespace, error.reason)
            return None
        hard = [
            int(parse_quantity(q.spec.hard[NAMESPACE_GPU_QUOTA]))
            for q in quotas
            if q.spec and q.spec.hard and NAMESPACE_GPU_QUOTA in q.spec.hard
        ]
        return min(hard) if hard else None
