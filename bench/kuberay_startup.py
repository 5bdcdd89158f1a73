"""GPU TrainingJobs through KubeRay's real operator: apply until the RayCluster is ready.

    .venv/bin/python bench/kuberay_startup.py [--jobs 100] [--interval 1]

A local control plane of its own (`~/.cache/mlplane/bench-kuberay`, started here unless one runs
there) with KubeRay's operator and enough kwok nodes for every job at once (13 a100 nodes of 8
GPUs, 8 cpu nodes for the heads and submitters); `mlplane operator` with the kuberay backend and
no GPU quota. Each job asks one worker with one a100 GPU. Per job, from just before its create
call:

- launched: the TrainingJob shows Starting, its RayJob created. This is all a stand-in for KubeRay
  (CRDs, no controller) could show: there a RayJob nobody acts on counted as started.
- cluster ready: KubeRay's RayCluster for it reports `state: ready` (its pods bound by the
  scheduler and Ready, as kwok makes them).
- submitted: KubeRay moved the RayJob to Running (its submitter created).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from queue_admission import api_requests, in_workdir, mlplane_api, per_job, start_operator, summary
from urllib3.exceptions import HTTPError

from mlplane.crds import KINDS
from mlplane.crds.base import GROUP, VERSION
from mlplane.operator.cluster import nodepools
from mlplane.operator.cluster.build import KUBERAY, cache_root
from mlplane.operator.cluster.controlplane import ControlPlane, State

NODES = {"a100": 13, "cpu": 8}
"""Nodes per pool: every job's worker and head fit at once, so only KubeRay's speed counts."""


def pools_file(workdir: Path) -> Path:
    """The shipped node pools, with as many nodes as NODES says."""
    pools = yaml.safe_load(Path(nodepools.__file__).with_name("nodepools.yaml").read_text())
    pools["pools"] = [
        pool | {"nodes": NODES[pool["name"]]} for pool in pools["pools"] if pool["name"] in NODES
    ]
    path = workdir / "nodepools.yaml"
    path.write_text(yaml.safe_dump(pools))
    return path


def training_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "framework": "xgboost",
            "dataset": {"uri": "sklearn://iris", "label": "target"},
            "resources": {"workers": 1, "perWorker": {"cpu": 2, "gpu": 1}, "nodePool": "a100"},
        },
    }


class Milestones:
    """The first time each job reached each milestone, by job name."""

    def __init__(self, jobs: int, until: tuple[str, ...]) -> None:
        self.jobs = jobs
        self.until = until
        self.reached: dict[str, dict[str, float]] = {
            "applied": {},
            "launched": {},
            "cluster_ready": {},
            "submitted": {},
        }
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.stream_errors: list[str] = []

    def mark(self, milestone: str, job: str) -> None:
        with self.lock:
            self.reached[milestone].setdefault(job, time.monotonic())
            if all(len(self.reached[m]) == self.jobs for m in self.until):
                self.done.set()

    def latencies(self, milestone: str) -> list[float]:
        applied = self.reached["applied"]
        return [at - applied[job] for job, at in self.reached[milestone].items() if job in applied]


def follow(list_call: Any, args: tuple[Any, ...], seen: Any, milestones: Milestones) -> None:
    """Feed every object a watch delivers to `seen`; a broken stream is listed again."""
    while not milestones.done.is_set():
        try:
            for event in watch.Watch().stream(list_call, *args, timeout_seconds=60):
                seen(event["object"])
                if milestones.done.is_set():
                    return
        except (ApiException, HTTPError, OSError, ValueError) as error:
            milestones.stream_errors.append(repr(error)[:200])


def served(objects: client.CustomObjectsApi, namespace: str, timeout: float = 60) -> None:
    """Wait until the API server serves the mlplane kinds just installed: until then it answers
    429 (storage initializing), and the operator's first watches back off for seconds."""
    deadline = time.monotonic() + timeout
    for kind in KINDS.values():
        while True:
            try:
                if kind.namespaced:
                    objects.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
                else:
                    objects.list_cluster_custom_object(GROUP, VERSION, kind.plural)
                break
            except ApiException as error:
                if error.status not in (404, 429) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def stop_kuberay_operator(plane: ControlPlane) -> None:
    """KubeRay's CRDs without its controller: the stand-in the tests once used, where a RayJob
    counts as started the moment it exists."""
    state = State.read(plane.state_dir / "state.json")
    record = next(r for r in state.processes if r.name == KUBERAY.name)
    os.kill(record.pid, signal.SIGTERM)
    os.waitpid(record.pid, 0)  # `bench` started the control plane, so this process's child


