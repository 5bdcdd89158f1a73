"""NodePool: a group of nodes work can be placed on, as a cluster-scoped Kubernetes object.

The platform team's object. It takes the place of the operator configuration's `node_pools`
entry of the same name, and an edit counts from the next admission on, without a restart. Its
GPUs are what its nodes' allocatable says, so a pool of kwok nodes and one of real nodes are
counted alike, and a pool an autoscaler grows is counted as it grows.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from mlplane.crds.base import (
    API_VERSION,
    ApiModel,
    FreeForm,
    MapBounds,
    ObjectMeta,
    cel,
    validations,
)

LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
"""A label key: an optional DNS prefix and a name, as Kubernetes has them."""
EXTENDED_RESOURCE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


class Toleration(ApiModel):
    """A pod toleration for the pool's taints, as in a pod spec."""

    key: str | None = Field(default=None, pattern=LABEL_KEY, max_length=316)
    """The taint key; unset with operator Exists: every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists: any value; Equal: `value`."""
    value: str | None = Field(default=None, max_length=63)
    """The taint value, for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect; unset: every effect."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.key) || self.operator == 'Exists'",
                "a toleration without a key must be operator Exists",
            )
        )
    }

    @model_validator(mode="after")
    def _keyless_means_exists(self) -> Toleration:
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must be operator Exists")
        return self


class NodePoolSpec(ApiModel):
    """Which nodes are the pool, and how a pod lands on them."""

    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]], MapBounds(16, LABEL_KEY, 316)
    ] = Field(min_length=1)
    """The node labels that make a node the pool's (`{mlplane.dev/pool: a100}`,
    `{eks.amazonaws.com/nodegroup: gpu-a100}`); Ray pods get it as their nodeSelector."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    """Tolerations for the pool's taints (GPU nodes are usually tainted)."""
    gpu_resource: str = Field(default="nvidia.com/gpu", pattern=EXTENDED_RESOURCE, max_length=253)
    """The extended resource a GPU is requested as, and counted by in the nodes' allocatable."""
    gpu_product: str | None = Field(default=None, max_length=253)
    """The GPU model (the `nvidia.com/gpu.product` node label), for people reading it."""


class NodePoolStatus(ApiModel):
    """The pool's nodes and GPUs, and the GPUs mlplane's work holds and asks for."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The metadata.generation the status was computed from."""
    nodes: int = 0
    """Schedulable nodes with the pool's labels."""
    capacity: int = 0
    """GPUs in all: the sum of those nodes' allocatable `gpuResource`."""
    gpus_per_node: int = 0
    """The most GPUs one of those nodes has: the most one worker may ask for."""
    allocated: int = 0
    """GPUs held by admitted TrainingJobs and TuningSweeps (Starting or Running)."""
    queued: int = 0
    """GPUs the work waiting for the pool asks for."""
    waiting: int = 0
    """How many runs wait for the pool."""
    summary: str = ""
    """`allocated/capacity` (`16/24`), shown by `kubectl get nodepools`."""
    kopf: FreeForm | None = None
    """The operator's own bookkeeping (kept in status so Argo CD sees no drift)."""


class NodePool(ApiModel):
    """A NodePool resource as it is applied."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["mlplane.dev/v1alpha1"] = API_VERSION
    kind: Literal["NodePool"] = "NodePool"
    metadata: ObjectMeta
    spec: NodePoolSpec
    status: NodePoolStatus | None = None
