"""Operator configuration: a YAML file (the Helm chart renders it), overridden by MLPLANE_* env."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import ipaddress
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from mlplane.operator.cluster import nodepools
from mlplane.operator.code_package import is_local

RECONCILE_THREADS = 16
"""Reconcile steps the operator runs at once; each may hold one API server and one MLflow
connection, so both clients pool this many."""

API_SERVER_REQUESTS = 64
"""Requests kopf may have in flight to the API server at once (status patches, finalizers,
Events), each on a connection of its own. kopf's default is no limit, and a burst of a thousand
new resources then opens about as many TLS connections, each holding a third of a MiB in the
operator and a handshake's CPU in both processes; beyond the limit, a request waits for one in
flight to finish and reuses its connection. Watch streams are not counted: there is one per
watched kind and namespace for as long as the operator runs, however many namespaces a
`--namespace` pattern comes to match."""

DEFAULT_RAY_IMAGE = f"ghcr.io/mlplane/mlplane:{importlib.metadata.version('mlplane')}"
DEFAULT_RAY_VERSION = importlib.metadata.version("ray")


class NodePool(BaseModel):
    """A group of nodes work can be placed on, and how to reach it."""

    name: str
    """What `spec.resources.nodePool` names."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """The pod nodeSelector that lands a pod on the pool's nodes."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Pod tolerations for the pool's taints (GPU nodes are usually tainted)."""
    gpu_resource: str = "nvidia.com/gpu"
    """The extended resource a GPU is requested as."""
    gpu_product: str | None = None
    """The GPU model (the `nvidia.com/gpu.product` node label), for people reading the config."""
    gpus_per_node: int = 0
    """GPUs on each node; 0 for a CPU pool."""
    nodes: int = 0
    """Nodes in the pool; with gpus_per_node, the pool's GPU capacity. 0: capacity unknown."""
    counted: int | None = None
    """A NodePool resource's GPUs in all, counted from its nodes' allocatable; then `nodes` and
    `gpus_per_node` are counted too. None for a configured pool."""

    @property
    def capacity(self) -> int | None:
        """GPUs in all; None when unknown (a pool without nodes, which an autoscaler may be
        adding, is limited by nothing but the scheduler)."""
        if not self.nodes:
            return None
        return self.gpus_per_node * self.nodes if self.counted is None else self.counted

    @property
    def nodes_known(self) -> bool:
        """Whether its nodes' GPUs are known: configured, or counted from nodes that exist."""
        return self.counted is None or self.nodes > 0

    @classmethod
    def from_file(cls, path: Path) -> list[NodePool]:
        """The pools of a node-pool file in the format of operator/cluster/nodepools.yaml."""
        pools = nodepools.load(path)
        return [
            cls(
                name=pool.name,
                node_selector=pools.node_selector(pool),
                tolerations=pools.tolerations(pool),
                gpu_product=pool.gpu.product if pool.gpu else None,
                gpus_per_node=pool.gpu.count if pool.gpu else 0,
                nodes=pool.nodes,
            )
            for pool in pools.pools
        ]


