"""A kube-apiserver outage with GPU jobs Running and Queued: does everything finish after it?

    .venv/bin/python bench/apiserver_outage.py --outage 90 [--running 10] [--queued 10]
                                               [--interval 1] [--workdir DIR]

A local control plane of its own (`~/.cache/mlplane/bench-outage`, started here unless one runs
there) with KubeRay's operator and the kwok pools of bench/kuberay_startup.py (13 a100 nodes of
8 GPUs, 8 cpu nodes); `mlplane operator` with the kuberay backend, its namespace limited to
`--running` a100 GPUs. `--running` + `--queued` one-GPU TrainingJobs are applied one after another,
so the first `--running` are admitted and the rest wait Queued in creation order. kwok pods run
no code, so this script does what each Ray job would: it reports RUNNING, then records the
job's MLflow run (on a local MLflow server the operator reads) and reports SUCCEEDED, on top of
KubeRay's own RayJob status, once KubeRay has the job's cluster up. KubeRay polls a running
job's dashboard, which kwok pods do not serve, and writes the error over the report: RUNNING is
repeated, as a live dashboard would answer it, until the operator shows the job Running.

With every admitted job Running, the API server alone is stopped for `--outage` seconds (etcd,
KubeRay, the scheduler and kwok keep running) and started again. Then the running jobs end one
at a time, each only once the job admitted in its place shows Starting, so the order the queue
drains in is seen exactly; then each newly admitted job runs and ends as soon as KubeRay has its
cluster up. Printed: how many jobs finished (Succeeded), whether the queue drained in creation
order, the seconds from the API server's return (and from the last Ray job's end) to the
operator's GPU gauge reading 0, /healthz's answers during the outage, the operator's restarts
(exits: nothing here restarts it), and how many of its API requests gave up ("escalating" in
its log).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuberay_startup import pools_file, training_job
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from queue_admission import in_workdir, mlplane_api, start_operator

from mlplane.crds.base import GROUP, VERSION
from mlplane.operator import embedded
from mlplane.operator.cluster.build import cache_root
from mlplane.operator.cluster.controlplane import ControlPlane
from mlplane.training.tags import RUN_UID_TAG

ADMITTED = {"Starting", "Running", "Succeeded"}


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)
    return result


class Scenario:
    """The namespace's jobs as their user sees them (phases) and as their Ray jobs report."""

    def __init__(
        self, api: client.ApiClient, namespace: str, metrics_url: str, mlflow_uri: str
    ) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.metrics_url = metrics_url
        self.mlflow = MlflowClient(mlflow_uri)

    def phases(self) -> dict[str, str | None]:
        found = self.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "trainingjobs"
        )
        return {j["metadata"]["name"]: j.get("status", {}).get("phase") for j in found["items"]}

    def phase_in(self, name: str, phases: set[str]) -> bool:
        return self.phases().get(name) in phases

    def kuberay_running(self, job: str) -> bool:
        """KubeRay has the job's RayJob Running: its cluster is up and its submitter made."""
        try:
            found = self.objects.get_namespaced_custom_object(
                "ray.io", "v1", self.namespace, "rayjobs", f"{job}-a1"
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return found.get("status", {}).get("jobDeploymentStatus") == "Running"

    def ray_job_reports(self, job: str, status: dict[str, str]) -> None:
        self.objects.patch_namespaced_custom_object_status(
            "ray.io", "v1", self.namespace, "rayjobs", f"{job}-a1", {"status": status}
        )

    def runs(self, job: str, timeout: float) -> None:
        """Its Ray job says RUNNING, once KubeRay runs it, until the operator shows it Running."""
        wait_for(lambda: self.kuberay_running(job), timeout, f"KubeRay runs {job}")
        deadline = time.monotonic() + timeout
        while not self.phase_in(job, {"Running"}):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job} not Running within {timeout:g} s")
            self.ray_job_reports(job, {"jobStatus": "RUNNING"})
            time.sleep(1)

    def succeeds(self, job: str) -> None:
        """Its Ray job records the MLflow run the runner makes, then ends SUCCEEDED."""
        experiment = f"{self.namespace}/{job}"  # a job without spec.tracking logs there
        known = self.mlflow.get_experiment_by_name(experiment)
        self.mlflow.create_run(
            known.experiment_id if known else self.mlflow.create_experiment(experiment),
            run_name=job,
            tags={RUN_UID_TAG: self.uid(job)},
        )
        self.ray_job_reports(job, {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"})

    def uid(self, job: str) -> str:
        found = self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "trainingjobs", job
        )
        return found["metadata"]["uid"]

    def gpus_held(self) -> float:
        """The operator's own gauge of GPUs held by admitted runs in the namespace."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "mlplane_gpus_allocated"
            for sample in family.samples
            if sample.labels["namespace"] == self.namespace
        )


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0  # no answer at all


def measure(args: argparse.Namespace, workdir: Path, plane: ControlPlane) -> dict[str, Any]:
    api = mlplane_api(plane)
    run = uuid.uuid4().hex[:6]
    namespace = f"bench-outage-{run}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    mlflow_uri = embedded.start_local_mlflow(workdir / "mlflow")
    config = {
        "backend": "kuberay",
        "mlflow_tracking_uri": mlflow_uri,
        "checkpoint_storage": "s3://checkpoints/bench",  # named only: kwok pods run nothing
        "data_dir": str(workdir / "data"),
        "observe_interval_seconds": args.interval,
        "node_pools_file": str(workdir / "nodepools.yaml"),
        "gpu_quotas": {namespace: {"a100": args.running}},
    }
    operator, metrics_url = start_operator(workdir, plane.kubeconfig, config, run)
    health_url = next(a for a in operator.args if str(a).endswith("/healthz"))
    jobs = Scenario(api, namespace, metrics_url, mlflow_uri)
    running = [f"run-{j:02d}" for j in range(args.running)]
    queued = [f"wait-{j:02d}" for j in range(args.queued)]
    try:
        for name in running + queued:  # one after another: the queue is first come, first served
            jobs.objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingjobs", training_job(name)
            )
            wait_for(lambda n=name: jobs.phase_in(n, {"Starting", "Queued"}), 60, f"{name} decided")
        for name in running:
            jobs.runs(name, args.timeout)
        phases = jobs.phases()
        assert all(phases[n] == "Queued" for n in queued), phases
        running_at_outage = sum(phases[n] == "Running" for n in running)

        print(f"[bench] stopping kube-apiserver for {args.outage:g} s", file=sys.stderr)
        plane.stop_component("kube-apiserver")
        answers: set[int] = set()
        deadline = time.monotonic() + args.outage
        while time.monotonic() < deadline:
            answers.add(health(health_url))
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        plane.start_component("kube-apiserver", lambda m: print(f"[cluster] {m}", file=sys.stderr))
        back = time.monotonic()

        in_order, stuck = True, None
        last_ended = freed = None
        try:
            for ending, admitted in zip(running, queued + [None] * len(running), strict=False):
                jobs.succeeds(ending)
                if admitted:
                    wait_for(lambda a=admitted: jobs.phase_in(a, ADMITTED), args.timeout, admitted)
                    phases = jobs.phases()
                    later = queued[queued.index(admitted) + 1 :]
                    in_order = in_order and all(phases[n] == "Queued" for n in later)
            for name in queued:
                jobs.runs(name, args.timeout)
                jobs.succeeds(name)
            last_ended = time.monotonic()
            wait_for(lambda: jobs.gpus_held() == 0, args.timeout, "GPUs held = 0")
            freed = time.monotonic()
            wait_for(
                lambda: all(p == "Succeeded" for p in jobs.phases().values()), 60, "all Succeeded"
            )
        except TimeoutError as error:  # what did not happen is the figure
            stuck = str(error)
        phases = jobs.phases()
        jobs_gpus_held = jobs.gpus_held()
    finally:
        exited = operator.poll()
        operator.terminate()
        operator.wait(timeout=60)
        embedded.stop(mlflow_uri)
    log = (workdir / "operator.log").read_text(errors="replace")
    return {
        "outage_seconds": args.outage,
        "interval_seconds": args.interval,
        "jobs_admitted_at_outage": args.running,
        "jobs_shown_running_at_outage": running_at_outage,
        "jobs_queued_at_outage": args.queued,
        "finished": sum(p == "Succeeded" for p in phases.values()),
        "queue_drained_in_order": in_order and stuck is None,
        "stuck": stuck,
        "gpus_held_at_end": jobs_gpus_held,
        "seconds_from_api_server_return_to_gpus_held_0": freed and round(freed - back, 1),
        "seconds_from_last_ray_job_end_to_gpus_held_0": (
            freed and last_ended and round(freed - last_ended, 1)
        ),
        "healthz_during_outage": sorted(answers),
        "operator_restarts": 0 if exited is None else 1,
        "api_requests_given_up": log.count("escalating"),
    }


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plane = ControlPlane(cache_root() / "bench-outage")
    log = lambda message: print(f"[cluster] {message}", file=sys.stderr)  # noqa: E731
    up = plane.up(log, pools_file=pools_file(workdir))
    try:
        return measure(args, workdir, plane)
    finally:
        if not up.already_running:
            plane.down(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=30.0, help="API server down (s)")
    parser.add_argument("--running", type=int, default=10, help="jobs Running at the outage")
    parser.add_argument("--queued", type=int, default=10, help="jobs Queued behind them")
    parser.add_argument("--interval", type=float, default=1.0, help="observe interval (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per wait (s)")
    parser.add_argument("--workdir", type=Path, help="keep the operator's log here")
    args = parser.parse_args()
    print(json.dumps(in_workdir(args.workdir, lambda workdir: bench(args, workdir)), indent=2))


if __name__ == "__main__":
    main()
