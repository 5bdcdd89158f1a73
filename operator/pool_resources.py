"""NodePool resources as node pools the operator places and admits work on.

A pool's nodes are the schedulable nodes its `nodeSelector` matches, from the operator's watch of
Nodes; its GPUs are their allocatable `gpuResource`, so kwok's nodes and real ones are counted
alike, and a pool an autoscaler grows or drains is counted as it is at each admission.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity

from mlplane.crds.nodepool import NodePool as NodePoolResource
from mlplane.crds.nodepool import NodePoolStatus
from mlplane.operator.config import NodePool
from mlplane.operator.quota import GpuLedger


@dataclass(frozen=True)
class Node:
    """What of a Node decides whether it is a pool's and what it adds."""

    labels: dict[str, str]
    allocatable: dict[str, str]
    schedulable: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Node:
        """From a Node as the API server has it: schedulable when Ready and not cordoned."""
        status = body.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        unschedulable = bool((body.get("spec") or {}).get("unschedulable"))
        return cls(
            labels=dict(body["metadata"].get("labels") or {}),
            allocatable=dict(status.get("allocatable") or {}),
            schedulable=ready and not unschedulable,
        )

    def gpus(self, resource: str) -> int:
        return int(parse_quantity(self.allocatable.get(resource, "0")))


def as_node_pool(resource: NodePoolResource, nodes: Iterable[Node]) -> NodePool:
    """The pool the operator places work on: the resource's selector and tolerations, and the
    GPUs its nodes have now."""
    spec = resource.spec
    mine = [
        node.gpus(spec.gpu_resource)
        for node in nodes
        if node.schedulable and spec.node_selector.items() <= node.labels.items()
    ]
    return NodePool(
        name=resource.metadata.name,
        node_selector=dict(spec.node_selector),
        tolerations=[t.model_dump(exclude_none=True) for t in spec.tolerations],
        gpu_resource=spec.gpu_resource,
        gpu_product=spec.gpu_product,
        gpus_per_node=max(mine, default=0),
        nodes=len(mine),
        counted=sum(mine),
    )


def pool_status(resource: NodePoolResource, pool: NodePool, ledger: GpuLedger) -> NodePoolStatus:
    """The pool's nodes and GPUs, and what mlplane's work holds of them and asks for."""
    waiting = [work for work in ledger.waiting() if work.pool == pool.name]
    allocated = ledger.held(pool.name)
    return NodePoolStatus(
        observed_generation=resource.metadata.generation,
        nodes=pool.nodes,
        capacity=pool.counted or 0,
        gpus_per_node=pool.gpus_per_node,
        allocated=allocated,
        queued=sum(work.gpus for work in waiting),
        waiting=len(waiting),
        summary=f"{allocated}/{pool.counted or 0}",
    )
