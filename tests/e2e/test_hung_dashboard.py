"""A Ray dashboard that accepts connections and never answers, under a running operator: the
resources that need Ray wait for it, and no other resource does.

`mlplane operator` (ray backend, 2 s observe interval) points at a server that accepts and never
answers, as a wedged dashboard does. A SageMaker ModelDeployment (moto) needs no Ray; twenty
TrainingJobs each try to submit to the dashboard on every step. Over 40 s, which covers the first
calls waiting out their 30 s timeout and the quiet time after it, the operator's own measure of how
late the deployment is observed (`mlplane_observe_lag_seconds`) must stay under two intervals, and
every job must say on its status that the dashboard does not answer. Budget: about 75 s.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from sagemaker_support import BUCKET, REGION, SECRET, create_bucket, example, register_model
from service_fixtures import MotoServer

from mlplane.operator import embedded
from mlplane.operator.backends.aws import AwsCredentials, boto3_clients
from tests.e2e.conftest import OperatorProcess, Resources, samples
from tests.e2e.test_kuberay import STARTUP_TIMEOUT, training_job, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.mlflow]

INTERVAL = 2.0
JOBS = 20
WATCHED_SECONDS = 40
NAMESPACE = f"hung-{uuid.uuid4().hex[:6]}"


class Operator(OperatorProcess):
    """The operator on the hung dashboard, with its Prometheus metrics."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        health = f"http://127.0.0.1:{embedded.free_port()}/healthz"
        metrics_port = embedded.free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        super().__init__(
            env,
            workdir / "operator.log",
            args=(
                "operator",
                *("--namespace", NAMESPACE),
                *("--liveness", health),
                *("--metrics-port", str(metrics_port)),
            ),
            health_url=health,
        )

    def observe_lag(self, kind: str) -> float:
        lags = samples(self.metrics_url, "mlplane_observe_lag_seconds")
        return next(sample.value for sample in lags if sample.labels["kind"] == kind)


@pytest.fixture
def operator(
    hung_server: str,
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    crds: list[str],
    mlflow_server: str,
    moto_server: MotoServer,
    tmp_path: Path,
) -> Iterator[Operator]:
    core = client.CoreV1Api(k8s_api)
    core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {"mlplane.dev/test": "true"}}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLANE_")}
    env |= {
        "KUBECONFIG": str(kubeconfig),
        "MLPLANE_RAY_ADDRESS": hung_server,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_server,
        "MLPLANE_DATA_DIR": str(tmp_path / "data"),
        "MLPLANE_OBSERVE_INTERVAL_SECONDS": str(INTERVAL),
        "MLPLANE_SAGEMAKER_ENDPOINT_URLS": json.dumps([moto_server.endpoint_url]),
    }
    process = Operator(tmp_path, env)
    process.start()
    process.wait_healthy(STARTUP_TIMEOUT)
    yield process
    # The deployment's finalizer removes its endpoint from moto, which later tests share; the
    # jobs' finalizers wait on the hung dashboard and go with the namespace's objects below.
    objects = client.CustomObjectsApi(k8s_api)
    objects.delete_collection_namespaced_custom_object(
        "mlplane.dev", "v1alpha1", NAMESPACE, "modeldeployments"
    )
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and objects.list_namespaced_custom_object(
            "mlplane.dev", "v1alpha1", NAMESPACE, "modeldeployments"
        )["items"]
    ):
        time.sleep(0.5)
    process.stop()
    for plural in ("trainingjobs", "modeldeployments"):
        for item in objects.list_namespaced_custom_object(
            "mlplane.dev", "v1alpha1", NAMESPACE, plural
        )["items"]:
            patch = {"metadata": {"finalizers": None}}
            objects.patch_namespaced_custom_object(
                "mlplane.dev", "v1alpha1", NAMESPACE, plural, item["metadata"]["name"], patch
            )
    core.delete_namespace(NAMESPACE)


def test_a_hung_dashboard_stalls_only_the_resources_that_need_ray(
    operator: Operator,
    k8s_api: client.ApiClient,
    mlflow_server: str,
    moto_server: MotoServer,
) -> None:
    team = Resources(k8s_api, NAMESPACE, operator)
    create_bucket(boto3_clients(REGION, moto_server.endpoint_url, AwsCredentials("test", "test")))
    client.CoreV1Api(k8s_api).create_namespaced_secret(
        NAMESPACE,
        {"metadata": {"name": "aws-credentials"}, "type": "Opaque", "stringData": SECRET},
    )
    deployment = example()
    deployment["spec"]["model"] = {"uri": register_model(mlflow_server)}
    deployment["spec"]["sagemaker"] |= {
        "endpointUrl": moto_server.endpoint_url,
        "artifactBucket": BUCKET,
    }
    team.apply(deployment)
    team.wait_for_phase("modeldeployments", "churn-sm", {"Available"}, 60)

    for n in range(JOBS):
        team.apply(training_job(f"job-{n}", resources={"workers": 1}))
    lags = []
    deadline = time.monotonic() + WATCHED_SECONDS
    while time.monotonic() < deadline:
        lags.append(operator.observe_lag("ModelDeployment"))
        time.sleep(0.5)
    shown = [round(lag, 1) for lag in lags]
    assert max(lags) < 2 * INTERVAL, (
        f"ModelDeployment observe lag over {WATCHED_SECONDS} s: {shown}"
    )

    def submit_failed(job: str) -> dict[str, Any]:
        """The job's Admitted condition once it says the submit failed: each interval the job
        is admitted again (Starting) and its submit fails again (Pending)."""
        status = team.get("trainingjobs", job).get("status", {})
        admitted = {c["type"]: c for c in status.get("conditions", [])}.get("Admitted", {})
        pending = (status.get("phase"), admitted.get("reason")) == ("Pending", "SubmitFailed")
        return admitted if pending else {}

    for n in range(JOBS):
        admitted = wait_for(lambda n=n: submit_failed(f"job-{n}"), 30)
        assert "DashboardUnanswered" in admitted["message"], admitted
