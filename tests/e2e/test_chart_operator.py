"""The operator as the chart runs it, with nothing but the chart's ServiceAccount.

The chart is rendered in single-namespace mode and applied to the real API server; the operator
runs the command line of the chart's Deployment, its configuration from the chart's ConfigMap,
authenticated by a TokenRequest token of the chart's ServiceAccount (no admin credentials). Only
what a pod would get elsewhere is swapped: the Ray and MLflow of the test session, free ports.
Two replicas run, as with `replicaCount: 2`: one works, the other waits. A TrainingJob goes to
Succeeded, while /metrics is scraped as Prometheus would.

Its namespaces are named chart-*, outside the session operator's e2e-* pattern.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import Kubectl, service_account_kubeconfig
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from mlplane.operator import embedded
from mlplane.operator.cluster import chart
from mlplane.operator.cluster.build import Parts
from tests.e2e.conftest import GROUP, VERSION, OperatorProcess, Resources

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

STARTUP_TIMEOUT = 60
# About 30 s on an idle 2-core machine; Ray Train's start is what a busy one slows down.
TRAINING_TIMEOUT = 180
JOB = {
    "apiVersion": "mlplane.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "chart-xgb", "labels": {"team": "a"}, "annotations": {"owner": "me"}},
    "spec": {
        "framework": "xgboost",
        "dataset": {"uri": "sklearn://breast_cancer", "label": "target"},
        "hyperparameters": {"eta": 0.5, "max_depth": 3, "num_boost_round": 5},
        "resources": {"workers": 1, "perWorker": {"cpu": 1}},
        "checkpoint": {"every": 5, "keep": 1},
    },
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Replica:
    """One operator process and where it answers."""

    process: OperatorProcess
    metrics_url: str

    def wait_healthy(self) -> None:
        self.process.wait_healthy(STARTUP_TIMEOUT)

    def scrape(self) -> Samples:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@dataclass
class ChartOperator:
    """Replicas of the chart's operator, started the way its Deployment starts them."""

    args: list[str]
    env: dict[str, str]
    logs: Path
    resources: Resources
    peering: str
    replicas: list[Replica] = field(default_factory=list)

    def start_replica(self) -> Replica:
        health, metrics = embedded.free_port(), embedded.free_port()
        local = {
            "liveness": f"http://127.0.0.1:{health}/healthz",
            "metrics-port": str(metrics),
        }
        args = [
            next((f"--{k}={v}" for k, v in local.items() if a.startswith(f"--{k}=")), a)
            for a in self.args
        ]
        log = self.logs / f"operator-{len(self.replicas)}.log"
        process = OperatorProcess(self.env, log, tuple(args), health_url=local["liveness"])
        process.start()
        replica = Replica(process, f"http://127.0.0.1:{metrics}/metrics")
        self.replicas.append(replica)
        return replica

    def jobs(self) -> list[str]:
        found = self.resources.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.resources.namespace, "trainingjobs"
        )
        return [job["metadata"]["name"] for job in found["items"]]


def job_metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted({"kind": "TrainingJob", **labels}.items()))), 0.0)


def deployment_args(docs: list[dict[str, Any]], config: Path) -> list[str]:
    """The chart Deployment's command line, reading the chart's ConfigMap from `config`."""
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlplane"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config.write_text(config_map["data"]["config.yaml"])
    return [f"--config={config}" if a.startswith("--config=") else a for a in container["args"]]


@pytest.fixture
def chart_operator(
    helm: Path,
    cluster_parts: Parts,
    kubeconfig: Path,
    k8s_api: client.ApiClient,
    crds: list[str],
    operator_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[ChartOperator]:
    kubectl = Kubectl(cluster_parts, kubeconfig)
    kubectl.install_crds()
    core = client.CoreV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:6]
    release, system, team = f"e2e{suffix}", f"chart-system-{suffix}", f"chart-team-{suffix}"
    for name in (system, team):
        core.create_namespace({"metadata": {"name": name}})
    values = [f"watchNamespaces={{{team}}}", "operator.observeIntervalSeconds=1", "replicaCount=2"]
    rendered = chart.template(
        helm, *(f"--set={v}" for v in values), release=release, namespace=system
    )
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kubectl.apply(docs)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = service_account_kubeconfig(k8s_api, kubeconfig, system, account, tmp_path / "sa")
    env = {**operator_env, "KUBECONFIG": str(token)}
    env.pop("MLPLANE_OBSERVE_INTERVAL_SECONDS")  # the chart's configuration says it
    operator = ChartOperator(
        deployment_args(docs, tmp_path / "config.yaml"),
        env,
        tmp_path,
        # Resources reads an operator's log for its messages: the first replica's.
        Resources(k8s_api, team, OperatorProcess(env, tmp_path / "operator-0.log")),
        f"{release}-mlplane",
    )
    yield operator
    # As a user cleans up: while the operators still run to release the finalizer.
    for name in operator.jobs():
        operator.resources.delete("trainingjobs", name)
    deadline = time.monotonic() + 30
    while operator.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    for replica in operator.replicas:  # all at once: each takes seconds to stop
        if replica.process.process:
            replica.process.process.terminate()
    for replica in operator.replicas:
        replica.process.stop()
    # The release's cluster-wide RBAC: the operator's, the tenants' and the NodePool viewers'.
    release_label = f"app.kubernetes.io/instance={release}"
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    rbac.delete_collection_cluster_role(label_selector=release_label)
    rbac.delete_collection_cluster_role_binding(label_selector=release_label)
    for name in (system, team):
        core.delete_namespace(name)


