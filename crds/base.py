"""Building blocks shared by the three APIs.

Every model here is both the Python type the operator and runners use and the source of the CRD's
`openAPIV3Schema` (see `mlplane.crds.schema`). Rules that the API server can check are declared next
to the field as CEL (`x-kubernetes-validations`) *and* enforced by a Pydantic validator, so
`mlplane validate` rejects the same objects offline that the API server rejects online.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from annotated_types import GroupedMetadata
from kubernetes.utils import parse_quantity
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict
from pydantic_core import core_schema

GROUP = "mlplane.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "mlplane.dev/v1alpha1"
"""GROUP/VERSION, spelled out: each kind's apiVersion field is this literal."""

# The pattern Kubernetes itself uses for resource.Quantity in CRDs.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `field_path` aims the API server's error at a field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected (not pruned)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _integer_or_string(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(f"{value} must be an integer or a string such as 500m or '0.5'")
    return value


def _quantity_at_most(maximum: str) -> Callable[[int | str], int | str]:
    def check(value: int | str) -> int | str:
        try:
            amount = parse_quantity(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a Kubernetes quantity such as 4, 500m or 16Gi"
            ) from None
        if not 0 <= amount <= parse_quantity(maximum):
            raise ValueError(f"{value!r} must be between 0 and {maximum}")
        return value

    return check


class BoundedQuantity(GroupedMetadata):
    """A Kubernetes quantity (`4`, `500m`, `16Gi`) from 0 to `maximum`, checked with the kubernetes
    client's own parser here and Kubernetes' CEL quantity library on the API server.

    An integer or a string, as the API server's int-or-string allows: half a CPU is `500m` or
    `"0.5"`. The bound keeps `1e308` out of the arithmetic that places and queues the work.
    """

    def __init__(self, maximum: str) -> None:
        self.maximum = maximum

    def __iter__(self) -> Iterator[object]:
        maximum = self.maximum
        in_range = (
            f"type(self) == int ? self >= 0 && self <= {int(parse_quantity(maximum))} : "
            f"isQuantity(self) && quantity(self).compareTo(quantity('0')) >= 0 && "
            f"quantity(self).compareTo(quantity('{maximum}')) <= 0"
        )
        yield BeforeValidator(_integer_or_string)
        yield AfterValidator(_quantity_at_most(maximum))
        yield WithJsonSchema(
            {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
                "pattern": QUANTITY_PATTERN,
                "maxLength": 32,
                **validations(cel(in_range, f"must be a quantity between 0 and {maximum}")),
            }
        )


Cpu = Annotated[int | str, BoundedQuantity("1024")]
Memory = Annotated[int | str, BoundedQuantity("64Ti")]


def quantity_value(quantity: int | str) -> Decimal:
    return parse_quantity(quantity)


FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A free-form map the API server keeps as written (the operator's own bookkeeping)."""

MAX_PARAMETERS = 256
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_PARAMETERS_DEPTH = 16


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    """Finite numbers, bounded depth and size: what a runner can pass on without overflowing."""
    if len(value) > MAX_PARAMETERS:
        raise ValueError(f"{len(value)} keys; at most {MAX_PARAMETERS}")
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_PARAMETERS_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PARAMETERS_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    try:
        size = len(json.dumps(value, allow_nan=False))
    except ValueError:
        raise ValueError("numbers must be finite (no .nan or .inf)") from None
    if size > MAX_PARAMETERS_BYTES:
        raise ValueError(f"{size} bytes as JSON; at most {MAX_PARAMETERS_BYTES}")
    return value


Parameters = Annotated[
    dict[str, Any],
    AfterValidator(_plain_json),
    WithJsonSchema(
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "maxProperties": MAX_PARAMETERS,
        }
    ),
]
"""Free-form settings (hyperparameters, model params), kept as written: at most 256 keys, 64 KiB
as JSON, 16 levels deep, finite numbers."""


def _plain_scalar(value: bool | int | float | str) -> bool | int | float | str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no .nan or .inf)")
    if isinstance(value, str) and len(value) > 1024:
        raise ValueError(f"{len(value)} characters; at most 1024")
    return value


