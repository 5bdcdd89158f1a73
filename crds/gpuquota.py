"""GPUQuota: how many GPUs of each node pool the work in one namespace may hold at once.

The platform team's object, in the tenant's namespace: tenants can read it (its status is where
they see what their namespace uses and who waits), and only the platform team changes it. The
operator reads it on every admission, so an edit takes effect at the next observe interval.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from mlplane.crds.base import API_VERSION, NAME_PATTERN, ApiModel, FreeForm, ObjectMeta, list_map

MAX_POOL_GPUS = 1_000_000

POOLS_LIST = list_map("name")


class PoolQuota(ApiModel):
    """The GPUs the namespace may hold in one node pool."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    """The node pool, as named in the operator's node pools (`a100`)."""
    gpus: int = Field(ge=0, le=MAX_POOL_GPUS)
    """GPUs the namespace's running work may hold in this pool at once."""


class GPUQuotaSpec(ApiModel):
    """The namespace's GPUs per node pool. A pool the quota does not list gives it none: work
    asking for one waits, Queued, and says so."""

    pools: list[PoolQuota] = Field(min_length=1, max_length=64, json_schema_extra=POOLS_LIST)
    """One entry per node pool."""

    @field_validator("pools")
    @classmethod
    def _one_entry_per_pool(cls, pools: list[PoolQuota]) -> list[PoolQuota]:
        names = [pool.name for pool in pools]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"pool {twice[0]!r} is listed more than once")
        return pools


class QueuedWork(ApiModel):
    """One TrainingJob or TuningSweep of the namespace waiting for GPUs."""

    model_config = ConfigDict(extra="ignore")

    name: str
    """The resource's name."""
    pool: str
    """The node pool it waits for."""
    gpus: int
    """The GPUs it asks for."""
    position: int
    """1 for next in line in its pool."""


class PoolUsage(ApiModel):
    """The quota of one pool against what the namespace holds."""

    model_config = ConfigDict(extra="ignore")

    name: str
    """The node pool."""
    limit: int
    """GPUs the quota allows (spec)."""
    used: int
    """GPUs held by the namespace's admitted work (Starting or Running)."""
    queued: int
    """GPUs the namespace's waiting work asks for."""


class GPUQuotaStatus(ApiModel):
    """What the namespace holds and who waits, as the operator's GPU ledger sees it."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The metadata.generation the status was computed from."""
    pools: list[PoolUsage] = Field(default_factory=list, json_schema_extra=POOLS_LIST)
    """Limit, used and queued GPUs per pool."""
    waiting: int = 0
    """How many of the namespace's runs wait for GPUs."""
    queued: list[QueuedWork] = Field(default_factory=list)
    """The first of them, in admission order within each pool (at most 100)."""
    summary: str = ""
    """`used/limit` per pool (`a100 8/16`), shown by `kubectl get gpuquotas`."""
    kopf: FreeForm | None = None
    """The operator's own bookkeeping (kept in status so Argo CD sees no drift)."""


class GPUQuota(ApiModel):
    """A GPUQuota resource as it is applied."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["mlplane.dev/v1alpha1"] = API_VERSION
    kind: Literal["GPUQuota"] = "GPUQuota"
    metadata: ObjectMeta
    spec: GPUQuotaSpec
    status: GPUQuotaStatus | None = None