def test_operator_with_the_charts_service_account_runs_a_job_and_reports_metrics(
    chart_operator: ChartOperator, k8s_api: client.ApiClient
) -> None:
    operator, resources = chart_operator, chart_operator.resources
    working = operator.start_replica()
    working.wait_healthy()
    waiting = operator.start_replica()  # started later, so it stands by
    before = working.scrape()
    assert job_metric(before, "mlplane_reconcile_duration_seconds_count") == 0

    created = resources.apply(JOB)
    phases_scraped: set[str] = set()
    deadline = time.monotonic() + TRAINING_TIMEOUT
    obj = created
    while obj.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
        log = working.process.log()[-3000:]
        assert time.monotonic() < deadline, f"{obj.get('status')}\n{log}"
        phases_scraped |= {
            dict(labels)["phase"]
            for (name, labels), value in working.scrape().items()
            if name == "mlplane_resources" and value == 1
        }
        time.sleep(0.5)
        obj = resources.get("trainingjobs", "chart-xgb")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]

    # Gauges moved through the run and counters counted it.
    after = working.scrape()
    labels = {"namespace": resources.namespace}
    assert "Running" in phases_scraped, phases_scraped
    assert job_metric(after, "mlplane_resources", **labels, phase="Succeeded") == 1
    assert job_metric(after, "mlplane_resources", **labels, phase="Running") == 0
    assert job_metric(after, "mlplane_reconcile_duration_seconds_count") >= 2
    for phase in ("Starting", "Succeeded"):
        assert job_metric(after, "mlplane_phase_transitions_total", phase=phase) == 1

    # The standby stepped nothing: kopf paused it in favour of the older replica.
    waiting.wait_healthy()
    idle = waiting.scrape()
    assert job_metric(idle, "mlplane_reconcile_duration_seconds_count") == 0
    peering = client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
        "kopf.dev", "v1", resources.namespace, "kopfpeerings", operator.peering
    )
    priorities = [peer["priority"] for peer in peering.get("status", {}).values()]
    assert len(set(priorities)) == 2, peering  # equal priorities would pause both

    # Events, written with the ServiceAccount's own rights.
    events = client.CoreV1Api(k8s_api).list_namespaced_event(
        resources.namespace, field_selector="involvedObject.name=chart-xgb"
    )
    assert {"Launched", "Running", "Succeeded"} <= {e.reason for e in events.items}

    # Nothing Argo CD would show as drift: metadata and spec as applied, bar the finalizer.
    meta, applied = obj["metadata"], created["metadata"]
    assert meta["labels"] == applied["labels"] and meta["annotations"] == applied["annotations"]
    assert meta["finalizers"] == ["mlplane.dev/finalizer"]
    assert obj["spec"] == created["spec"]
    assert meta["generation"] == obj["status"]["observedGeneration"] == 1

    # The operator removes its finalizer, so a delete goes through.
    resources.delete("trainingjobs", "chart-xgb")
    deadline = time.monotonic() + 20
    while "chart-xgb" in operator.jobs():
        assert time.monotonic() < deadline, working.process.log()[-3000:]
        time.sleep(0.5)
    gone = working.scrape()
    assert job_metric(gone, "mlplane_resources", **labels, phase="Succeeded") == 0

    # Structured logs, and never a permission the chart forgot.
    for replica in operator.replicas:
        log = replica.process.log()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"')]
        assert any("message" in line for line in lines), log[-2000:]
        for complaint in ("Forbidden", "Not enough permissions"):
            assert complaint not in log, log[-3000:]
