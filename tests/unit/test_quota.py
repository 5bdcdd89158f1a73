"""The GPU ledger: quotas, FIFO within priority, positions, release, rebuild after a restart."""

from pathlib import Path

import pytest

from mlplane.crds.gpuquota import GPUQuota, GPUQuotaSpec
from mlplane.operator.admission import Work
from mlplane.operator.config import NodePool, OperatorConfig
from mlplane.operator.quota import GpuLedger, Limits, config_limits, quota_status

NODE_POOLS = Path(__file__).parents[2] / "operator" / "cluster" / "nodepools.yaml"


def ledger(pool_gpus: int = 24, team_quota: int | None = 8, namespace_quota: int | None = None):
    return GpuLedger(
        Limits(
            pool_capacity=lambda pool: pool_gpus if pool == "a100" else None,
            namespace_pool_quota=lambda ns, pool: team_quota if ns == "team-a" else None,
            namespace_quota=lambda ns: namespace_quota,
        )
    )


def job(n: int, gpus: int = 4, namespace: str = "team-a", priority: int = 0) -> Work:
    return Work(
        uid=f"u{n}",
        namespace=namespace,
        name=f"j{n}",
        pool="a100",
        gpus=gpus,
        priority=priority,
        created=f"2026-11-22T10:00:0{n}Z",
    )


def test_third_four_gpu_job_waits_at_position_one() -> None:
    gpus = ledger()
    assert gpus.admit(job(1)).admitted
    assert gpus.admit(job(2)).admitted
    third = gpus.admit(job(3))
    assert not third.admitted
    assert third.queue.position == 1
    assert third.message == "needs 4 a100 GPUs; team-a uses 8 of 8 a100 GPUs; position 1"
    assert gpus.held("a100", "team-a") == 8


def test_finishing_one_admits_the_next() -> None:
    gpus = ledger()
    for n in (1, 2, 3):
        gpus.admit(job(n))
    gpus.release("u1")
    assert gpus.admit(job(3)).admitted
    assert gpus.held("a100", "team-a") == 8


def test_admitting_again_is_a_no_op() -> None:
    gpus = ledger()
    assert gpus.admit(job(1)).admitted
    assert gpus.admit(job(1)).admitted
    assert gpus.held("a100") == 4


def test_fifo_no_overtaking_within_a_namespace() -> None:
    gpus = ledger()
    gpus.admit(job(1, gpus=8))
    assert gpus.admit(job(2, gpus=4)).queue.position == 1
    assert gpus.admit(job(3, gpus=1)).queue.position == 2
    gpus.release("u1")
    # The small job asks first, but the earlier one is first in line: it is admitted first.
    assert gpus.admit(job(3, gpus=1)).admitted
    assert gpus.held("a100", "team-a") == 5
    assert gpus.admit(job(2, gpus=4)).admitted  # already held: its step launches it
    assert gpus.held("a100", "team-a") == 5


def test_a_head_that_does_not_fit_holds_the_line() -> None:
    gpus = ledger()
    gpus.admit(job(1, gpus=6))
    assert gpus.admit(job(2, gpus=4)).queue.position == 1  # 6 + 4 > 8
    small = gpus.admit(job(3, gpus=1))  # would fit, but may not overtake
    assert (small.admitted, small.queue.position) == (False, 2)
    assert small.message == "needs 1 a100 GPUs; waiting for earlier work; position 2"


def test_work_that_all_fits_starts_whatever_order_its_steps_run_in() -> None:
    """A burst: the operator saw all of it before deciding on any, and the steps run in no
    particular order. None of it waits, and the line still goes in creation order."""
    burst = [job(n, gpus=1) for n in range(1, 9)]
    gpus = GpuLedger(ledger().limits, observed=lambda: [(work, None) for work in burst])
    assert gpus.admit(burst[7]).admitted  # the last, first: everything before it fits too
    assert gpus.held("a100", "team-a") == 8
    assert all(gpus.admit(work).admitted for work in burst)
    assert gpus.held("a100", "team-a") == 8
    late = gpus.admit(job(9, gpus=1))
    assert not late.admitted and "uses 8 of 8" in late.message


