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
            # never waits behind work that could start, only behind work that cannot.
            line = self._line(work)
            while line and self._blocker(line[0], namespace_quota) is None:
                head = line.pop(0)
                del self._waiting[head.uid]
                del self._arrival[head.uid]
                self._held[head.uid] = head
                if head.uid == work.uid:
                    return self._admitted(work)
            position = line.index(work) + 1
            blocker = self._blocker(work, namespace_quota) or "waiting for earlier work"
            message = f"needs {work.gpus} {work.pool} GPUs; {blocker}"
            return Decision(
                False,
                Queue(pool=work.pool, gpus=work.gpus, position=position),
                f"{message}; position {position}",
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

    def _blocker(self, work: Work, namespace_quota: int | None) -> str | None:
        """Why `work` cannot have its GPUs now, or None when it can."""
        if not work.gpus:
            return None
        ns, pool = work.namespace, work.pool
        checks = (
            (self.limits.namespace_pool_quota(ns, pool), pool, ns),
            (namespace_quota, None, ns),
            (self.limits.pool_capacity(pool), pool, None),
        )
        for limit, limit_pool, limit_ns in checks:
            if limit is None:
                continue
            used = self._sum(limit_pool, limit_ns)
            if used + work.gpus > limit:
                return _describe(limit_ns, limit_pool, used, limit)
        return None


def _describe(namespace: str | None, pool: str | None, used: int, limit: int) -> str:
    if namespace and pool:
        return f"{namespace} uses {used} of {limit} {pool} GPUs"
    if namespace:
        return f"{namespace} uses {used} of its ResourceQuota of {limit} GPUs"
    return f"pool {pool} has {limit - used} of {limit} GPUs free"


def config_limits(config: OperatorConfig, namespace_quota: Callable[[str], int | None]) -> Limits:
    """The ledger's limits: pool capacity and per-namespace quotas from the operator's
    configuration, the namespace's ResourceQuota from `namespace_quota`."""

    def pool_capacity(name: str) -> int | None:
        pool = config.pool(name)
        return pool.gpus_per_node * pool.nodes if pool and pool.nodes else None

    return Limits(
        pool_capacity=pool_capacity,
        namespace_pool_quota=lambda namespace, pool: config.gpu_quotas.get(namespace, {}).get(pool),
        namespace_quota=namespace_quota,
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