Scalar = Annotated[
    bool | int | float | str,
    AfterValidator(_plain_scalar),
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
"""A boolean, finite number or string of at most 1024 characters (a hyperparameter's value)."""


@dataclass(frozen=True)
class MapBounds:
    """Bounds on a map's entries and keys (`Annotated[dict[str, ...], MapBounds(64)]`), checked
    alike by `mlplane validate` and the API server.

    Key rules are CEL: the API server's structural schemas have no `propertyNames`.
    """

    max_entries: int
    key_pattern: str = r"^.+$"
    max_key: int = 256

    def _check(self, entries: dict[str, Any]) -> dict[str, Any]:
        if len(entries) > self.max_entries:
            raise ValueError(f"{len(entries)} entries; at most {self.max_entries}")
        for key in entries:
            if len(key) > self.max_key or not re.match(self.key_pattern, key):
                raise ValueError(f"key {key[:64]!r} must match {self._keys}")
        return entries

    @property
    def _keys(self) -> str:
        return f"{self.key_pattern} (at most {self.max_key} characters)"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema["maxProperties"] = self.max_entries
        rule = f"self.all(k, size(k) <= {self.max_key} && k.matches('{self.key_pattern}'))"
        json_schema.setdefault("x-kubernetes-validations", []).append(
            cel(rule, f"keys must match {self._keys}")
        )
        return json_schema


ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Resources(ApiModel):
    """CPU, memory and GPUs for one process (a Ray Train worker or a Serve replica)."""

    cpu: Cpu = 1
    """CPUs, as a Kubernetes quantity (`2`, `500m`), at most 1024."""
    memory: Memory | None = None
    """Memory, as a Kubernetes quantity (`16Gi`), at most 64Ti. Unset: no explicit reservation."""
    gpu: int = Field(default=0, ge=0, le=16)
    """Whole GPUs (`nvidia.com/gpu`)."""


ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    """The conditions mlplane sets. A run: Admitted, Running, then Complete or Failed, and
    GatesPassed when its gates were checked. A deployment: Ready and Progressing, and on SageMaker
    also Synced and Terminal, as the AWS controllers (ACK) set them."""

    ADMITTED = "Admitted"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    GATES_PASSED = "GatesPassed"
    READY = "Ready"
    PROGRESSING = "Progressing"
    SYNCED = "Synced"
    TERMINAL = "Terminal"


class Condition(ApiModel):
    """A kstatus condition, the shape of Kubernetes' own metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    """The aspect this condition reports, e.g. Complete or Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(default="", max_length=128)
    """A CamelCase word a program can switch on."""
    message: str = Field(default="", max_length=4096)
    """What a person needs to know, naming the field or the cause."""
    last_transition_time: datetime | None = None
    """When status last changed."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


def list_map(*keys: str) -> JsonDict:
    """A list Kubernetes merges by `keys` (server-side apply, strategic merge)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


CONDITIONS_LIST = list_map("type")


class Queue(ApiModel):
    """Where the resource stands in the GPU queue of its node pool."""

    model_config = ConfigDict(extra="ignore")

    pool: str = ""
    """The node pool whose GPUs the resource needs."""
    gpus: int = 0
    """GPUs the resource holds, or waits for."""
    position: int = 0
    """0 once admitted; otherwise 1 for next in line."""
    name: str | None = None
    """The Kueue LocalQueue, when Kueue admits the work."""


class MlflowRef(ApiModel):
    """Where the run lives in MLflow."""

    model_config = ConfigDict(extra="ignore")

    experiment_id: str | None = None
    """MLflow experiment ID."""
    run_id: str | None = None
    """MLflow run ID (the parent run for a sweep)."""
    url: str | None = None
    """Link to the run in the MLflow UI."""


class RegisteredModel(ApiModel):
    """The model version the run registered."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    """Registered model name."""
    version: str | None = None
    """Registered model version."""
    alias: str | None = None
    """The alias pointing at this version."""
    uri: str | None = None
    """`models:/name/version`, ready for a ModelDeployment."""


class RayRef(ApiModel):
    """Where the work runs on Ray."""

    model_config = ConfigDict(extra="ignore")

    backend: str | None = None
    """ray, kuberay or sagemaker."""
    submission_id: str | None = None
    """The Ray Jobs submission ID (one per attempt)."""
    dashboard_url: str | None = None
    """The Ray dashboard for the job."""
    ray_job: str | None = None
    """The child RayJob or RayService, with the kuberay backend."""


class Progress(ApiModel):
    """How far the run is and how long it should take."""

    model_config = ConfigDict(extra="ignore")

    epoch: int = 0
    """Epochs (boosting rounds) finished, or trials finished for a sweep."""
    of: int = 0
    """Epochs (or trials) planned."""
    eta_seconds: int | None = None
    """Estimated seconds left."""


Phase = Literal["Pending", "Queued", "Starting", "Running", "Succeeded", "Failed"]


class RunStatus(ApiModel):
    """What TrainingJob and TuningSweep statuses share."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = None
    """Pending, Queued, Starting, Running, Succeeded or Failed."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Admitted, Running, Complete, Failed and GatesPassed."""
    attempts: int = 0
    """Ray submissions made so far (1 + retries used)."""
    progress: Progress | None = None
    """Epochs or trials done, and the ETA."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """The latest metrics from MLflow (train_*, val_*, test_*)."""
    key_metric: str | None = None
    """The headline metric, e.g. `test_roc_auc=0.991`, shown by `kubectl get`."""
    mlflow: MlflowRef | None = None
    """The MLflow experiment and run."""
    model: RegisteredModel | None = None
    """The registered model version, if gates passed."""
    ray: RayRef | None = None
    """The Ray job that runs the work."""
    queue: Queue | None = None
    """GPU pool, GPUs held and queue position."""
    gpu_seconds: float = 0
    """GPU time allocated so far, for chargeback: in whole minutes while the run holds its GPUs,
    exact once it ends."""
    start_time: datetime | None = None
    """When the work was launched."""
    completion_time: datetime | None = None
    """When the work finished."""
    kopf: FreeForm | None = None
    """The operator's own bookkeeping (kept in status so Argo CD sees no drift)."""


def immutable(*fields: str) -> list[dict[str, str]]:
    """Transition rules that freeze the named spec fields once the object exists.

    Like a Kubernetes Job's pod template: the work a resource describes cannot change under a
    running job; delete and re-create instead. Optional fields must not appear or disappear either.
    """
    rules = []
    for name in fields:
        rules.append(
            cel(
                f"has(self.{name}) == has(oldSelf.{name}) && "
                f"(!has(self.{name}) || self.{name} == oldSelf.{name})",
                f"{name} is immutable once created; delete and re-create the resource",
                f".{name}",
            )
        )
    return rules


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata mlplane reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
