"""The kinds and their CustomResourceDefinitions, generated from the Pydantic models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from mlplane.crds.base import GROUP, VERSION
from mlplane.crds.gpuquota import GPUQuota, GPUQuotaSpec, GPUQuotaStatus
from mlplane.crds.modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from mlplane.crds.nodepool import NodePool, NodePoolSpec, NodePoolStatus
from mlplane.crds.schema import structural_schema
from mlplane.crds.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus
from mlplane.crds.tuningsweep import TuningSweep, TuningSweepSpec, TuningSweepStatus


@dataclass(frozen=True)
class Kind:
    """Everything about one kind that is not a field: its names, models and printer columns."""

    kind: str
    plural: str
    short_name: str
    description: str
    resource: type[BaseModel]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[dict[str, Any], ...]
    namespaced: bool = True

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(name: str, path: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


_PHASE = _column("Phase", ".status.phase")
_AGE = _column("Age", ".metadata.creationTimestamp", "date")

KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind(
            kind="TrainingJob",
            plural="trainingjobs",
            short_name="tj",
            description="One Ray Train run that trains, evaluates and registers a model.",
            resource=TrainingJob,
            spec=TrainingJobSpec,
            status=TrainingJobStatus,
            columns=(
                _PHASE,
                _column("Metric", ".status.keyMetric"),
                _column("GPUs", ".status.queue.gpus", "integer"),
                _column("Attempts", ".status.attempts", "integer", priority=1),
                _column("Pool", ".status.queue.pool", priority=1),
                _column("Model", ".status.model.uri", priority=1),
                _AGE,
            ),
        ),
        Kind(
            kind="TuningSweep",
            plural="tuningsweeps",
            short_name="sweep",
            description="One Ray Tune run over a TrainingJob template; promotes the best trial.",
            resource=TuningSweep,
            spec=TuningSweepSpec,
            status=TuningSweepStatus,
            columns=(
                _PHASE,
                _column("Best", ".status.keyMetric"),
                _column("Completed", ".status.trials.completed", "integer"),
                _column("Running", ".status.trials.running", "integer"),
                _column("GPUs", ".status.queue.gpus", "integer"),
                _column("Model", ".status.model.uri", priority=1),
                _AGE,
            ),
        ),
        Kind(
            kind="ModelDeployment",
            plural="modeldeployments",
            short_name="mdep",
            description="A model served over HTTP on Ray Serve or a SageMaker endpoint.",
            resource=ModelDeployment,
            spec=ModelDeploymentSpec,
            status=ModelDeploymentStatus,
            columns=(
                _PHASE,
                _column("Target", ".spec.target"),
                _column("Ready", ".status.replicas.ready", "integer"),
                _column("URL", ".status.url"),
                _column("RPS", ".status.metrics.rps", "number", priority=1),
                _column("P99ms", ".status.metrics.p99Ms", "number", priority=1),
                _AGE,
            ),
        ),
        Kind(
            kind="GPUQuota",
            plural="gpuquotas",
            short_name="gq",
            description="The GPUs of each node pool the work in one namespace may hold at once.",
            resource=GPUQuota,
            spec=GPUQuotaSpec,
            status=GPUQuotaStatus,
            columns=(
                _column("Used", ".status.summary"),
                _column("Waiting", ".status.waiting", "integer"),
                _AGE,
            ),
        ),
        Kind(
            kind="NodePool",
            plural="nodepools",
            short_name="np",
            description="A group of nodes work can be placed on, and its GPUs.",
            resource=NodePool,
            spec=NodePoolSpec,
            status=NodePoolStatus,
            columns=(
                _column("Nodes", ".status.nodes", "integer"),
                _column("GPUs", ".status.summary"),
                _column("Waiting", ".status.waiting", "integer"),
                _column("Product", ".spec.gpuProduct", priority=1),
                _AGE,
            ),
            namespaced=False,
        ),
    )
}


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(kind.spec)
    status_schema = structural_schema(kind.status)
    status_schema["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short_name],
                "categories": ["mlplane"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "mlplane.dev/v1alpha1",
                                },
                                "kind": {"type": "string", "description": kind.kind},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }
