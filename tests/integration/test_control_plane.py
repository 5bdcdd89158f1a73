"""The local control plane is a real one: scheduler, quota admission, garbage collector, kwok.

Every later integration test leans on these behaviours, so they are proven here against the real
API server first (issue 3). No mocks: a failure here means the cluster itself is wrong.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from mlplane.operator.cluster import nodepools
from mlplane.operator.cluster.build import Parts, ensure_parts
from mlplane.operator.cluster.controlplane import ProcessRecord, State

pytestmark = pytest.mark.cluster

T = TypeVar("T")
POOLS = nodepools.load()


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    """Poll until `probe` returns something truthy: controllers converge, they do not answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or probe}")


def gpu_pod(name: str, gpus: int, pool_name: str = "a100") -> dict[str, Any]:
    """A pod asking for `gpus` GPUs on one pool, the way the operator will place Ray workers."""
    pool = POOLS.pool(pool_name)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": POOLS.node_selector(pool),
            "tolerations": POOLS.tolerations(pool),
            "containers": [
                {
                    "name": "worker",
                    "image": "rayproject/ray:2.40.0-gpu",
                    # Extended resources are requested through limits (requests default to them).
                    "resources": {"limits": {nodepools.GPU_RESOURCE: str(gpus)}},
                }
            ],
        },
    }


def test_gpu_pod_lands_on_the_a100_pool_and_runs(k8s_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, gpu_pod("two-gpus", 2))

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("two-gpus", namespace)
        return pod if pod.status.phase == "Running" else None

    pod = eventually(running, what="the 2-GPU pod to be Running")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels[POOLS.pool_label] == "a100"
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert node.status.allocatable[nodepools.GPU_RESOURCE] == "8"


def test_pod_wanting_more_gpus_than_any_node_stays_pending(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, gpu_pod("nine-gpus", 9))

    def unschedulable() -> client.V1PodCondition | None:
        conditions = core.read_namespaced_pod("nine-gpus", namespace).status.conditions or []
        return next(
            (c for c in conditions if c.type == "PodScheduled" and c.reason == "Unschedulable"),
            None,
        )

    condition = eventually(unschedulable, what="the scheduler to call the 9-GPU pod Unschedulable")
    assert "nvidia.com/gpu" in condition.message
    pod = core.read_namespaced_pod("nine-gpus", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def test_gpu_pod_without_toleration_never_lands_on_a_gpu_node(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    body = gpu_pod("no-toleration", 1)
    del body["spec"]["tolerations"]
    core.create_namespaced_pod(namespace, body)

    def unschedulable() -> client.V1PodCondition | None:
        conditions = core.read_namespaced_pod("no-toleration", namespace).status.conditions or []
        return next((c for c in conditions if c.reason == "Unschedulable"), None)

    condition = eventually(unschedulable, what="the GPU taint to keep the pod off a100 nodes")
    assert "untolerated taint" in condition.message


def test_namespace_gpu_quota_rejects_the_pod_that_would_exceed_it(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "4"}}},
    )
    # Admission only enforces a quota once the controller-manager has recorded its status.
    eventually(
        lambda: core.read_namespaced_resource_quota("gpus", namespace).status.hard,
        what="the quota controller to fill in the quota's status",
    )
    core.create_namespaced_pod(namespace, gpu_pod("three-gpus", 3))

    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, gpu_pod("two-more", 2))

    assert rejected.value.status == 403
    assert "exceeded quota: gpus" in rejected.value.body
    assert "requests.nvidia.com/gpu" in rejected.value.body


def test_deleting_an_owner_garbage_collects_what_it_owns(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    for index in range(3):
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": f"owned-{index}", "ownerReferences": [reference]}}
        )

    core.delete_namespaced_config_map("owner", namespace)

    def owned_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return not names & {"owned-0", "owned-1", "owned-2"}

    eventually(owned_gone, what="the garbage collector to delete the owned ConfigMaps")


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlplane.operator.cluster", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _alive(record: ProcessRecord) -> bool:
    stat = Path("/proc") / str(record.pid) / "stat"
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_cached_up_is_ready_in_seconds_and_down_leaves_no_process(
    cluster_parts: Parts, tmp_path: Path
) -> None:
    # The session built (or found) the parts; asking again must find them all cached.
    assert ensure_parts(lambda _message: None).built == ()
    # A second control plane in its own state directory, beside the session's: its down must not
    # touch the one the other tests use.
    state_dir = tmp_path / "cluster"
    try:
        started = time.monotonic()
        up = _cli(state_dir, "up")
        wall = time.monotonic() - started
        assert up.returncode == 0, up.stderr
        assert "parts cached" in up.stderr
        assert "building" not in up.stderr
        assert re.search(r"ready in [\d.]+s: 7 nodes", up.stderr), up.stderr
        assert wall < 30, f"cached start took {wall:.1f}s (target < 30 s):\n{up.stderr}"
        assert up.stdout.strip() == str(state_dir / "kubeconfig")

        again = _cli(state_dir, "up")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr

        status = _cli(state_dir, "status")
        assert status.returncode == 0, status.stdout
        assert "nodes ready 7/7" in status.stdout
        rss_mib = int(re.search(r"total RSS (\d+) MiB", status.stdout).group(1))
        assert rss_mib < 1536, status.stdout

        kubeconfig = _cli(state_dir, "kubeconfig")
        assert kubeconfig.stdout.strip() == str(state_dir / "kubeconfig")
        records = State.read(state_dir / "state.json").processes
        assert {r.name for r in records} == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kuberay-operator",
        }
        assert all(_alive(r) for r in records)
    finally:
        down = _cli(state_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not [r for r in records if _alive(r)], "processes left behind by down"
    status = _cli(state_dir, "status")
    assert status.returncode == 1
    assert "not ready" in status.stdout
