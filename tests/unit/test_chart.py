"""The Helm chart as `helm lint` and `helm template` see it, and the files generated from it.

These need the helm binary (built from its Go module once per machine) but no cluster; what the
rendered objects do on a real API server is tests/integration/test_chart_install.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from mlplane.crds import KINDS
from mlplane.operator.backends.kuberay import (
    Placement,
    cluster_spec,
    submitter_template,
    worker_group,
)
from mlplane.operator.cluster import chart, rbac_table
from mlplane.operator.cluster.build import HELM, HELM_VERSION, ensure_tool
from mlplane.operator.config import OperatorConfig
from mlplane.operator.metrics import OperatorMetrics

GPU_VALUES = chart.CHART / "ci" / "gpu-pools-values.yaml"


def render(helm: Path, *args: str, **kwargs: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(chart.template(helm, *args, **kwargs)) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(docs: list[dict[str, Any]], name: str = "mlplane") -> dict[str, Any]:
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def operator_config(docs: list[dict[str, Any]], tmp_path: Path) -> OperatorConfig:
    path = tmp_path / "config.yaml"
    path.write_text(find(docs, "ConfigMap", "mlplane")["data"]["config.yaml"])
    return OperatorConfig.load(path)


def test_helm_is_built_once_at_the_pinned_version(helm: Path) -> None:
    assert ensure_tool(HELM, lambda message: pytest.fail(message)) == (helm, False)
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    assert version.stdout.startswith(HELM_VERSION), version


@pytest.mark.parametrize("values", [[], ["-f", str(GPU_VALUES)]], ids=["defaults", "gpu-pools"])
def test_helm_lint_is_clean(helm: Path, values: list[str]) -> None:
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(chart.CHART), *values],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"\[(WARNING|ERROR)\]", result.stdout), result.stdout


def test_default_install_runs_one_locked_down_operator(helm: Path) -> None:
    docs = render(helm)
    deployment = find(docs, "Deployment", "mlplane")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == find(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    main = container(docs)
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(main["resources"]["requests"])
    # What the read-only root filesystem leaves writable is exactly the mounted volumes.
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/etc/mlplane"]["readOnly"] is True
    assert {"/var/lib/mlplane", "/tmp"} <= set(mounts)

    args = main["args"]
    assert args[0] == "operator" and "--json-logs" in args
    assert not [a for a in args if a.startswith("--namespace")], "cluster-wide by default"
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert flag(args, "liveness") == f"http://0.0.0.0:{ports['health']}/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert flag(args, "metrics-port") == str(ports["metrics"])
    service = find(docs, "Service", "mlplane-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"

    assert flag(args, "peering") == find(docs, "ClusterKopfPeering")["metadata"]["name"]
    assert flag(args, "config") == "/etc/mlplane/config.yaml"
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]


def test_default_config_is_the_embedded_default(helm: Path, tmp_path: Path) -> None:
    config = operator_config(render(helm), tmp_path)
    assert config.backend == "ray"
    assert config.ray_address is None and config.mlflow_tracking_uri is None
    assert config.data_dir == Path("/var/lib/mlplane")
    assert config.node_pools == [] and config.gpu_quotas == {}


def test_the_readmes_helm_install_flags_render_what_they_say(helm: Path, tmp_path: Path) -> None:
    """The README's `helm install` line as `helm template`: its --set flags are real values."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    line = re.search(r"helm install mlplane helm/mlplane ((?:.*\\\n)*.*)\n", readme)
    assert line, "the README has no helm install line"
    flags = re.findall(r"--set (\S+)", line.group(1))
    assert flags == [
        "operator.rayAddress=http://ray-head.ray.svc:8265",
        "mlflow.server.enabled=true",
        "operator.checkpointStorage=s3://my-bucket/checkpoints",
    ]
    docs = render(helm, *(arg for value in flags for arg in ("--set", value)))
    config = operator_config(docs, tmp_path)
    assert config.ray_address == "http://ray-head.ray.svc:8265"
    assert config.checkpoint_storage == "s3://my-bucket/checkpoints"
    assert config.mlflow_tracking_uri == "http://mlplane-mlflow.mlplane-system.svc:5000"
    assert container(docs, "mlplane-mlflow")["command"] == ["mlflow", "server"]


