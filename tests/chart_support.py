"""Installing the chart's objects on the real control plane, and acting as its ServiceAccount.

Shared by the chart's integration and end-to-end tests: objects are applied with the kubectl the
control plane was built with (server-side apply, as GitOps tools do); the ServiceAccount's
credentials are a token from the TokenRequest API, exactly what the kubelet mounts into the
operator's pod, written into a kubeconfig of its own.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from mlplane.operator.cluster import chart
from mlplane.operator.cluster.build import Parts


@dataclass(frozen=True)
class Kubectl:
    parts: Parts
    kubeconfig: Path

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.parts.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def apply(self, docs: list[dict[str, Any]]) -> str:
        return self("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def install_crds(self) -> None:
        """The chart's CRDs (mlplane's and kopf's peering kinds), as `kubectl apply -k
        manifests/crds` installs them, established before anything refers to them."""
        self("apply", "--server-side", "--force-conflicts", "-k", str(chart.MANIFESTS / "crds"))
        self(
            "wait",
            "--for=condition=Established",
            "crd/clusterkopfpeerings.kopf.dev",
            "crd/kopfpeerings.kopf.dev",
        )


def service_account_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: Path, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a token from TokenRequest."""
    request = {"spec": {"expirationSeconds": 3600}}
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(name, namespace, request)
        .status.token
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    user = {"name": f"{namespace}-{name}", "user": {"token": token}}
    context = {"name": "sa", "context": {"cluster": cluster["name"], "user": user["name"]}}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [user],
                "contexts": [context],
                "current-context": "sa",
            }
        )
    )
    return path


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def can(
    api: client.ApiClient,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
) -> bool:
    """`kubectl auth can-i` for whoever `api` authenticates as (a SelfSubjectAccessReview);
    `resource` may name a subresource, as in `trainingjobs/status`."""
    resource, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource}
    optional = {"namespace": namespace, "name": name, "subresource": subresource or None}
    attributes.update({k: v for k, v in optional.items() if v})
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {"spec": {"resourceAttributes": attributes}}
    )
    return bool(review.status.allowed)
