"""Admission at scale: TrainingJobs applied in a burst, until each is launched or queued.

    .venv/bin/python bench/queue_admission.py [--jobs 1000] [--namespaces 10] [--interval 5]
                                              [--rate JOBS_PER_SECOND]

A local control plane (its own state dir, `~/.cache/mlplane/bench-cluster`, started here unless
one runs there) with the kwok GPU pools of operator/cluster/nodepools.yaml (a100 3 x 8, t4 2 x 4,
cpu), KubeRay's own CRDs and operator (started with the control plane), the mlplane CRDs; a local
MLflow server; `mlplane operator` with the kuberay backend (so nothing trains: each admitted job
becomes a RayJob KubeRay validates and makes a RayCluster for, whose kwok pods run no code), every
namespace limited to 2 a100 and 1 t4 GPUs.

Each namespace gets the same mix: 40 % one-GPU a100 jobs, 20 % one-GPU t4 jobs, 40 % CPU-only
jobs. The jobs are applied from 8 threads as fast as the API server takes them (or, with
`--rate`, at that many per second, to see the latency of a load the machine keeps up with); a
watch records when each first shows phase Starting (launched) or Queued. Latency is from just
before its create call to that watch event; `stages` splits it at the job's first watch event
and at the first one that shows the operator's finalizer. The operator's CPU, peak RSS and open
sockets come from /proc, as do the CPU seconds of the API server, etcd and MLflow over the burst,
which say where the time went; then the steady state (every job's timer re-checking the queue)
is sampled for `--steady` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes import config as kubeconfig
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families
from urllib3.exceptions import HTTPError

from mlplane.crds import KINDS
from mlplane.crds.base import GROUP, VERSION
from mlplane.crds.definitions import crd
from mlplane.operator import embedded
from mlplane.operator.cluster.build import cache_root
from mlplane.operator.cluster.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parent.parent

BIN = Path(sys.executable).parent
MIX = ("a100", "a100", "t4", "cpu", "cpu")
"""The node pool of job j is MIX[j % 5]: 40 % a100, 20 % t4, 40 % CPU-only."""
QUOTA = {"a100": 2, "t4": 1}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def memory_kib(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory line (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def process_tree(text: str) -> list[int]:
    """Processes whose command line contains `text`, and all their descendants (MLflow's server
    does its work in a uvicorn child whose command line does not name the store)."""
    parents: dict[int, int] = {}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if text in cmdline:
            found.add(int(entry.name))
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


class CpuMeter:
    """CPU seconds of named groups of processes between `start` and `read`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.started = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                try:
                    total += cpu_seconds(pid)
                except OSError:
                    continue
            sample[name] = total
        return sample

    def read(self) -> dict[str, float]:
        now = self._sample()
        return {name: round(now[name] - self.started[name], 1) for name in self.groups}