def test_two_gpu_pools_and_quotas_render_into_the_operator_config(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, "-f", str(GPU_VALUES))
    config = operator_config(docs, tmp_path)
    a100, t4 = config.pool("a100"), config.pool("t4")
    assert a100 and a100.gpus_per_node == 8 and a100.nodes == 3
    assert a100.node_selector == {"mlplane.dev/pool": "a100"}
    assert a100.tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert t4 and t4.gpus_per_node == 4 and t4.gpu_resource == "nvidia.com/gpu"
    assert config.gpu_quotas == {"team-a": {"a100": 16, "t4": 4}, "team-b": {"a100": 8}}

    # The chart's MLflow server is where the operator tracks, reachable by its Service name.
    service = find(docs, "Service", "mlplane-mlflow")
    port = service["spec"]["ports"][0]["port"]
    assert config.mlflow_tracking_uri == f"http://mlplane-mlflow.mlplane-system.svc:{port}"
    mlflow = container(docs, "mlplane-mlflow")
    assert mlflow["command"] == ["mlflow", "server"]
    assert flag(mlflow["args"], "port") == str(port)
    assert "mlplane-mlflow*" in flag(mlflow["args"], "allowed-hosts").split(",")
    assert mlflow["securityContext"]["readOnlyRootFilesystem"] is True
    claim = find(docs, "PersistentVolumeClaim", "mlplane-mlflow")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    monitor = find(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    labels = find(docs, "Service", "mlplane-metrics")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    dashboard = find(docs, "ConfigMap", "mlplane-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mlplane.json"])["uid"] == "mlplane-operator"
    # A changed configuration rolls the operator, which reads it only at start.
    default_checksum = find(render(helm), "Deployment", "mlplane")["spec"]["template"]
    checksum = find(docs, "Deployment", "mlplane")["spec"]["template"]
    assert (
        checksum["metadata"]["annotations"]["checksum/config"]
        != default_checksum["metadata"]["annotations"]["checksum/config"]
    )


def test_a_second_release_on_the_cluster_leaves_nodepool_status_to_the_first(
    helm: Path, tmp_path: Path
) -> None:
    def status_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rules = find(docs, "ClusterRole", "mlplane")["rules"]
        return [r for r in rules if "nodepools/status" in r["resources"]]

    default = render(helm)
    assert operator_config(default, tmp_path).node_pool_status is True
    assert status_rules(default) == [
        {"apiGroups": ["mlplane.dev"], "resources": ["nodepools/status"], "verbs": ["patch"]}
    ]
    second = render(helm, "--set", "operator.nodePoolStatus=false")
    assert operator_config(second, tmp_path).node_pool_status is False
    assert status_rules(second) == []  # it may read NodePools, never write them


def test_nodepools_are_readable_by_the_chosen_viewers_only(helm: Path) -> None:
    binding = find(render(helm), "ClusterRoleBinding", "mlplane-nodepool-viewer")
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}
    ]
    viewer = find(render(helm), "ClusterRole", "mlplane-nodepool-viewer")
    read = ["get", "list", "watch"]
    assert viewer["rules"] == [
        {"apiGroups": ["mlplane.dev"], "resources": ["nodepools"], "verbs": read}
    ]
    nobody = render(helm, "--set-json", "rbac.nodePoolViewers=[]")
    assert "mlplane-nodepool-viewer" not in [
        d["metadata"]["name"] for d in nobody if d["kind"] == "ClusterRoleBinding"
    ]


def test_single_namespace_mode_grants_nothing_outside_the_watched_namespaces(helm: Path) -> None:
    docs = render(helm, "--set", "watchNamespaces={team-a,team-b}")
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    # Cluster-wide only what is cluster-scoped: kinds, NodePools and their nodes, namespaces.
    cluster_role = find(docs, "ClusterRole", "mlplane")
    assert [(r["resources"], r["verbs"]) for r in cluster_role["rules"]] == [
        (["customresourcedefinitions"], ["list", "watch"]),
        (["nodepools"], ["get", "list", "watch"]),
        (["nodepools/status"], ["patch"]),
        (["nodes"], ["list", "watch"]),
        (["namespaces"], ["list", "watch"]),
    ]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    assert {p["metadata"]["name"] for p in peerings} == {flag(args, "peering")}