def test_work_created_in_the_same_second_waits_in_the_order_it_arrived() -> None:
    """creationTimestamp has whole seconds: the later of two jobs made in one second, whose
    uid happens to sort first, still queues behind the earlier one."""
    gpus = ledger()
    gpus.admit(job(1, gpus=8))
    same_second = job(2).created
    earlier = Work("u9", "team-a", "late-name", "a100", 4, created=same_second)
    later = Work("u0", "team-a", "early-name", "a100", 4, created=same_second)
    assert gpus.admit(earlier).queue.position == 1
    assert gpus.admit(later).queue.position == 2
    assert gpus.admit(earlier).queue.position == 1


def test_priority_goes_before_age() -> None:
    gpus = ledger()
    gpus.admit(job(1, gpus=8))
    gpus.admit(job(2))
    urgent = gpus.admit(job(3, priority=10))
    assert urgent.queue.position == 1
    assert gpus.admit(job(2)).queue.position == 2


def test_deleting_queued_work_moves_the_line_up() -> None:
    gpus = ledger()
    gpus.admit(job(1, gpus=8))
    gpus.admit(job(2))
    gpus.admit(job(3))
    gpus.release("u2")
    assert gpus.admit(job(3)).queue.position == 1
    assert [w.uid for w in gpus.waiting()] == ["u3"]


def test_pool_capacity_binds_across_namespaces() -> None:
    gpus = ledger(pool_gpus=8, team_quota=None)
    assert gpus.admit(job(1, namespace="team-b", gpus=8)).admitted
    waiting = gpus.admit(job(2, namespace="team-c", gpus=1))
    assert not waiting.admitted
    assert "pool a100 has 0 of 8 GPUs free" in waiting.message


def test_namespace_resource_quota_is_honoured() -> None:
    gpus = ledger(team_quota=None, namespace_quota=4)
    assert gpus.admit(job(1)).admitted
    waiting = gpus.admit(job(2))
    assert "team-a uses 4 of its ResourceQuota of 4 GPUs" in waiting.message


def test_cpu_only_work_is_never_queued() -> None:
    gpus = ledger(team_quota=0)
    assert gpus.admit(job(1, gpus=0)).admitted


@pytest.mark.parametrize("phase", ["Starting", "Running"])
def test_rebuild_counts_running_work_once(phase: str) -> None:
    gpus = ledger()
    gpus.rebuild(
        [
            (job(1), phase),
            (job(2), phase),
            (job(3), "Queued"),
            (job(4), "Succeeded"),
        ]
    )
    assert gpus.held("a100", "team-a") == 8
    assert gpus.admit(job(1)).admitted  # already held: not counted twice
    assert gpus.held("a100", "team-a") == 8
    assert gpus.admit(job(3)).queue.position == 1


def test_observed_statuses_are_replayed_before_the_first_decision() -> None:
    replays = []

    def observed():
        replays.append(1)
        return [(job(1), "Running"), (job(2), "Starting"), (job(3), "Queued")]

    gpus = GpuLedger(ledger().limits, observed=observed)
    assert replays == []  # nothing read until the ledger is asked
    assert gpus.admit(job(3)).queue.position == 1  # job 1 and 2 hold the team's 8 GPUs
    gpus.release("u1")
    assert gpus.admit(job(3)).admitted
    assert replays == [1]  # once: later decisions are the ledger's own


def test_limits_from_the_operator_config() -> None:
    config = OperatorConfig(
        node_pools=[
            NodePool(name="a100", gpus_per_node=8, nodes=3),
            NodePool(name="spot", gpus_per_node=4),  # node count unknown: no capacity limit
        ],
        gpu_quotas={"team-a": {"a100": 16}},
    )
    limits = config_limits(config, namespace_quota=lambda ns: 4 if ns == "team-b" else None)
    assert limits.pool_capacity("a100") == 24
    assert limits.pool_capacity("spot") is None
    assert limits.namespace_pool_quota("team-a", "a100") == 16
    assert limits.namespace_pool_quota("team-a", "t4") is None
    assert limits.namespace_pool_quota("team-c", "a100") is None
    assert limits.namespace_quota("team-b") == 4


def test_node_pools_load_from_the_local_cluster_format() -> None:
    config = OperatorConfig(node_pools_file=NODE_POOLS)
    a100 = config.pool("a100")
    assert (a100.gpus_per_node, a100.nodes, a100.gpu_product) == (8, 3, "NVIDIA-A100-SXM4-80GB")
    assert a100.node_selector == {"mlplane.dev/pool": "a100"}
    assert a100.tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    cpu = config.pool("cpu")
    assert (cpu.gpus_per_node, cpu.tolerations) == (0, [])


