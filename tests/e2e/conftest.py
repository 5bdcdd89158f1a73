"""The operator as users run it: `mlplane operator` in its own process, against the session's
real control plane, Ray head and MLflow server. Tests can kill and restart it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from service_fixtures import MotoServer

from mlplane.crds import KINDS
from mlplane.operator import embedded
from tests.conftest import fresh_namespace

GROUP, VERSION = "mlplane.dev", "v1alpha1"
OBSERVE_INTERVAL = "1"


class OperatorProcess:
    """One `mlplane operator` child process; restartable, with its log kept on disk."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        # Only the e2e tests' namespaces: the README test runs an operator of its own, and the
        # integration tests' objects (namespaces test-*) are for the API server alone.
        args: tuple[str, ...] = ("operator", "--namespace", "e2e-*"),
        health_url: str | None = None,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.health_url = health_url  # where its --liveness endpoint answers, if it has one
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mlplane = Path(sys.executable).parent / "mlplane"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(mlplane), *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float) -> None:
        """Until kopf's health endpoint answers (startup done); fails with the log's tail if the
        process exits or the endpoint stays silent."""
        assert self.health_url, "started without a health endpoint"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            alive = self.process is not None and self.process.poll() is None
            assert alive and time.monotonic() < deadline, self.log()[-3000:]
            time.sleep(0.5)


def samples(metrics_url: str, name: str) -> list[Sample]:
    """The samples of one metric on an operator's Prometheus endpoint, as Prometheus reads it."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return [
        sample
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
    ]


@pytest.fixture(scope="session")
def operator_env(
    kubeconfig: Path,
    ray_cluster: str,
    mlflow_server: str,
    moto_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MLPLANE_RAY_ADDRESS": ray_cluster,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_server,
        "MLPLANE_DATA_DIR": str(tmp_path_factory.mktemp("operator-data")),
        "MLPLANE_OBSERVE_INTERVAL_SECONDS": OBSERVE_INTERVAL,
        # The platform team's allowlist: ModelDeployments may name moto as their SageMaker.
        "MLPLANE_SAGEMAKER_ENDPOINT_URLS": json.dumps([moto_server.endpoint_url]),
        # Used only if this operator is the first to start Serve on the session's Ray head.
        "MLPLANE_SERVE_HTTP_PORT": str(embedded.free_port()),
        # The kuberay tests' operator, running beside this one, writes the NodePools' status.
        "MLPLANE_NODE_POOL_STATUS": "false",
    }


@pytest.fixture(scope="session")
def operator(
    crds: list[str], operator_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_env, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()


class Resources:
    """mlplane objects in the test's namespace, as a user drives them with kubectl."""

    def __init__(self, api: client.ApiClient, namespace: str, operator: OperatorProcess) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.operator = operator

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        plural = KINDS[doc["kind"]].plural
        return self.objects.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, doc
        )

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )

    def delete(self, plural: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def wait_for_phase(
        self, plural: str, name: str, phases: set[str], timeout: float
    ) -> dict[str, Any]:
        """Poll until status.phase is one of `phases`; on timeout, say where it was stuck."""
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(plural, name)
            if obj.get("status", {}).get("phase") in phases:
                return obj
            time.sleep(1)
        tail = "\n".join(self.operator.log().splitlines()[-40:])
        raise AssertionError(
            f"{plural}/{name} not in {phases} after {timeout}s: {obj.get('status')}\n{tail}"
        )


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace the session operator watches (e2e-*), named after the test."""
    with fresh_namespace(k8s_api, f"e2e-{request.node.name}") as name:
        yield name


@pytest.fixture
def resources(k8s_api: client.ApiClient, namespace: str, operator: OperatorProcess) -> Resources:
    return Resources(k8s_api, namespace, operator)