def test_kuberay_backend_manages_rayjobs_and_rayservices_and_nothing_more(
    helm: Path, tmp_path: Path
) -> None:
    values = [
        "operator.backend=kuberay",
        "operator.kuberay.rayImage=registry.example/mlplane:1",
        "operator.kuberay.headNodePool=cpu",
        "operator.checkpointStorage=s3://bucket/checkpoints",
    ]
    docs = render(helm, *(f"--set={v}" for v in values))
    ray = [r for r in find(docs, "ClusterRole", "mlplane")["rules"] if r["apiGroups"] == ["ray.io"]]
    assert ray == [
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayjobs"],
            "verbs": ["get", "list", "watch", "create", "delete"],
        },
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayservices"],
            "verbs": ["get", "create", "patch", "delete"],
        },
    ]
    # Ray pods are read, never written: why a RayCluster cannot start (Unschedulable and the like).
    pods = [r for r in find(docs, "ClusterRole", "mlplane")["rules"] if "pods" in r["resources"]]
    assert pods == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    # Events are read too: KubeRay says why it refuses a RayService only in one.
    events = [
        r for r in find(docs, "ClusterRole", "mlplane")["rules"] if "events" in r["resources"]
    ]
    assert {verb for r in events for verb in r["verbs"]} == {"create", "list"}
    config = operator_config(docs, tmp_path)
    assert config.backend == "kuberay" and config.ray_image == "registry.example/mlplane:1"
    assert config.head_node_pool == "cpu"
    assert config.checkpoint_storage == "s3://bucket/checkpoints"
    assert config.use_kubernetes_proxy is None  # in a pod: Serve by cluster DNS
    assert not [
        r
        for r in find(docs, "ClusterRole", "mlplane")["rules"]
        if "services/proxy" in r["resources"]
    ]
    rules = find(render(helm), "ClusterRole", "mlplane")["rules"]
    assert not [r for r in rules if "ray.io" in r["apiGroups"] or "pods" in r["resources"]]


