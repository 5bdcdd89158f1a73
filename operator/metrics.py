"""Prometheus metrics of the operator: what a platform team graphs and alerts on.

The gauges (resources by phase, queue depth, GPUs allocated, GPU-seconds) are computed at scrape
time from the last state the operator saw of every resource, fed by kopf's watch events. They read
what admission writes onto each resource (`status.phase`, `status.queue`), not counters kept beside
the reconcilers: whatever admits work (admit-all today, the GPU ledger or Kueue later) they follow
without being wired to it, and they are right from the first scrape after a restart.

The counters and the histogram (reconciles, their errors, phase transitions) count what this
process did, as Prometheus counters do.
"""

from __future__ import annotations

import threading
import time
import typing
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mlplane.crds import KINDS
from mlplane.operator.quota import HOLDING_PHASES, WAITING_PHASES

NO_PHASE = "Unknown"
"""The phase label of a resource the operator has not stepped yet."""
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


PHASED_KINDS = tuple(kind for kind in KINDS if "phase" in KINDS[kind].status.model_fields)
"""The kinds whose resources go through phases: every kind but GPUQuota."""


def phases(kind: str) -> tuple[str, ...]:
    """Every phase the API allows for `kind`, read from its status model."""
    annotation = KINDS[kind].status.model_fields["phase"].annotation
    return tuple(p for arm in typing.get_args(annotation) for p in typing.get_args(arm))


@dataclass(frozen=True)
class Seen:
    """What the gauges need from one resource."""

    kind: str
    namespace: str
    phase: str
    pool: str
    gpus: int
    gpu_seconds: float


def seen(kind: str, body: Mapping[str, Any]) -> Seen:
    """The gauges' view of one resource, as the API server returned it."""
    status = body.get("status") or {}
    queue = status.get("queue") or {}
    return Seen(
        kind=kind,
        namespace=body["metadata"].get("namespace", ""),
        phase=status.get("phase") or NO_PHASE,
        pool=queue.get("pool", ""),
        gpus=int(queue.get("gpus", 0)),
        gpu_seconds=float(status.get("gpuSeconds", 0)),
    )


class ResourceView(Collector):
    """The last state of every watched resource by UID, summed into gauges on each scrape.

    A label set once reported stays, at 0, after its last resource leaves it: a dashboard then
    shows Running drop to 0 instead of a series that stops.
    """

    def __init__(self) -> None:
        self._seen: dict[str, Seen] = {}
        self._reported: dict[str, set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def update(self, uid: str, state: Seen | None) -> None:
        """Record the resource's latest state; None when it was deleted."""
        with self._lock:
            if state is None:
                self._seen.pop(uid, None)
            else:
                self._seen[uid] = state

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # the HTTP server scrapes from several threads
            return iter(list(self._families()))

    def _families(self) -> Iterator[Metric]:
        states = list(self._seen.values())
        holding = [s for s in states if s.phase in HOLDING_PHASES and s.gpus]
        yield self._gauge(
            "mlplane_resources",
            "mlplane resources by kind, namespace and phase.",
            ("kind", "namespace", "phase"),
            Tally((s.kind, s.namespace, s.phase) for s in states),
        )
        yield self._gauge(
            "mlplane_queue_depth",
            "Runs waiting for admission (phase Pending or Queued), by node pool and namespace.",
            ("pool", "namespace"),
            Tally((s.pool, s.namespace) for s in states if s.phase in WAITING_PHASES),
        )
        gpus: Tally[tuple[str, ...]] = Tally()
        for s in holding:
            gpus[(s.pool, s.namespace)] += s.gpus
        yield self._gauge(
            "mlplane_gpus_allocated",
            "GPUs held by admitted runs (phase Starting or Running), by node pool and namespace.",
            ("pool", "namespace"),
            gpus,
        )
        gpu_seconds: defaultdict[tuple[str, ...], float] = defaultdict(float)
        for s in states:
            gpu_seconds[(s.kind, s.pool, s.namespace)] += s.gpu_seconds
        yield self._gauge(
            "mlplane_gpu_seconds",
            "GPU time allocated to the runs that exist now (status.gpuSeconds), for chargeback.",
            ("kind", "pool", "namespace"),
            gpu_seconds,
        )

    def _gauge(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        values: Mapping[tuple[str, ...], float],
    ) -> GaugeMetricFamily:
        reported = self._reported.setdefault(name, set())
        reported.update(values)
        family = GaugeMetricFamily(name, documentation, labels=labels)
        for label_values in sorted(reported):
            family.add_metric(list(label_values), values.get(label_values, 0))
        return family


class ObserveLag(Collector):
    """How far behind the observe timers run, by kind, at scrape time: the alert that says
    resources are not being looked at (a hung backend holding the reconcile threads, a stopped
    timer) before any status shows it."""

    def __init__(self, lags: Callable[[], Mapping[str, float]]) -> None:
        self.lags = lags

    def collect(self) -> Iterator[Metric]:
        lags = self.lags()
        family = GaugeMetricFamily(
            "mlplane_observe_lag_seconds",
            "The longest any active resource of this kind has gone since its last observe step "
            "ended (about the observe interval when all is well).",
            labels=("kind",),
        )
        for kind in PHASED_KINDS:
            family.add_metric([kind], lags.get(kind, 0.0))
        yield family


class OperatorMetrics:
    """Every metric the operator exports, on a registry of its own (plus process and GC stats)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.view = ResourceView()
        self.registry.register(self.view)
        self.reconcile_seconds = Histogram(
            "mlplane_reconcile_duration_seconds",
            "Time one reconcile step of one resource took, by kind.",
            ("kind",),
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "mlplane_reconcile_errors_total",
            "Reconcile steps that raised (kopf retries them), by kind and exception type; "
            "InvalidSpec counts specs the operator rejected.",
            ("kind", "reason"),
            registry=self.registry,
        )
        self.transitions = Counter(
            "mlplane_phase_transitions_total",
            "Phase changes the operator made, by kind and the phase entered.",
            ("kind", "phase"),
            registry=self.registry,
        )
        for kind in KINDS:
            self.reconcile_seconds.labels(kind)
        for kind in PHASED_KINDS:
            for phase in phases(kind):
                self.transitions.labels(kind, phase)

    @contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Time one step; count it as an error by exception type if it raises."""
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            self.reconcile_errors.labels(kind, type(error).__name__).inc()
            raise
        finally:
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)

    def transition(self, kind: str, before: str | None, after: str | None) -> None:
        if after and after != before:
            self.transitions.labels(kind, after).inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics from a background thread."""
        start_http_server(port, address, registry=self.registry)
