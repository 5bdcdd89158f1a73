"""`mlplane queue`: node pools, GPU quotas and the work waiting for GPUs, in one view.

Everything comes from the resources' statuses, which the operator keeps current every observe
interval, so the command needs read access only: a tenant with the chart's `view` role sees its
own namespace (`-n team-a`), the platform team every namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from rich.console import Group
from rich.table import Table

from mlplane.crds.base import GROUP, VERSION, ConditionType
from mlplane.operator.quota import HOLDING_PHASES

RUN_PLURALS = {"TrainingJob": "trainingjobs", "TuningSweep": "tuningsweeps"}
"""The kinds whose GPUs mlplane admits."""


@dataclass(frozen=True)
class Snapshot:
    """The resources the view is drawn from, as read at `taken`."""

    runs: list[dict[str, Any]]
    quotas: list[dict[str, Any]]
    taken: datetime
    pools: list[dict[str, Any]] = field(default_factory=list)
    """NodePools, when the reader may list them (the chart lets every signed-in user, unless
    rbac.nodePoolViewers says otherwise)."""


@dataclass(frozen=True)
class Waiting:
    """One run waiting for GPUs, where it stands and why."""

    namespace: str
    name: str
    pool: str
    gpus: int
    position: int
    reason: str
    since: datetime


def read(api: client.ApiClient, namespace: str | None) -> Snapshot:
    """Every TrainingJob, TuningSweep and GPUQuota in `namespace`, or in all namespaces."""
    objects = client.CustomObjectsApi(api)

    def items(plural: str) -> list[dict[str, Any]]:
        if namespace:
            found = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        else:
            found = objects.list_cluster_custom_object(GROUP, VERSION, plural)
        return cast(dict[str, Any], found)["items"]

    runs = [run for plural in RUN_PLURALS.values() for run in items(plural)]
    try:
        pools = cast(
            dict[str, Any], objects.list_cluster_custom_object(GROUP, VERSION, "nodepools")
        )["items"]
    except client.ApiException as error:
        if error.status not in (403, 404):  # a tenant's view; a cluster without the kind
            raise
        pools = []
    return Snapshot(runs, items("gpuquotas"), datetime.now(UTC), pools)


def waiting(runs: Iterable[dict[str, Any]]) -> list[Waiting]:
    """The queued runs in line order: by namespace and pool (each namespace's pool is a line),
    then position."""
    found = []
    for run in runs:
        status = run.get("status") or {}
        queue = status.get("queue") or {}
        if status.get("phase") != "Queued" or not queue.get("position"):
            continue
        admitted = _condition(status, ConditionType.ADMITTED)
        meta = run["metadata"]
        found.append(
            Waiting(
                namespace=meta["namespace"],
                name=f"{run['kind'].lower()}/{meta['name']}",
                pool=queue["pool"],
                gpus=queue["gpus"],
                position=queue["position"],
                reason=admitted.get("reason", ""),
                since=_time(admitted.get("lastTransitionTime") or meta["creationTimestamp"]),
            )
        )
    return sorted(found, key=lambda w: (w.namespace, w.pool, w.position))


def held(runs: Iterable[dict[str, Any]]) -> dict[str, int]:
    """GPUs admitted work holds, per pool."""
    totals: dict[str, int] = {}
    for run in runs:
        status = run.get("status") or {}
        queue = status.get("queue") or {}
        if status.get("phase") in HOLDING_PHASES and queue.get("gpus"):
            totals[queue["pool"]] = totals.get(queue["pool"], 0) + queue["gpus"]
    return totals


def render(snapshot: Snapshot) -> Group:
    """Three tables: pools (a NodePool's nodes and GPUs allocated of its capacity, and the GPUs
    the runs shown hold and ask for), quotas (per namespace) and the queue."""
    lines = waiting(snapshot.runs)
    holding = held(snapshot.runs)
    counted = {_name(pool): pool.get("status") or {} for pool in snapshot.pools}
    pools = _table("Pools", "POOL", "NODES", "GPUS", "HELD", "WAITING", "QUEUED GPUS")
    for pool in sorted(holding.keys() | {w.pool for w in lines} | counted.keys()):
        mine = [w for w in lines if w.pool == pool]
        status = counted.get(pool, {})
        pools.add_row(
            pool,
            str(status.get("nodes", "-")),
            status.get("summary") or "-",
            str(holding.get(pool, 0)),
            str(len(mine)),
            str(_gpus(mine)),
        )

    quotas = _table("GPU quotas", "NAMESPACE", "QUOTA", "POOL", "USED", "LIMIT", "QUEUED GPUS")
    for quota in sorted(snapshot.quotas, key=lambda q: (q["metadata"]["namespace"], _name(q))):
        limits = {p["name"]: p["gpus"] for p in quota["spec"]["pools"]}
        shown = {p["name"]: p for p in (quota.get("status") or {}).get("pools", [])}
        for pool, limit in limits.items():
            usage = shown.get(pool, {})
            quotas.add_row(
                quota["metadata"]["namespace"],
                _name(quota),
                pool,
                str(usage.get("used", 0)),
                str(limit),
                str(usage.get("queued", 0)),
            )

    queue = _table("Queue", "NAMESPACE", "POOL", "#", "NAME", "GPUS", "REASON", "WAITING")
    for line in lines:
        queue.add_row(
            line.namespace,
            line.pool,
            str(line.position),
            line.name,
            str(line.gpus),
            line.reason,
            short_duration((snapshot.taken - line.since).total_seconds()),
        )
    return Group(pools, quotas, queue)


def short_duration(seconds: float) -> str:
    """kubectl's way of showing an age: the two largest units, `45s`, `3m12s`, `2h5m`, `3d4h`."""
    seconds = max(0, int(seconds))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            rest = (seconds % size) // smaller_size
            return f"{seconds // size}{unit}{f'{rest}{smaller}' if rest else ''}"
    minutes, rest = divmod(seconds, 60)
    if not minutes:
        return f"{rest}s"
    return f"{minutes}m{f'{rest}s' if rest else ''}"


def _table(title: str, *columns: str) -> Table:
    """A table as kubectl prints one: columns apart, no lines, so `grep` and `awk` read it."""
    return Table(*columns, title=title, title_justify="left", box=None, pad_edge=False)


def _condition(status: dict[str, Any], kind: ConditionType) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def _gpus(lines: Iterable[Waiting]) -> int:
    return sum(line.gpus for line in lines)


def _name(resource: dict[str, Any]) -> str:
    return resource["metadata"]["name"]


def _time(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
