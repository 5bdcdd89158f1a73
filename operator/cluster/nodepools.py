"""Simulated GPU node pools: the YAML format, and the fake Node objects kwok brings to life.

The same file format is meant for the operator's config, so a pool name in a TrainingJob
(`resources.nodePool: a100`) means the same selector and toleration locally and in production.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

# kwok manages only nodes carrying this annotation (`--manage-nodes-with-annotation-selector`), so a
# real node that ever joins this API server is left alone.
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"


class Gpu(BaseModel):
    """The GPUs of each node in a pool, as NVIDIA's device plugin and GPU discovery show them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    count: int = Field(gt=0, description="`nvidia.com/gpu` capacity of each node.")
    product: str = Field(description="Value of the `nvidia.com/gpu.product` label.")
    memory_mib: int | None = Field(
        default=None, alias="memoryMiB", description="Value of the `nvidia.com/gpu.memory` label."
    )


class NodePool(BaseModel):
    """One group of identical nodes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Pool name.")
    nodes: int = Field(gt=0, description="How many nodes the pool has.")
    instance_type: str | None = Field(
        default=None, alias="instanceType", description="`node.kubernetes.io/instance-type` label."
    )
    cpu: str = Field(description="CPU capacity of each node (a Kubernetes quantity).")
    memory: str = Field(description="Memory capacity of each node (a Kubernetes quantity).")
    pods: int = Field(default=110, gt=0, description="Pod capacity of each node.")
    gpu: Gpu | None = Field(default=None, description="GPUs of each node; absent for a CPU pool.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra node labels.")


class NodePools(BaseModel):
    """The whole file: which label names the pool, and the pools."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pool_label: str = Field(default="mlplane.dev/pool", alias="poolLabel")
    pools: list[NodePool]

    def pool(self, name: str) -> NodePool:
        """The pool called `name`; KeyError names the pools that do exist."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no node pool {name!r} (have: {', '.join(p.name for p in self.pools)})")

    def node_selector(self, pool: NodePool) -> dict[str, str]:
        """What a pod puts in `nodeSelector` to land on this pool."""
        return {self.pool_label: pool.name}

    def tolerations(self, pool: NodePool) -> list[dict[str, str]]:
        """What a pod must tolerate to land on this pool (GPU pools are tainted)."""
        if pool.gpu is None:
            return []
        return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]

    def node_manifests(self) -> list[dict[str, Any]]:
        """Every fake Node, with capacity in `status` (kwok's node-initialize stage keeps it)."""
        return [self._node(pool, index) for pool in self.pools for index in range(pool.nodes)]

    def _node(self, pool: NodePool, index: int) -> dict[str, Any]:
        name = f"{pool.name}-{index}"
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            self.pool_label: pool.name,
        }
        if pool.instance_type:
            labels["node.kubernetes.io/instance-type"] = pool.instance_type
        capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
        taints: list[dict[str, str]] = []
        if pool.gpu is not None:
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": pool.gpu.product,
                "nvidia.com/gpu.count": str(pool.gpu.count),
            }
            if pool.gpu.memory_mib is not None:
                labels["nvidia.com/gpu.memory"] = str(pool.gpu.memory_mib)
            capacity[GPU_RESOURCE] = str(pool.gpu.count)
            taints.append({"key": GPU_RESOURCE, "value": GPU_TAINT_VALUE, "effect": "NoSchedule"})
        labels |= pool.labels
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {
                    KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {"taints": taints},
            "status": {"capacity": capacity, "allocatable": capacity},
        }


def load(path: Path | None = None) -> NodePools:
    """Read a node-pool file; without a path, the pools shipped with mlplane."""
    if path is None:
        text = resources.files(__package__).joinpath("nodepools.yaml").read_text()
    else:
        text = path.read_text()
    return NodePools.model_validate(yaml.safe_load(text))