@dataclass
class Decisions:
    """When each job was applied, first reached the watch, first carried the operator's
    finalizer (kopf's first reaction), and first showed it launched or queued."""

    applied: dict[str, float] = field(default_factory=dict)
    watched: dict[str, float] = field(default_factory=dict)
    finalized: dict[str, float] = field(default_factory=dict)
    decided: dict[str, tuple[float, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    expected: int = 0
    stream_errors: list[str] = field(default_factory=list)

    def see(self, key: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        phase = obj.get("status", {}).get("phase")
        with self.lock:
            self.watched.setdefault(key, now)
            if obj["metadata"].get("finalizers"):
                self.finalized.setdefault(key, now)
            if key not in self.decided and phase in ("Starting", "Queued"):
                self.decided[key] = (now, phase)
                if len(self.decided) == self.expected:
                    self.done.set()


def watch_decisions(api: client.ApiClient, run: str, decisions: Decisions) -> None:
    """Record phases as the watch delivers them; a broken stream is listed again and resumed
    (a phase first seen in that list counts as reached then: latencies err long, never short)."""
    objects = client.CustomObjectsApi(api)
    while not decisions.done.is_set():
        try:
            stream = watch.Watch().stream(
                objects.list_cluster_custom_object,
                GROUP,
                VERSION,
                "trainingjobs",
                label_selector=f"mlplane.dev/bench={run}",
                timeout_seconds=60,
            )
            for event in stream:
                obj = event["object"]
                meta = obj["metadata"]
                decisions.see(f"{meta['namespace']}/{meta['name']}", obj)
                if decisions.done.is_set():
                    return
        except (ApiException, HTTPError, OSError, ValueError) as error:
            decisions.stream_errors.append(repr(error)[:200])


def training_job(name: str, pool: str, run: str) -> dict[str, Any]:
    gpu = 0 if pool == "cpu" else 1
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"mlplane.dev/bench": run}},
        "spec": {
            "framework": "xgboost",
            "dataset": {"uri": "sklearn://iris", "label": "target"},
            "resources": {"workers": 1, "perWorker": {"cpu": 2, "gpu": gpu}, "nodePool": pool},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"n": 0}
    return {
        "n": len(latencies),
        "p50": round(statistics.median(latencies), 2),
        "p99": round(percentile(latencies, 0.99), 2),
        "max": round(max(latencies), 2),
    }


def open_sockets(pid: int) -> int:
    """Sockets a process holds (the operator's API server, MLflow and metrics connections)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            count += os.readlink(fd).startswith("socket:")
    return count


def report_progress(decisions: Decisions, pid: int, started: float, sockets: list[int]) -> None:
    """Every second, the operator's open sockets into `sockets`; every 10 s on stderr, how many
    jobs are decided and the operator's memory."""
    ticks = 0
    while not decisions.done.wait(1):
        sockets.append(open_sockets(pid))
        ticks += 1
        if ticks % 10:
            continue
        phases = [phase for _, phase in list(decisions.decided.values())]
        print(
            f"[{time.monotonic() - started:5.0f}s] applied {len(decisions.applied)}, "
            f"launched {phases.count('Starting')}, queued {phases.count('Queued')}; "
            f"operator RSS {memory_kib(pid, 'VmRSS') // 1024} MiB, {sockets[-1]} sockets",
            file=sys.stderr,
            flush=True,
        )


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def reconcile_totals(metrics_url: str) -> dict[str, float]:
    """Count and total seconds of the operator's TrainingJob reconcile steps (its histogram)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    totals = {}
    for line in text.splitlines():
        for suffix in ("count", "sum"):
            prefix = f'mlplane_reconcile_duration_seconds_{suffix}{{kind="TrainingJob"}} '
            if line.startswith(prefix):
                totals[suffix] = float(line[len(prefix) :])
    return totals


def api_requests(api: client.ApiClient) -> dict[str, float]:
    """The API server's count of requests served so far by verb and resource (watches
    excluded: a stream is one request however long it lasts)."""
    response = api.call_api("GET", f"{api.configuration.host}/metrics")
    response.read()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.data.decode()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "apiserver_request_total" or labels["verb"] == "WATCH":
                continue
            resource = "/".join(filter(None, (labels["resource"], labels["subresource"])))
            key = f"{labels['verb']} {resource}"
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """The requests served between two api_requests() counts, per job (under 0.01 left out)."""
    return {
        key: round((count - before.get(key, 0.0)) / jobs, 2)
        for key, count in sorted(after.items())
        if count - before.get(key, 0.0) >= jobs / 100
    }


def start_operator(
    workdir: Path, kubeconfig_path: Path, config: dict[str, Any], run: str
) -> tuple[subprocess.Popen[bytes], str]:
    config_file = workdir / "operator.yaml"
    config_file.write_text(yaml.safe_dump(config))
    health = f"http://127.0.0.1:{embedded.free_port()}/healthz"
    metrics_port = embedded.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLANE_")}
    env["KUBECONFIG"] = str(kubeconfig_path)
    with (workdir / "operator.log").open("ab") as log:
        process = subprocess.Popen(
            [
                str(BIN / "mlplane"),
                "operator",
                *("--namespace", f"bench-*-{run}"),
                *("--config", str(config_file)),
                *("--liveness", health),
                *("--metrics-port", str(metrics_port)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while not healthy(health):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the operator did not start; see {workdir / 'operator.log'}")
        time.sleep(0.5)
    return process, f"http://127.0.0.1:{metrics_port}/metrics"


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plane = ControlPlane(cache_root() / "bench-cluster")
    up = plane.up(lambda message: print(f"[cluster] {message}", file=sys.stderr))
    try:
        return measure(args, workdir, plane)
    finally:
        if not up.already_running:
            plane.down(lambda message: print(f"[cluster] {message}", file=sys.stderr))


def mlplane_api(plane: ControlPlane) -> client.ApiClient:
    """A client of the control plane, with the mlplane CRDs installed (kept if already there)."""
    api = kubeconfig.new_client_from_config(config_file=str(plane.kubeconfig))
    extensions = client.ApiextensionsV1Api(api)
    for kind in KINDS.values():
        try:
            extensions.create_custom_resource_definition(crd(kind))
        except ApiException as error:
            if error.status != 409:
                raise
    return api


def measure(args: argparse.Namespace, workdir: Path, plane: ControlPlane) -> dict[str, Any]:
    api = mlplane_api(plane)
    run = uuid.uuid4().hex[:6]
    namespaces = [f"bench-{i}-{run}" for i in range(args.namespaces)]
    core = client.CoreV1Api(api)
    for namespace in namespaces:
        core.create_namespace({"metadata": {"name": namespace}})
    mlflow_dir = workdir / "mlflow"
    mlflow_uri = embedded.start_local_mlflow(mlflow_dir)
    config = {
        "backend": "kuberay",
        "checkpoint_storage": "s3://checkpoints/bench",  # named only: kwok pods run nothing
        "mlflow_tracking_uri": mlflow_uri,
        "data_dir": str(workdir / "data"),
        "observe_interval_seconds": args.interval,
        "node_pools_file": str(ROOT / "operator" / "cluster" / "nodepools.yaml"),
        "gpu_quotas": {namespace: dict(QUOTA) for namespace in namespaces},
    }
    operator, metrics_url = start_operator(workdir, plane.kubeconfig, config, run)
    try:
        components = {c.name: c.pid for c in plane.status().components if c.pid}
        meter = CpuMeter(
            {
                "operator": [operator.pid],
                "kube-apiserver": [components["kube-apiserver"]],
                "etcd": [components["etcd"]],
                "mlflow": process_tree(str(mlflow_dir)),
            }
        )
        decisions = Decisions(expected=args.jobs)
        watcher = threading.Thread(target=watch_decisions, args=(api, run, decisions), daemon=True)
        watcher.start()
        time.sleep(1)  # the watch is established before the first create
        objects = client.CustomObjectsApi(api)
        jobs = [
            (namespaces[j % args.namespaces], f"job-{j:04d}", MIX[(j // args.namespaces) % 5])
            for j in range(args.jobs)
        ]

        def apply(index: int) -> None:
            namespace, name, pool = jobs[index]
            if args.rate:  # job i is due i / rate seconds after the first
                time.sleep(max(0.0, started + index / args.rate - time.monotonic()))
            decisions.applied[f"{namespace}/{name}"] = time.monotonic()
            objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingjobs", training_job(name, pool, run)
            )

        requests_before = api_requests(api)
        started = time.monotonic()
        sockets: list[int] = []
        progress = threading.Thread(
            target=report_progress, args=(decisions, operator.pid, started, sockets), daemon=True
        )
        progress.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(apply, range(len(jobs))))
        applied = time.monotonic() - started
        finished = decisions.done.wait(args.timeout)
        burst = time.monotonic() - started
        burst_cpu = meter.read()
        peak_burst_kib = memory_kib(operator.pid, "VmHWM")
        reconciles = reconcile_totals(metrics_url)
        requests_after = api_requests(api)

        steady = CpuMeter({"operator": [operator.pid]})
        time.sleep(args.steady)
        steady_cpu = steady.read()["operator"]
        peak_kib = memory_kib(operator.pid, "VmHWM")
        rss_kib = memory_kib(operator.pid, "VmRSS")
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a thousand timers mid-call may not all stop in time
            operator.kill()
            operator.wait()
        embedded.stop(mlflow_uri)

    launched = [
        at - decisions.applied[key]
        for key, (at, phase) in decisions.decided.items()
        if phase == "Starting"
    ]
    queued = [
        at - decisions.applied[key]
        for key, (at, phase) in decisions.decided.items()
        if phase == "Queued"
    ]
    last = max((at for at, _ in decisions.decided.values()), default=started)
    decided_at = {key: at for key, (at, _) in decisions.decided.items()}
    stages = {  # where each job's latency went, leg by leg
        "apply_to_watched": (decisions.applied, decisions.watched),
        "watched_to_finalizer": (decisions.watched, decisions.finalized),
        "finalizer_to_decided": (decisions.finalized, decided_at),
    }
    return {
        "jobs": args.jobs,
        "namespaces": args.namespaces,
        "interval_seconds": args.interval,
        "rate_per_second": args.rate or "burst",
        "all_decided": finished,
        "apply_seconds": round(applied, 1),
        "until_all_decided_seconds": round(last - started, 1),
        "apply_to_launched": summary(launched),
        "apply_to_queued": summary(queued),
        "apply_to_decided": summary(launched + queued),
        "stages": {
            name: summary([end[key] - begin[key] for key in end.keys() & begin.keys()])
            for name, (begin, end) in stages.items()
        },
        "watch_stream_errors": decisions.stream_errors,
        "burst_seconds": round(burst, 1),
        "burst_cpu_seconds": burst_cpu,
        "operator_peak_rss_mib_burst": round(peak_burst_kib / 1024),
        "operator_peak_rss_mib": round(peak_kib / 1024),
        "operator_rss_mib_end": round(rss_kib / 1024),
        "operator_peak_sockets": max(sockets, default=0),
        "reconcile_steps_during_burst": reconciles,
        "api_requests_per_job_during_burst": per_job(requests_before, requests_after, args.jobs),
        "steady_seconds": args.steady,
        "steady_operator_cpu_percent": round(100 * steady_cpu / args.steady, 1),
    }


def in_workdir(workdir: Path | None, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """`run` in `workdir` (kept, for the logs), or in a temporary directory."""
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
        return run(workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="mlplane-bench-") as tmp:
        return run(Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0, help="observe interval (s)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="jobs applied per second (0: as fast as possible)"
    )
    parser.add_argument("--steady", type=float, default=30.0, help="steady-state sample (s)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, help="keep the operator's and MLflow's logs here")
    args = parser.parse_args()
    print(json.dumps(in_workdir(args.workdir, lambda workdir: bench(args, workdir)), indent=2))


if __name__ == "__main__":
    main()