def test_kuberay_through_the_kubernetes_proxy_may_proxy_to_services(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(
        helm,
        "--set=operator.backend=kuberay",
        "--set=operator.checkpointStorage=s3://bucket/checkpoints",
        "--set=operator.kuberay.useKubernetesProxy=true",
    )
    proxy = [
        r
        for r in find(docs, "ClusterRole", "mlplane")["rules"]
        if "services/proxy" in r["resources"]
    ]
    assert proxy == [{"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]}]
    config = operator_config(docs, tmp_path)
    assert config.use_kubernetes_proxy and config.through_kubernetes_proxy


def test_tenants_get_mlplane_through_kubernetes_roles_and_only_read_gpu_quotas(
    helm: Path,
) -> None:
    docs = render(helm)
    view, edit = (
        find(docs, "ClusterRole", "mlplane-view"),
        find(docs, "ClusterRole", "mlplane-edit"),
    )
    aggregated = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in view["metadata"]["labels"] if k.startswith(aggregated)} == {
        f"{aggregated}{role}" for role in ("view", "edit", "admin")
    }
    assert {k for k in edit["metadata"]["labels"] if k.startswith(aggregated)} == {
        f"{aggregated}{role}" for role in ("edit", "admin")
    }
    assert "gpuquotas" in view["rules"][0]["resources"]
    assert view["rules"][0]["verbs"] == ["get", "list", "watch"]
    assert [r for r in edit["rules"] if "gpuquotas" in r["resources"]] == []
    names = {d["metadata"]["name"] for d in render(helm, "--set=rbac.tenantRoles=false")}
    assert not {"mlplane-view", "mlplane-edit"} & names


def test_secrets_are_readable_only_when_asked_and_only_to_get(helm: Path) -> None:
    def secret_rules(*args: str) -> list[dict[str, Any]]:
        docs = render(helm, *args)
        rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
        return [r for r in rules if "secrets" in r["resources"]]

    assert secret_rules() == []
    assert secret_rules("--set=watchNamespaces={team-a}") == []
    allowed = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    assert secret_rules("--set=rbac.readCredentialsSecrets=true") == [allowed]


def test_aws_options_reach_the_operator_environment(helm: Path, tmp_path: Path) -> None:
    docs = render(
        helm,
        "--set",
        "aws.sagemakerEndpointUrls={https://vpce-1.api.sagemaker.eu-west-1.vpce.amazonaws.com}",
        "--set",
        "aws.region=eu-west-1",
        "--set",
        "aws.endpointUrl=http://moto:5000",
        "--set",
        "aws.credentialsSecret=aws-creds",
        "--set",
        "aws.roleArn=arn:aws:iam::123456789012:role/mlplane",
    )
    main = container(docs)
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_ENDPOINT_URL"] == "http://moto:5000"
    assert main["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
    annotations = find(docs, "ServiceAccount")["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/mlplane"
    allowed = operator_config(docs, tmp_path).sagemaker_endpoint_urls
    assert allowed == ["https://vpce-1.api.sagemaker.eu-west-1.vpce.amazonaws.com"]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operator.backnd=ray", "additional properties 'backnd' not allowed"),
        ("operator.backend=spark", "/operator/backend"),
        ("operator.gpuQuotas.team-a.a100=-1", "/operator/gpuQuotas/team-a/a100"),
        ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
    ],
)
def test_values_schema_names_the_bad_value(helm: Path, setting: str, complaint: str) -> None:
    with pytest.raises(chart.RenderError, match=re.escape(complaint)):
        chart.template(helm, "--set", setting)


@pytest.mark.parametrize(
    "settings",
    [
        ["operator.backend=kuberay"],
        ["operator.rayAddress=http://ray-head.ray.svc:8265"],
    ],
)
def test_ray_away_from_the_operator_needs_shared_checkpoints(
    helm: Path, settings: list[str]
) -> None:
    """Refused by helm, not by an operator crash-looping at start."""
    with pytest.raises(chart.RenderError, match=re.escape("operator.checkpointStorage: ")):
        chart.template(helm, *(f"--set={s}" for s in settings))
    local = chart.template(helm, "--set=operator.rayAddress=http://127.0.0.1:8265")
    assert "ray_address: http://127.0.0.1:8265" in local


def test_chart_crds_are_the_generated_ones() -> None:
    """`make generate` copies crds/*.yaml into the chart; Helm installs what is there."""
    expected = chart.chart_crds()
    assert len(expected) == len(KINDS)
    stale = [p.name for p, text in expected.items() if not p.exists() or p.read_text() != text]
    assert not stale, f"stale chart CRDs {stale}: run `make generate`"


def test_manifests_are_the_current_default_install(helm: Path) -> None:
    expected = chart.manifests(chart.template(helm, "--include-crds"))
    present = {
        str(p.relative_to(chart.MANIFESTS)): p.read_text() for p in chart.MANIFESTS.rglob("*.yaml")
    }
    assert present == expected, "manifests/ is stale: run `make manifests`"


def test_the_dashboard_queries_only_metrics_the_operator_exports() -> None:
    dashboard = json.loads((chart.CHART / "dashboards" / "mlplane.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(mlplane_\w+|process_\w+)", e)}
    exposition = generate_latest(OperatorMetrics().registry).decode()
    exported = set(re.findall(r"^(?:# TYPE )?(\w+)", exposition, re.MULTILINE))
    assert used and used <= exported, used - exported
    names = {m for m in used if m.startswith("mlplane_")}
    assert {
        "mlplane_resources",
        "mlplane_queue_depth",
        "mlplane_gpus_allocated",
        "mlplane_reconcile_duration_seconds_bucket",
        "mlplane_reconcile_errors_total",
    } <= names


def test_operator_and_mlflow_pods_are_hardened_and_only_the_operator_has_a_token(
    helm: Path,
) -> None:
    docs = render(helm, "--set=mlflow.server.enabled=true")
    for name, token in (("mlplane", True), ("mlplane-mlflow", False)):
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        # The operator works through the Kubernetes API; MLflow never calls it.
        assert pod["automountServiceAccountToken"] is token, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
        assert security["runAsGroup"] != 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for main in pod["containers"]:
            assert main["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert main["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels; matchExpressions In and Exists) on `labels`."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        assert operator in ("In", "Exists"), operator
        if key not in labels or (operator == "In" and labels[key] not in expression["values"]):
            return False
    return True


def may_reach(policy: dict[str, Any], namespace: str, labels: dict[str, str]) -> bool:
    """Whether a pod (its namespace and labels) may connect under the policy's ingress rules."""
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                in_namespace = selects(peer["namespaceSelector"], namespace_labels)
            else:  # a podSelector alone selects in the policy's own namespace
                in_namespace = namespace == policy["metadata"]["namespace"]
            if in_namespace and selects(peer.get("podSelector", {}), labels):
                return True
    return False


def rendered_ray_pods() -> list[dict[str, str]]:
    """The labels of each pod template the kuberay backend renders: head, worker, submitter."""
    placement = Placement("registry.example/mlplane:1")
    cluster = cluster_spec(placement, worker_group(placement, (1, 1, 1), 1, None, 0), "churn")
    templates = [
        cluster["headGroupSpec"]["template"],
        cluster["workerGroupSpecs"][0]["template"],
        submitter_template(placement, "churn"),
    ]
    return [template["metadata"]["labels"] for template in templates]


def test_mlflow_is_reachable_only_from_the_operator_and_mlplanes_ray_pods(helm: Path) -> None:
    docs = render(helm, "--set=mlflow.server.enabled=true")
    policy = find(docs, "NetworkPolicy", "mlplane-mlflow")
    mlflow_pod = find(docs, "Deployment", "mlplane-mlflow")["spec"]["template"]
    assert selects(policy["spec"]["podSelector"], mlflow_pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    port = find(docs, "Service", "mlplane-mlflow")["spec"]["ports"][0]["port"]
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [
        [{"protocol": "TCP", "port": port}]
    ]

    operator = find(docs, "Deployment", "mlplane")["spec"]["template"]["metadata"]["labels"]
    assert may_reach(policy, "mlplane-system", operator)
    for labels in rendered_ray_pods():
        assert may_reach(policy, "team-a", labels), labels
    # The operator's labels on a tenant's pod are not the operator; nor is any other pod.
    assert not may_reach(policy, "team-a", operator)
    assert not may_reach(policy, "mlplane-system", {"app": "web"})
    assert not may_reach(policy, "ray", {"ray.io/is-ray-node": "yes"})

    assert not [d for d in docs if d["kind"] == "NetworkPolicy" and d is not policy]
    off = render(
        helm, "--set=mlflow.server.enabled=true", "--set=mlflow.server.networkPolicy.enabled=false"
    )
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]
    assert not [d for d in render(helm) if d["kind"] == "NetworkPolicy"]  # no MLflow, no policy


def test_mlflow_policy_follows_the_watched_namespaces_and_the_ray_cluster(helm: Path) -> None:
    docs = render(
        helm,
        "--set=mlflow.server.enabled=true",
        "--set=watchNamespaces={team-a}",
        "--set=operator.rayAddress=http://ray-head.ray.svc:8265",
        "--set=operator.checkpointStorage=s3://bucket/checkpoints",
        '--set-json=mlflow.server.networkPolicy.from=[{"ipBlock":{"cidr":"10.1.0.0/16"}}]',
    )
    policy = find(docs, "NetworkPolicy", "mlplane-mlflow")
    [ray_pod, *_] = rendered_ray_pods()
    assert may_reach(policy, "team-a", ray_pod)
    assert not may_reach(policy, "team-b", ray_pod)  # a namespace the operator does not serve
    # The Ray cluster at rayAddress runs the jobs: KubeRay's label on its pods lets them in.
    assert may_reach(policy, "ray", {"ray.io/is-ray-node": "yes"})
    assert policy["spec"]["ingress"][0]["from"][-1] == {"ipBlock": {"cidr": "10.1.0.0/16"}}


def test_the_rbac_table_in_the_security_docs_is_the_charts(helm: Path) -> None:
    """docs/security.md lists what the chart grants, rewritten by `make generate`."""
    table = rbac_table.rbac_table(helm)
    document = rbac_table.SECURITY_DOC.read_text()
    assert rbac_table.with_table(document, table) == document, (
        "the RBAC table in docs/security.md is stale: run `make generate`"
    )
    # Secrets are readable only when a platform team asks, in either namespace mode.
    secrets = [row for row in table.splitlines() if "`secrets`" in row]
    assert len(secrets) == 2
    assert all(row.endswith("| `rbac.readCredentialsSecrets: true` |") for row in secrets)


INDEX = "https://pypi.internal/simple"


def test_code_policies_render_into_the_operator_config(helm: Path, tmp_path: Path) -> None:
    policies = [
        {"namespaces": "team-*", "entrypointModules": ["team_models"], "pipIndexUrl": INDEX},
        {"pip": False},
    ]
    docs = render(helm, f"--set-json=operator.codePolicies={json.dumps(policies)}")
    config = operator_config(docs, tmp_path)
    team, others = config.code_policy("team-a"), config.code_policy("research")
    assert (team.entrypoint_modules, team.pip, team.pip_index_url) == (["team_models"], True, INDEX)
    assert (others.namespaces, others.pip) == ("*", False)
    with pytest.raises(chart.RenderError, match="/operator/codePolicies/0/entrypointModules/0"):
        chart.template(helm, '--set-json=operator.codePolicies=[{"entrypointModules": ["os;"]}]')
