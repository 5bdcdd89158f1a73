"""A kube-apiserver outage while GPU jobs run and wait: `mlplane operator` (kuberay backend, 1 s
observe interval, an a100 quota that admits one job at a time) against the suite's own control
plane, whose API server alone is stopped for 30 s and started again (etcd and the rest keep
running) while one job is Running and two wait Queued behind it.

The operator's requests fail for the whole outage: its status patches, its watches, its Events.
After it, every job must still finish, in queue order, the GPUs they held must be given back
within three observe intervals of the last one ending, and the operator must not have restarted.
kwok pods run no code, so what the Ray job inside would report is written by the test on top of
KubeRay's own RayJob status, as in test_kuberay.py. Budget: about 2.5 minutes.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from mlflow import MlflowClient
from service_fixtures import unavailable

from mlplane.operator import embedded
from mlplane.operator.cluster.build import cache_root
from mlplane.operator.cluster.controlplane import ControlPlane
from mlplane.training.tags import RUN_UID_TAG
from tests.e2e.conftest import OperatorProcess, Resources, samples
from tests.e2e.test_kuberay import (
    STARTUP_TIMEOUT,
    kuberay_reached,
    phase_is,
    rayjob,
    status,
    training_job,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
INTERVAL = 1.0
OUTAGE_SECONDS = 30
SUFFIX = uuid.uuid4().hex[:6]
NAMESPACE = f"outage-{SUFFIX}"
KUBERAY_AFTER_OUTAGE = 180
"""How long KubeRay's own operator may take to move a RayJob: its informers lost the API server
too and relist with client-go's backoff (up to 30 s), on a machine the suite keeps busy."""
JOBS = ("first", "second", "third")
"""Applied in this order; each asks 8 a100 GPUs, the namespace's whole quota."""


@pytest.fixture(scope="module")
def control_plane(kubeconfig: Path) -> ControlPlane:
    """The session's own control plane, the only one this test may take the API server from:
    never a cluster named by MLPLANE_KUBECONFIG, which others may be using."""
    plane = ControlPlane(cache_root() / "test-cluster")
    if os.environ.get("MLPLANE_KUBECONFIG") or plane.kubeconfig != kubeconfig:
        unavailable(
            "an API server outage needs the suite's own control plane",
            RuntimeError(f"the session uses {kubeconfig}; unset MLPLANE_KUBECONFIG"),
        )
    return plane


class Operator(OperatorProcess):
    """The operator with its /healthz and Prometheus metrics."""

    def __init__(self, workdir: Path, kubeconfig: Path, mlflow_server: str) -> None:
        config = {
            "backend": "kuberay",
            "mlflow_tracking_uri": mlflow_server,
            "data_dir": str(workdir / "data"),
            "observe_interval_seconds": INTERVAL,
            "node_pools_file": str(REPO / "operator" / "cluster" / "nodepools.yaml"),
            "gpu_quotas": {NAMESPACE: {"a100": 8}},
            "ray_image": "mlplane/runtime:test",
            "checkpoint_storage": "s3://checkpoints/outage",  # named only: kwok pods run nothing
        }
        config_file = workdir / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLANE_")}
        health = f"http://127.0.0.1:{embedded.free_port()}/healthz"
        metrics_port = embedded.free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.mlflow_server = mlflow_server
        super().__init__(
            env | {"KUBECONFIG": str(kubeconfig)},
            workdir / "operator.log",
            args=(
                "operator",
                *("--namespace", NAMESPACE),
                *("--config", str(config_file)),
                *("--liveness", health),
                *("--metrics-port", str(metrics_port)),
            ),
            health_url=health,
        )

    def health(self) -> tuple[int, dict[str, object]]:
        """/healthz's status code and body (kopf answers 500 when a probe fails)."""
        assert self.health_url
        try:
            with urllib.request.urlopen(self.health_url, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, {}

    def gpus_held(self) -> float:
        """The operator's gauge of GPUs held by admitted runs in the test's namespace."""
        allocated = samples(self.metrics_url, "mlplane_gpus_allocated")
        return sum(sample.value for sample in allocated if sample.labels["namespace"] == NAMESPACE)


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    crds: list[str],
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    core = client.CoreV1Api(k8s_api)
    core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {"mlplane.dev/test": "true"}}})
    process = Operator(tmp_path_factory.mktemp("outage-operator"), kubeconfig, mlflow_server)
    process.start()
    process.wait_healthy(STARTUP_TIMEOUT)
    yield process
    objects = client.CustomObjectsApi(k8s_api)
    objects.delete_collection_namespaced_custom_object(
        "mlplane.dev", "v1alpha1", NAMESPACE, "trainingjobs"
    )
    wait_for(
        lambda: (
            not objects.list_namespaced_custom_object(
                "mlplane.dev", "v1alpha1", NAMESPACE, "trainingjobs"
            )["items"]
        ),
        30,
    )
    process.stop()
    core.delete_namespace(NAMESPACE)