class CodePolicy(BaseModel):
    """What custom code the jobs of some namespaces may bring. Without a policy: anything."""

    namespaces: str = "*"
    """The namespaces it covers, as a shell pattern (`team-*`); the first policy that matches a
    resource's namespace is its policy."""
    entrypoint_modules: list[str] = Field(default_factory=list)
    """Modules (with their submodules) a `spec.model.entrypoint` may name, e.g. `team_a_models`.
    Empty: any module."""
    pip: bool = True
    """Whether `runtimeEnv.pip` may install packages at all."""
    pip_index_url: str | None = None
    """The package index `runtimeEnv.pip` installs from (pip's `--index-url`). Unset: the Ray
    nodes' own pip configuration."""

    def allows_module(self, module: str) -> bool:
        return not self.entrypoint_modules or any(
            module == allowed or module.startswith(f"{allowed}.")
            for allowed in self.entrypoint_modules
        )


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
    """Node pools work can be placed on (spec.resources.nodePool)."""
    node_pools_file: Path | None = None
    """More node pools, from a file in the format of operator/cluster/nodepools.yaml (the local
    cluster's kwok pools); added to node_pools."""
    node_pool_status: bool = True
    """Write NodePools' status (their nodes, and the GPUs this operator's work holds and asks
    for). NodePools are cluster-wide and each operator counts only the work of the namespaces
    it serves: with several mlplane operators on one cluster, leave it on for one of them."""
    gpu_quotas: dict[str, dict[str, int]] = Field(default_factory=dict)
    """GPUs each namespace may hold per node pool ({namespace: {pool: gpus}}; unlisted: no
    limit), for the GPU ledger's admission (mlplane.operator.quota)."""
    ray_image: str = DEFAULT_RAY_IMAGE
    """kuberay backend: the image of every Ray head and worker pod; it must have Ray and mlplane
    (the runner). Default: the mlplane image of this version."""
    ray_version: str = DEFAULT_RAY_VERSION
    """kuberay backend: the Ray version in `ray_image` (KubeRay's `rayVersion`, which it needs to
    start the pods). Default: the operator's own Ray, the one the mlplane image carries."""
    head_node_pool: str | None = None
    """kuberay backend: the pool Ray head pods run on. Unset: the first pool without GPUs."""
    use_kubernetes_proxy: bool | None = None
    """kuberay backend: reach Serve in Ray clusters (for live serving figures and the canary's
    guard) through the API server's service proxy, as KubeRay's `--use-kubernetes-proxy` does,
    instead of by cluster DNS; needs `get` on `services/proxy`. Unset: only when the operator
    runs outside the cluster, where cluster DNS does not resolve."""
    sagemaker_artifact_bucket: str | None = None
    """target sagemaker: the S3 bucket model.tar.gz files are uploaded to, unless a
    ModelDeployment names one (spec.sagemaker.artifactBucket)."""
    sagemaker_endpoint_urls: list[str] = Field(default_factory=list)
    """target sagemaker: custom endpoints (VPC interface endpoints, a local moto server) a
    ModelDeployment may name in spec.sagemaker.endpointUrl; a URL there must start with one of
    these. Empty: none may; deployments reach AWS's own endpoints. The operator sends its signed
    requests wherever the URL points, so tenants never choose it alone."""
    code_policies: list[CodePolicy] = Field(default_factory=list)
    """Per namespace, what custom code jobs may bring (entrypoint modules, pip and its index).
    Empty: any code, as on a cluster of one team."""
    checkpoint_storage: str | None = None
    """Where runs keep checkpoints: a place every Ray node sees. With the kuberay backend an
    s3:// or gs:// URI; with a Ray cluster at ray_address off this machine, such a URI or a
    path every node mounts. Unset: <data_dir>/checkpoints, seen only by a Ray on this machine."""

    def code_policy(self, namespace: str) -> CodePolicy:
        """The policy for `namespace`'s jobs: the first whose pattern matches, else an open one."""
        return next(
            (p for p in self.code_policies if fnmatch.fnmatchcase(namespace, p.namespaces)),
            CodePolicy(),
        )

    @model_validator(mode="after")
    def _pools_from_file(self) -> OperatorConfig:
        if self.node_pools_file:
            known = {p.name for p in self.node_pools}
            extra = NodePool.from_file(self.node_pools_file)
            self.node_pools = self.node_pools + [p for p in extra if p.name not in known]
        return self

    @model_validator(mode="after")
    def _checkpoints_every_node_sees(self) -> OperatorConfig:
        """A retry resumes from the last checkpoint on whichever node it lands: a directory on
        the operator's machine would silently restart every retry from epoch 0."""
        storage = self.checkpoint_storage
        if self.backend == "kuberay" and (storage is None or is_local(storage)):
            raise ValueError(
                f"checkpoint_storage: {storage or 'unset'}; the kuberay backend's Ray pods mount "
                "no volume, so they keep checkpoints only in object storage: set an s3:// or "
                "gs:// URI"
            )
        if storage is None and self.ray_address and not _on_this_machine(self.ray_address):
            raise ValueError(
                f"checkpoint_storage: unset, but the Ray cluster at {self.ray_address} is not "
                f"on this machine, whose {self.data_dir / 'checkpoints'} its nodes cannot see: "
                "set an s3:// or gs:// URI, or a path every Ray node mounts"
            )
        return self

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> OperatorConfig:
        """The file's settings, then MLPLANE_* environment variables, then `overrides`."""
        from_file = yaml.safe_load(path.read_text()) if path else {}
        merged = {**(from_file or {}), **EnvSettingsSource(cls)(), **overrides}
        return cls.model_validate(merged)

    @property
    def through_kubernetes_proxy(self) -> bool:
        """Whether Serve in Ray clusters is reached through the API server's service proxy."""
        if self.use_kubernetes_proxy is not None:
            return self.use_kubernetes_proxy
        # Set in every pod by the kubelet; the kubernetes client's in-cluster config reads it too.
        return "KUBERNETES_SERVICE_HOST" not in os.environ

    _pool_resources: Callable[[], Iterable[NodePool]] = PrivateAttr(
        default_factory=lambda: _no_pool_resources
    )

    def watch_pools(self, resources: Callable[[], Iterable[NodePool]]) -> None:
        """Count the NodePool resources the operator watches among the pools: each takes the
        place of the configured pool of its name, and is asked for at each use."""
        self._pool_resources = resources

    def pools(self) -> list[NodePool]:
        """The node pools work can be placed on: configured ones first, in their order."""
        live = {pool.name: pool for pool in self._pool_resources()}
        configured = [live.pop(pool.name, pool) for pool in self.node_pools]
        return configured + sorted(live.values(), key=lambda pool: pool.name)

    def pool(self, name: str) -> NodePool | None:
        return next((p for p in self.pools() if p.name == name), None)


def _no_pool_resources() -> Iterable[NodePool]:
    return ()


def _on_this_machine(ray_address: str) -> bool:
    host = urlparse(ray_address if "://" in ray_address else f"//{ray_address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