def test_a_namespaces_gpu_quota_takes_the_place_of_the_configured_one() -> None:
    config = OperatorConfig(
        node_pools=[NodePool(name="a100", gpus_per_node=8, nodes=3)],
        gpu_quotas={"team-a": {"a100": 16}, "team-b": {"a100": 16}},
    )
    quotas = {"team-a": {"a100": 8}}
    limits = config_limits(config, lambda ns: None, gpu_quotas=quotas.get)
    assert limits.namespace_pool_quota("team-a", "a100") == 8
    assert limits.namespace_pool_quota("team-a", "h100") == 0  # not listed: none of that pool
    assert limits.namespace_pool_quota("team-b", "a100") == 16  # no GPUQuota: the configuration
    gpus = GpuLedger(limits)
    assert gpus.admit(job(1, gpus=8)).admitted
    assert not gpus.admit(job(2, gpus=8)).admitted
    quotas["team-a"] = {"a100": 16}  # the platform team edits the GPUQuota
    assert gpus.admit(job(2, gpus=8)).admitted
    unlisted = Work(uid="h", namespace="team-a", name="h", pool="h100", gpus=1, created="z")
    assert gpus.admit(unlisted).message == (
        "needs 1 h100 GPUs; team-a's GPUQuota gives it no h100 GPUs; position 1"
    )


def test_a_gpu_quotas_status_shows_what_its_namespace_holds_and_who_waits() -> None:
    gpus = ledger(team_quota=8)
    for n in (1, 2, 3, 4):
        gpus.admit(job(n))
    gpus.admit(job(5, namespace="team-b"))
    quota = GPUQuota.model_validate(
        {
            "metadata": {"name": "gpus", "namespace": "team-a", "generation": 3},
            "spec": {"pools": [{"name": "a100", "gpus": 8}, {"name": "h100", "gpus": 2}]},
        }
    )
    status = quota_status(quota, gpus)
    assert status.summary == "a100 8/8, h100 0/2"
    assert [(p.name, p.limit, p.used, p.queued) for p in status.pools] == [
        ("a100", 8, 8, 8),
        ("h100", 2, 0, 0),
    ]
    assert status.waiting == 2
    assert [(w.name, w.position) for w in status.queued] == [("j3", 1), ("j4", 2)]
    assert status.observed_generation == 3


def test_a_pool_is_listed_once_in_a_gpu_quota() -> None:
    with pytest.raises(ValueError, match="pool 'a100' is listed more than once"):
        GPUQuotaSpec.model_validate({"pools": [{"name": "a100", "gpus": 8}] * 2})


def test_work_that_asks_more_than_its_quota_waits_without_holding_up_the_line() -> None:
    gpus = ledger(team_quota=8)
    huge = gpus.admit(job(1, gpus=12))
    assert (huge.admitted, huge.reason) == (False, "ExceedsQuota")
    assert huge.message == "needs 12 a100 GPUs; team-a may hold at most 8 a100 GPUs; position 1"
    assert gpus.admit(job(2)).admitted  # created later, and it fits: it does not wait behind
    later = gpus.admit(job(3, gpus=8))
    assert (later.reason, later.queue.position) == ("WaitingForQuota", 2)


def test_each_way_of_waiting_has_its_reason() -> None:
    gpus = ledger(pool_gpus=8, team_quota=None)
    assert gpus.admit(job(1, gpus=8, namespace="team-b")).admitted
    full = gpus.admit(job(2, gpus=4, namespace="team-c"))
    assert (full.reason, full.message) == (
        "WaitingForCapacity",
        "needs 4 a100 GPUs; pool a100 has 0 of 8 GPUs free; position 1",
    )
    gpus.release("u1")
    # j3 would fit now, but j2 came first and takes the pool when its own step comes.
    assert gpus.admit(job(3, gpus=8, namespace="team-c")).reason == "WaitingForCapacity"
    beyond = gpus.admit(job(4, gpus=16, namespace="team-d"))
    assert (beyond.reason, beyond.message) == (
        "ExceedsPoolCapacity",
        "needs 16 a100 GPUs; pool a100 has 8 GPUs in all",
    )


def test_work_that_fits_waits_behind_earlier_work_that_does_not() -> None:
    gpus = ledger(team_quota=8)
    assert gpus.admit(job(1)).admitted
    assert gpus.admit(job(2, gpus=8)).reason == "WaitingForQuota"
    behind = gpus.admit(job(3))
    assert (behind.reason, behind.queue.position) == ("WaitingForEarlierWork", 2)