def reaches(jobs: Resources, name: str, phase: str, timeout: float) -> None:
    """Until the job shows `phase`; else fail with what it and its RayJob show."""
    try:
        wait_for(phase_is(jobs, name, phase), timeout)
    except AssertionError:
        ray = rayjob(jobs, f"{name}-a1").get("status")
        log = "\n".join(jobs.operator.log().splitlines()[-30:])
        raise AssertionError(
            f"{name} not {phase} in {timeout} s: {status(jobs, name)}\nRayJob: {ray}\n{log}"
        ) from None


def ray_job_reports(jobs: Resources, name: str, job_status: str) -> None:
    """Write what the job's Ray job reports to KubeRay, once KubeRay runs its RayJob: RUNNING,
    or SUCCEEDED (KubeRay's deployment then Complete) after recording the MLflow run the
    runner makes first, which the operator reads when the job ends."""
    kuberay_reached(jobs, name, "Running", KUBERAY_AFTER_OUTAGE)
    found: dict[str, object] = {"jobStatus": job_status}
    if job_status == "SUCCEEDED":
        found["jobDeploymentStatus"] = "Complete"
        mlflow = MlflowClient(jobs.operator.mlflow_server)
        experiment = f"{NAMESPACE}/{name}"  # the default a job without spec.tracking gets
        known = mlflow.get_experiment_by_name(experiment)
        mlflow.create_run(
            known.experiment_id if known else mlflow.create_experiment(experiment),
            run_name=name,
            tags={RUN_UID_TAG: jobs.get("trainingjobs", name)["metadata"]["uid"]},
        )
    jobs.objects.patch_namespaced_custom_object_status(
        "ray.io", "v1", NAMESPACE, "rayjobs", f"{name}-a1", {"status": found}
    )


def runs(jobs: Resources, name: str) -> None:
    """The job's Ray job says RUNNING until the operator shows the job Running.

    KubeRay asks a Running RayJob's dashboard for the job's status on each reconcile; kwok pods
    serve none, so KubeRay writes the API server proxy's error over the test's report. A live
    dashboard would answer RUNNING every time: the report is repeated as it would be."""
    kuberay_reached(jobs, name, "Running", KUBERAY_AFTER_OUTAGE)
    deadline = time.monotonic() + 60  # a loaded machine: KubeRay reconciles slowly
    while not phase_is(jobs, name, "Running")() and time.monotonic() < deadline:
        ray_job_reports(jobs, name, "RUNNING")
        time.sleep(INTERVAL)
    reaches(jobs, name, "Running", INTERVAL)


def positions(jobs: Resources) -> dict[str, tuple[str, int | None]]:
    """Each job's phase and queue position."""
    found = {name: status(jobs, name) for name in JOBS}
    return {name: (s.get("phase"), s.get("queue", {}).get("position")) for name, s in found.items()}


def test_jobs_finish_in_order_and_give_back_their_gpus_after_an_api_server_outage(
    control_plane: ControlPlane, operator: Operator, k8s_api: client.ApiClient
) -> None:
    jobs = Resources(k8s_api, NAMESPACE, operator)
    pid = operator.process.pid if operator.process else None
    for name in JOBS:  # one after another: the queue is first come, first served
        jobs.apply(training_job(name, workers=2))
        wait_for(phase_is(jobs, name, "Starting", "Queued"), 30)
    runs(jobs, "first")
    queue = positions(jobs)
    assert (queue["second"], queue["third"]) == (("Queued", 1), ("Queued", 2)), queue

    # The running job's GPU-seconds change every interval: its status patches fail throughout.
    control_plane.stop_component("kube-apiserver")
    try:
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            # Waiting on the API server is not a reason to restart the operator.
            assert operator.health()[0] == 200
            time.sleep(5)
    finally:
        control_plane.start_component("kube-apiserver")

    # The first job's Ray job ends after the outage: the operator notices, gives back its
    # GPUs and admits the next in line, and the one behind it moves up.
    ray_job_reports(jobs, "first", "SUCCEEDED")
    reaches(jobs, "first", "Succeeded", 60)
    reaches(jobs, "second", "Starting", 60)
    wait_for(lambda: positions(jobs)["third"] == ("Queued", 1), 3 * INTERVAL)
    for name, after in (("second", "third"), ("third", None)):
        runs(jobs, name)
        ray_job_reports(jobs, name, "SUCCEEDED")
        if after:
            reaches(jobs, name, "Succeeded", 60)
            reaches(jobs, after, "Starting", 60)

    ended = time.monotonic()  # the last job's Ray job has just ended
    wait_for(lambda: operator.gpus_held() == 0, 30, every=0.1)
    held_for = time.monotonic() - ended
    assert held_for <= 3 * INTERVAL, f"GPUs still held {held_for:.1f} s after the last job ended"
    assert [status(jobs, name)["phase"] for name in JOBS] == ["Succeeded"] * 3
    assert operator.process and operator.process.poll() is None and operator.process.pid == pid
    assert operator.health() == (200, {"observe": {"observed": 0, "overdue": 0}})
