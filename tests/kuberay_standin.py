"""A stand-in for KubeRay on the test API server: its `ray.io/v1` kinds, and its status moves.

No KubeRay controller runs here (its Go module is not in the build cache, and kwok pods run no
containers anyway), so the CRDs are minimal: the kinds, names, status subresource and printer
columns KubeRay's have, with spec and status kept as written. Tests (and bench/queue_admission.py)
then move a RayJob's status the way KubeRay would, through the status subresource.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "ray.io", "v1"
KINDS = {"RayJob": "rayjobs", "RayCluster": "rayclusters", "RayService": "rayservices"}
_RAYJOB_COLUMNS = [
    {"name": "job status", "type": "string", "jsonPath": ".status.jobStatus"},
    {"name": "deployment status", "type": "string", "jsonPath": ".status.jobDeploymentStatus"},
    {"name": "age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd(kind: str, plural: str) -> dict[str, Any]:
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _RAYJOB_COLUMNS if kind == "RayJob" else [],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": free, "status": free},
                        }
                    },
                }
            ],
        },
    }


def install_crds(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Create the three CRDs (or keep those a previous run left) and wait until established."""
    extensions = client.ApiextensionsV1Api(api)
    for kind, plural in KINDS.items():
        try:
            extensions.create_custom_resource_definition(crd(kind, plural))
        except ApiException as error:
            if error.status != 409:
                raise
    deadline = time.monotonic() + timeout
    for plural in KINDS.values():
        while True:
            found = extensions.read_custom_resource_definition(f"{plural}.{GROUP}")
            conditions = found.status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {plural}.{GROUP} not established")
            time.sleep(0.2)


def set_status(
    api: client.ApiClient, namespace: str, plural: str, name: str, status: dict[str, Any]
) -> None:
    """Write `status` onto the object as KubeRay would (a merge patch of the status)."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": status}
    )


def rayjob_status(deployment: str, job: str = "", **extra: Any) -> dict[str, Any]:
    """A RayJob status in KubeRay's words: jobDeploymentStatus, jobStatus, reason, message."""
    status: dict[str, Any] = {"jobDeploymentStatus": deployment, **extra}
    if job:
        status["jobStatus"] = job
    return status