def job_of_rayjob(name: str) -> str:
    return name.rsplit("-a", 1)[0]  # `<job>-a<attempt>`


def measure(args: argparse.Namespace, workdir: Path, plane: ControlPlane) -> dict[str, Any]:
    api = mlplane_api(plane)
    run = uuid.uuid4().hex[:6]
    namespace = f"bench-kuberay-{run}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    objects = client.CustomObjectsApi(api)
    served(objects, namespace)
    if args.without_kuberay_operator:
        stop_kuberay_operator(plane)
    config = {
        "backend": "kuberay",
        "checkpoint_storage": "s3://checkpoints/bench",  # named only: kwok pods run nothing
        "data_dir": str(workdir / "data"),
        "observe_interval_seconds": args.interval,
        "node_pools_file": str(workdir / "nodepools.yaml"),
    }
    operator, _ = start_operator(workdir, plane.kubeconfig, config, run)
    milestones = Milestones(
        args.jobs,
        ("launched",) if args.without_kuberay_operator else ("cluster_ready", "submitted"),
    )

    def seen_job(job: dict[str, Any]) -> None:
        if job.get("status", {}).get("phase") == "Starting":
            milestones.mark("launched", job["metadata"]["name"])

    def seen_rayjob(rayjob: dict[str, Any]) -> None:
        if rayjob.get("status", {}).get("jobDeploymentStatus") == "Running":
            milestones.mark("submitted", job_of_rayjob(rayjob["metadata"]["name"]))

    def seen_cluster(cluster: dict[str, Any]) -> None:
        owner = cluster["metadata"].get("labels", {}).get("ray.io/originated-from-cr-name")
        if owner and cluster.get("status", {}).get("state") == "ready":
            milestones.mark("cluster_ready", job_of_rayjob(owner))

    watches = [
        (
            objects.list_namespaced_custom_object,
            (GROUP, VERSION, namespace, "trainingjobs"),
            seen_job,
        ),
        (
            objects.list_namespaced_custom_object,
            ("ray.io", "v1", namespace, "rayjobs"),
            seen_rayjob,
        ),
        (
            objects.list_namespaced_custom_object,
            ("ray.io", "v1", namespace, "rayclusters"),
            seen_cluster,
        ),
    ]
    try:
        for call, call_args, seen in watches:
            threading.Thread(
                target=follow, args=(call, call_args, seen, milestones), daemon=True
            ).start()
        time.sleep(1)  # the watches are established before the first create
        names = [f"job-{j:03d}" for j in range(args.jobs)]

        def apply(name: str) -> None:
            milestones.mark("applied", name)
            objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingjobs", training_job(name)
            )

        requests_before = api_requests(api)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(apply, names))
        finished = milestones.done.wait(args.timeout)
        seconds = time.monotonic() - started
        requests_after = api_requests(api)
    finally:
        operator.terminate()
        operator.wait(timeout=60)
    return {
        "jobs": args.jobs,
        "interval_seconds": args.interval,
        "kuberay_operator": not args.without_kuberay_operator,
        "all_reached": finished,
        "seconds_until_all_reached": round(seconds, 1),
        "apply_to_launched (what the stand-in showed)": summary(milestones.latencies("launched")),
        "apply_to_cluster_ready": summary(milestones.latencies("cluster_ready")),
        "apply_to_submitted": summary(milestones.latencies("submitted")),
        "watch_stream_errors": milestones.stream_errors,
        # Every client's: the operator's, KubeRay's, the controllers', kwok's and this bench's.
        "api_requests_per_job": per_job(requests_before, requests_after, args.jobs),
    }


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plane = ControlPlane(cache_root() / "bench-kuberay")
    log = lambda message: print(f"[cluster] {message}", file=sys.stderr)  # noqa: E731
    up = plane.up(log, pools_file=pools_file(workdir))
    try:
        return measure(args, workdir, plane)
    finally:
        if not up.already_running:
            plane.down(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="observe interval (s)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--without-kuberay-operator",
        action="store_true",
        help="stop KubeRay's operator: its CRDs only, as the stand-in was",
    )
    parser.add_argument("--workdir", type=Path, help="keep the operator's logs here")
    args = parser.parse_args()
    print(json.dumps(in_workdir(args.workdir, lambda workdir: bench(args, workdir)), indent=2))


if __name__ == "__main__":
    main()
