"""NodePool resources as the operator's node pools: counted from their nodes, in place of the
configured pool of their name."""

from typing import Any

from mlplane.crds.nodepool import NodePool as NodePoolResource
from mlplane.crds.trainingjob import ResourceRequest
from mlplane.operator.admission import Work
from mlplane.operator.config import NodePool, OperatorConfig
from mlplane.operator.lifecycle import resource_problems
from mlplane.operator.pool_resources import Node, as_node_pool, pool_status
from mlplane.operator.quota import GpuLedger, config_limits


def node(pool: str, gpus: str = "8", ready: str = "True", cordoned: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{pool}-n", "labels": {"mlplane.dev/pool": pool, "zone": "a"}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": {"cpu": "96", "nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def resource(name: str = "a100", selector: str = "a100", generation: int = 1) -> NodePoolResource:
    return NodePoolResource.model_validate(
        {
            "metadata": {"name": name, "generation": generation},
            "spec": {
                "nodeSelector": {"mlplane.dev/pool": selector},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            },
        }
    )


NODES = [
    Node.of(node("a100")),
    Node.of(node("a100", gpus="4")),
    Node.of(node("a100", ready="False")),
    Node.of(node("a100", cordoned=True)),
    Node.of(node("t4", gpus="4")),
]


def test_a_pools_gpus_are_its_schedulable_nodes_allocatable() -> None:
    pool = as_node_pool(resource(), NODES)
    assert (pool.nodes, pool.gpus_per_node, pool.capacity) == (2, 8, 12)
    assert pool.node_selector == {"mlplane.dev/pool": "a100"}
    assert pool.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_a_pool_without_nodes_has_no_limit_but_the_scheduler() -> None:
    """An autoscaler may be adding its nodes: work waits for them instead of being refused."""
    pool = as_node_pool(resource(selector="h100"), NODES)
    assert (pool.nodes, pool.capacity) == (0, None)
    config = OperatorConfig()
    config.watch_pools(lambda: [pool])
    asks = ResourceRequest.model_validate(
        {"workers": 2, "perWorker": {"gpu": 8}, "nodePool": "a100"}
    )
    assert resource_problems(asks, config, "spec.resources") == []


def test_a_resource_takes_the_place_of_the_configured_pool_of_its_name() -> None:
    config = OperatorConfig(
        node_pools=[
            NodePool(name="a100", node_selector={"old": "yes"}, gpus_per_node=8, nodes=10),
            NodePool(name="cpu"),
        ]
    )
    live = [as_node_pool(resource(), NODES), as_node_pool(resource("t4", "t4"), NODES)]
    config.watch_pools(lambda: live)
    assert [(p.name, p.capacity) for p in config.pools()] == [
        ("a100", 12),
        ("cpu", None),
        ("t4", 4),
    ]
    assert config.pool("a100").node_selector == {"mlplane.dev/pool": "a100"}
    limits = config_limits(config, namespace_quota=lambda ns: None)
    assert limits.pool_capacity("a100") == 12
    asks = ResourceRequest.model_validate({"perWorker": {"gpu": 16}, "nodePool": "t4"})
    assert resource_problems(asks, config, "spec.resources") == [
        "spec.resources.perWorker.gpu: 16 GPUs per worker, but nodes in pool 't4' have 4"
    ]
    live.clear()  # deleted: the configured pool is back
    assert config.pool("a100").node_selector == {"old": "yes"}


def test_a_pools_status_counts_its_nodes_and_who_holds_and_waits() -> None:
    config = OperatorConfig()
    pool = as_node_pool(resource(generation=3), NODES)
    config.watch_pools(lambda: [pool])
    ledger = GpuLedger(config_limits(config, namespace_quota=lambda ns: None))

    def work(n: int, gpus: int) -> Work:
        return Work(f"u{n}", "team-a", f"j{n}", "a100", gpus, 0, f"2026-12-05T10:00:0{n}Z")

    assert ledger.admit(work(1, 8)).admitted
    assert not ledger.admit(work(2, 8)).admitted  # 12 GPUs in all
    status = pool_status(resource(generation=3), pool, ledger)
    assert status.to_dict() == {
        "observedGeneration": 3,
        "nodes": 2,
        "capacity": 12,
        "gpusPerNode": 8,
        "allocated": 8,
        "queued": 8,
        "waiting": 1,
        "summary": "8/12",
    }
