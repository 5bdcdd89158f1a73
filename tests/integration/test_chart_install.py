"""The chart's objects on the real API server, and what its ServiceAccount may and may not do.

The access matrix is asked as the ServiceAccount itself (a token from the TokenRequest API and
SelfSubjectAccessReviews, i.e. `kubectl auth can-i` run by the operator): allowed exactly where
the operator acts, denied on Secrets, on nodes, on what it never creates, and in other groups.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import Kubectl, api_client, can, service_account_kubeconfig
from kubernetes import client

from mlplane.operator.cluster import chart
from mlplane.operator.cluster.build import Parts

pytestmark = pytest.mark.cluster

GPU_VALUES = chart.CHART / "ci" / "gpu-pools-values.yaml"
KINDS = ("trainingjobs", "tuningsweeps", "modeldeployments")
MLPLANE = str(Path(sys.executable).parent / "mlplane")
Access = tuple[Any, ...]
"""(verb, resource[/subresource], group, namespace, name), as `kubectl auth can-i` asks."""


@pytest.fixture
def kubectl(cluster_parts: Parts, kubeconfig: Path) -> Kubectl:
    return Kubectl(cluster_parts, kubeconfig)


def acting_in(namespace: str) -> list[Access]:
    """What the operator does to mlplane resources, in a namespace it serves."""
    allowed: list[Access] = []
    for kind in KINDS:
        allowed += [(verb, kind, "mlplane.dev", namespace) for verb in ("get", "list", "watch")]
        allowed += [("patch", kind, "mlplane.dev", namespace, "x")]  # the finalizer
        allowed += [("patch", f"{kind}/status", "mlplane.dev", namespace, "x")]
    allowed += [(verb, "gpuquotas", "mlplane.dev", namespace) for verb in ("get", "list", "watch")]
    allowed += [("patch", "gpuquotas/status", "mlplane.dev", namespace, "x")]
    return [
        *allowed,
        ("create", "events", "", namespace),
        ("list", "resourcequotas", "", namespace),  # the GPU ledger honours a GPU quota
    ]


def peering(resource: str, namespace: str | None, name: str) -> list[Access]:
    """What kopf does to its peering objects: watch them all, write its own."""
    return [
        ("list", resource, "kopf.dev", namespace),
        ("watch", resource, "kopf.dev", namespace),
        ("patch", resource, "kopf.dev", namespace, name),
    ]


CRD_WATCH: list[Access] = [
    ("list", "customresourcedefinitions", "apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions", "apiextensions.k8s.io"),
]
POOLS: list[Access] = [  # NodePools, cluster-scoped, whatever the namespaces, and their nodes
    *((verb, "nodepools", "mlplane.dev") for verb in ("get", "list", "watch")),
    ("patch", "nodepools/status", "mlplane.dev", None, "x"),
    ("list", "nodes", ""),
    ("watch", "nodes", ""),
]


def never(release_namespace: str, namespace: str) -> list[Access]:
    """What the operator never does, wherever it runs."""
    denied: list[Access] = []
    for where in (release_namespace, namespace, "kube-system"):
        denied += [(verb, "secrets", "", where) for verb in ("get", "list", "watch")]
    for kind in KINDS:  # users create and delete their resources; the operator only patches
        denied += [
            (verb, kind, "mlplane.dev", namespace) for verb in ("create", "delete", "update")
        ]
    denied += [  # the platform team sets GPUQuotas; the operator writes only their status
        (verb, "gpuquotas", "mlplane.dev", namespace) for verb in ("create", "delete", "patch")
    ]
    denied += [(verb, "nodes", "") for verb in ("patch", "update", "delete", "create")]
    denied += [  # the platform team sets NodePools too
        (verb, "nodepools", "mlplane.dev") for verb in ("create", "delete", "patch")
    ]
    return [
        *denied,
        ("delete", "events", "", namespace),
        ("create", "pods", "", namespace),
        ("get", "configmaps", "", namespace),
        ("create", "deployments", "apps", namespace),
        ("create", "rayjobs", "ray.io", namespace),  # the default backend is ray, not kuberay
        ("create", "rayservices", "ray.io", namespace),
        ("update", "resourcequotas", "", namespace),
        ("patch", "customresourcedefinitions", "apiextensions.k8s.io"),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
        ("create", "serviceaccounts/token", "", release_namespace),
    ]


def assert_access(api: client.ApiClient, allowed: list[Access], denied: list[Access]) -> None:
    wrong = [("allowed", a) for a in denied if can(api, *a)]
    wrong += [("denied", a) for a in allowed if not can(api, *a)]
    assert not wrong, "\n".join(f"{verdict}: {attributes}" for verdict, attributes in wrong)


@pytest.fixture
def default_install(kubectl: Kubectl, crds: list[str]) -> Iterator[None]:
    """`kubectl apply -k manifests/crds` then `-k manifests`, as docs/install.md says."""
    kubectl.install_crds()
    kubectl("apply", "--server-side", "-k", str(chart.MANIFESTS))
    yield
    # Leaves the CRDs (and every resource) alone: they are a kustomization of their own.
    kubectl("delete", "-k", str(chart.MANIFESTS), "--wait", "--timeout=90s")


def test_default_manifests_grant_exactly_what_the_operator_needs(
    default_install: None,
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    deployment = client.AppsV1Api(k8s_api).read_namespaced_deployment("mlplane", chart.NAMESPACE)
    assert deployment.spec.template.spec.service_account_name == "mlplane"
    crds = {
        c["metadata"]["name"] for c in yaml.safe_load(kubectl("get", "crd", "-o", "yaml"))["items"]
    }
    assert {"trainingjobs.mlplane.dev", "clusterkopfpeerings.kopf.dev"} <= crds
    sa_kubeconfig = service_account_kubeconfig(
        k8s_api, kubeconfig, chart.NAMESPACE, "mlplane", tmp_path / "sa"
    )
    with api_client(sa_kubeconfig) as api:
        team = "team-anywhere"  # cluster-wide: any namespace, even one that does not exist yet
        allowed = [
            *acting_in(team),
            *peering("clusterkopfpeerings", None, "mlplane"),
            *CRD_WATCH,
            *POOLS,
        ]
        denied = [
            *never(chart.NAMESPACE, team),
            ("patch", "clusterkopfpeerings", "kopf.dev", None, "other"),
            ("list", "namespaces", ""),  # cluster-wide, kopf does not resolve namespaces
        ]
        assert_access(api, allowed, denied)


def test_gpu_pools_in_single_namespace_mode_apply_and_stay_in_their_namespaces(
    helm: Path,
    kubectl: Kubectl,
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    crds: list[str],
    tmp_path: Path,
) -> None:
    """Two GPU pools, quotas and the MLflow server, the operator confined to one namespace."""
    kubectl.install_crds()
    core = client.CoreV1Api(k8s_api)
    team = f"chart-team-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": team}})
    release = f"r{uuid.uuid4().hex[:6]}"
    try:
        rendered = chart.template(
            helm,
            "-f",
            str(GPU_VALUES),
            "--set",
            f"watchNamespaces={{{team}}}",
            release=release,
            namespace=namespace,
        )
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        # No Prometheus Operator here: its ServiceMonitor is checked by the unit tests.
        kubectl.apply([d for d in docs if d["kind"] != "ServiceMonitor"])
        config_map = core.read_namespaced_config_map(f"{release}-mlplane", namespace)
        assert "a100" in config_map.data["config.yaml"]
        mlflow = client.AppsV1Api(k8s_api).read_namespaced_deployment(
            f"{release}-mlplane-mlflow", namespace
        )
        assert mlflow.spec.template.spec.containers[0].command == ["mlflow", "server"]
        assert core.read_namespaced_persistent_volume_claim(f"{release}-mlplane-mlflow", namespace)

        sa_kubeconfig = service_account_kubeconfig(
            k8s_api, kubeconfig, namespace, f"{release}-mlplane", tmp_path / "sa"
        )
        with api_client(sa_kubeconfig) as api:
            name = f"{release}-mlplane"
            allowed = [*acting_in(team), *peering("kopfpeerings", team, name), *CRD_WATCH, *POOLS]
            allowed += [("list", "namespaces", ""), ("watch", "namespaces", "")]
            denied = [
                *never(namespace, team),
                # Nothing of the operator's own in a namespace it does not watch.
                *acting_in(namespace),
                *acting_in("default"),
                *peering("kopfpeerings", namespace, name),
                ("patch", "kopfpeerings", "kopf.dev", team, "other"),
                ("list", "clusterkopfpeerings", "kopf.dev"),
            ]
            assert_access(api, allowed, denied)
    finally:
        # The release's cluster-wide RBAC: the operator's, the tenants' and the NodePool viewers'.
        release_label = f"app.kubernetes.io/instance={release}"
        rbac = client.RbacAuthorizationV1Api(k8s_api)
        rbac.delete_collection_cluster_role(label_selector=release_label)
        rbac.delete_collection_cluster_role_binding(label_selector=release_label)
        core.delete_namespace(team)


def test_argocd_health_checks_merge_into_an_existing_argocd_cm(
    helm: Path, kubectl: Kubectl, k8s_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """docs/argocd.md: the chart's argocd-cm is a merge patch; Argo CD's own keys stay."""
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "argocd-cm"}, "data": {"url": "https://argocd.example.com"}},
    )
    patch = chart.template(
        helm,
        "--set",
        "argocd.healthChecks.enabled=true",
        "--set",
        f"argocd.healthChecks.namespace={namespace}",
        "--show-only",
        "templates/argocd-health.yaml",
    )
    patch_file = tmp_path / "argocd-health.yaml"
    patch_file.write_text(patch)
    kubectl(
        "-n",
        namespace,
        "patch",
        "configmap",
        "argocd-cm",
        "--type=merge",
        f"--patch-file={patch_file}",
    )
    data = core.read_namespaced_config_map("argocd-cm", namespace).data
    assert data["url"] == "https://argocd.example.com"
    assert {k for k in data if k.startswith("resource.customizations.health.")} == {
        f"resource.customizations.health.mlplane.dev_{kind}"
        for kind in ("TrainingJob", "TuningSweep", "ModelDeployment", "GPUQuota", "NodePool")
    }


def test_a_tenant_with_edit_runs_work_and_only_reads_its_gpu_quota(
    default_install: None, k8s_api: client.ApiClient, kubeconfig: Path, tmp_path: Path
) -> None:
    """A team given Kubernetes' own `edit` role in its namespace, and nothing else: the chart's
    aggregated rules let it run work and read its GPUQuota, not change the quota; the chart's
    NodePool viewers (every signed-in user) let it read the NodePools, not change them."""
    team = f"team-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace({"metadata": {"name": team}})
    objects = client.CustomObjectsApi(k8s_api)
    pool = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": f"pool-{team}"},
        "spec": {"nodeSelector": {"mlplane.dev/pool": f"pool-{team}"}},
    }
    objects.create_cluster_custom_object("mlplane.dev", "v1alpha1", "nodepools", pool)
    try:
        core.create_namespaced_service_account(team, {"metadata": {"name": "alice"}})
        client.RbacAuthorizationV1Api(k8s_api).create_namespaced_role_binding(
            team,
            {
                "metadata": {"name": "alice-edit"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "edit",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": team}],
            },
        )
        tenant = service_account_kubeconfig(k8s_api, kubeconfig, team, "alice", tmp_path / "t")
        allowed: list[Access] = [
            (verb, "gpuquotas", "mlplane.dev", team) for verb in ("get", "list", "watch")
        ]
        for kind in KINDS:
            allowed += [(verb, kind, "mlplane.dev", team) for verb in ("create", "delete", "get")]
        denied: list[Access] = [
            (verb, "gpuquotas", "mlplane.dev", team) for verb in ("create", "patch", "delete")
        ]
        denied += [("patch", "gpuquotas/status", "mlplane.dev", team, "x")]
        denied += [("get", "gpuquotas", "mlplane.dev", "other-team")]
        allowed += [(verb, "nodepools", "mlplane.dev") for verb in ("get", "list", "watch")]
        denied += [(verb, "nodepools", "mlplane.dev") for verb in ("create", "patch", "delete")]
        denied += [("patch", "nodepools/status", "mlplane.dev", None, "x")]
        with api_client(tenant) as api:
            # The aggregation controller adds the chart's rules to `edit` within seconds.
            deadline = time.monotonic() + 30
            while not can(api, "create", "trainingjobs", "mlplane.dev", team):
                assert time.monotonic() < deadline, "edit never gained mlplane's rules"
                time.sleep(0.5)
            assert_access(api, allowed, denied)
        # `mlplane queue` needs no more than that in its namespace, and says what it may not see.
        as_tenant = {"env": os.environ | {"KUBECONFIG": str(tenant)}, "capture_output": True}
        own = subprocess.run([MLPLANE, "queue", "-n", team], text=True, **as_tenant)
        assert own.returncode == 0, own.stderr
        pools = own.stdout.split("GPU quotas")[0].splitlines()
        assert pools[0] == "Pools"
        assert any(line.split()[0] == f"pool-{team}" for line in pools[2:]), own.stdout
        every = subprocess.run([MLPLANE, "queue"], text=True, **as_tenant)
        assert every.returncode == 1
        assert every.stderr.startswith("mlplane queue: 403 Forbidden"), every.stderr
    finally:
        objects.delete_cluster_custom_object("mlplane.dev", "v1alpha1", "nodepools", f"pool-{team}")
        core.delete_namespace(team)
