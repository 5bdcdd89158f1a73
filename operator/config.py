"""Operator configuration: a YAML file (the Helm chart renders it), overridden by MLPLANE_* env."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NodePool(BaseModel):
    """A group of nodes work can be placed on, and how to reach it."""

    name: str
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    gpu_resource: str = "nvidia.com/gpu"
    gpu_product: str | None = None
    gpus_per_node: int = 0
    nodes: int = 0


class OperatorConfig(BaseSettings):
    """Everything the operator needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="MLPLANE_", extra="forbid")

    backend: Literal["ray", "kuberay"] = "ray"
    ray_address: str | None = None
    """The Ray dashboard address (http://host:8265). Unset: start a local Ray head."""
    mlflow_tracking_uri: str | None = None
    """Unset: a local MLflow tracking server under data_dir."""
    data_dir: Path = Path.home() / ".local" / "share" / "mlplane"
    """Checkpoints, and the embedded Ray and MLflow state."""
    local_ray_cpus: int = 4
    """Logical CPUs of the embedded Ray head."""
    serve_http_port: int = 8000
    """Serve's HTTP proxy port, when the operator is the one that starts Serve."""
    observe_interval_seconds: float = 5.0
    """How often each active resource is observed (Ray status, MLflow metrics)."""
    node_pools: list[NodePool] = Field(default_factory=list)
    gpu_quotas: dict[str, dict[str, int]] = Field(default_factory=dict)
    """GPUs each namespace may hold per node pool ({namespace: {pool: gpus}}; unlisted: no
    limit), for the GPU ledger's admission (mlplane.operator.quota)."""

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> OperatorConfig:
        """The file's settings, then MLPLANE_* environment variables, then `overrides`."""
        from_file = yaml.safe_load(path.read_text()) if path else {}
        env = cls()  # environment variables only
        merged = {**(from_file or {}), **env.model_dump(exclude_unset=True), **overrides}
        return cls.model_validate(merged)

    def pool(self, name: str) -> NodePool | None:
        return next((p for p in self.node_pools if p.name == name), None)
