"""ModelDeployment: one model served over HTTP, on Ray Serve or a SageMaker endpoint."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from mlplane.crds.base import (
    API_VERSION,
    CONDITIONS_LIST,
    ENV_VAR_NAME,
    NAME_PATTERN,
    ApiModel,
    Condition,
    FreeForm,
    MapBounds,
    ObjectMeta,
    Resources,
    cel,
    immutable,
    validations,
)

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""The largest prediction request a replica reads by default (413 over it): 4 MiB holds a full
batch of wide rows, while a body many times that is an attack, not a batch."""
MAX_REQUEST_BYTES_LIMIT = 64 * 1024 * 1024
MODEL_URI_PATTERN = r"^(models:/|runs:/|s3://).+"


class TrainingJobRef(ApiModel):
    """A TrainingJob in the same namespace whose registered model version is served."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    """The TrainingJob's name."""


class ModelSource(ApiModel):
    """Which model to serve: a URI, or the version a TrainingJob registered."""

    uri: str | None = Field(default=None, pattern=MODEL_URI_PATTERN, max_length=2048)
    """`models:/name@alias`, `models:/name/7`, `runs:/<run>/model` or `s3://bucket/model/`."""
    training_job_ref: TrainingJobRef | None = None
    """Serve the model version this TrainingJob registered."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.uri) != has(self.trainingJobRef)",
                "set exactly one of uri, trainingJobRef",
            )
        )
    }

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.uri is None) == (self.training_job_ref is None):
            raise ValueError("set exactly one of uri, trainingJobRef")
        return self


class Replicas(ApiModel):
    """Serve autoscaling bounds and target."""

    min: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas (0 scales to zero)."""
    max: int = Field(default=1, ge=1, le=1000)
    """Most replicas."""
    target_ongoing_requests: float = Field(default=2, gt=0, le=10000)
    """Requests in flight per replica that autoscaling aims for."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("self.min <= self.max", "min must not exceed max", ".min")
        )
    }

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Batching(ApiModel):
    """Dynamic request batching (Ray Serve's @serve.batch)."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most requests per batch; also the largest accepted request batch."""
    timeout_ms: float = Field(default=5, ge=0, le=10000)
    """How long a batch waits to fill."""


class RayServing(ApiModel):
    """How the model is served on Ray Serve."""

    replicas: Replicas = Field(default_factory=Replicas)
    """Autoscaling bounds."""
    per_replica: Resources = Field(default_factory=Resources)
    """CPU, memory and GPUs per replica."""
    node_pool: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    """Node pool for replicas (kuberay backend)."""
    batching: Batching = Field(default_factory=Batching)
    """Request batching."""
    route_prefix: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9/_-]*$", max_length=256)
    """HTTP path. Unset: `/<namespace>/<name>`."""
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES, ge=1024, le=MAX_REQUEST_BYTES_LIMIT
    )
    """Largest request body a replica reads, in bytes (default 4 MiB, at most 64 MiB); a longer
    one is answered 413 without being read."""


class Guard(ApiModel):
    """Limits a canary must hold to advance; breaching one rolls back."""

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Largest tolerated share of failed requests on the canary."""
    max_latency_p99_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    """Largest tolerated p99 latency on the canary."""


class Canary(ApiModel):
    """Move traffic to a new model step by step, guarded by its live metrics."""

    model: ModelSource
    """The candidate model."""
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **validations(cel("self.isSorted()", "steps must be ascending")),
        },
    )
    """Traffic percentages to the canary, ascending; 100 promotes it."""
    interval_seconds: int = Field(default=60, ge=1, le=86400)
    """Time at each step before the guard is judged."""
    guard: Guard = Field(default_factory=Guard)
    """The limits that must hold."""

    @field_validator("steps")
    @classmethod
    def _ascending(cls, steps: list[int]) -> list[int]:
        if steps != sorted(set(steps)):
            raise ValueError(f"steps must be ascending without repeats, got {steps}")
        return steps


class Serverless(ApiModel):
    """SageMaker Serverless Inference instead of instances."""

    memory_size_mb: Literal[1024, 2048, 3072, 4096, 5120, 6144] = Field(
        default=2048, alias="memorySizeInMB"
    )
    """Memory per concurrent invocation. Changing it deploys a new EndpointConfig."""
    max_concurrency: int = Field(default=5, ge=1, le=200)
    """Concurrent invocations; changed in place, without a new EndpointConfig."""


class SageMakerDeployment(ApiModel):
    """How SageMaker shifts traffic when the model or instances change (blue/green)."""

    strategy: Literal["allAtOnce", "canary", "linear"] = "allAtOnce"
    """allAtOnce, canary (one step, then the rest) or linear (equal steps) traffic shifting."""
    step_percent: int = Field(default=10, ge=1, le=50)
    """With canary: the first step's share of capacity (at most 50); with linear: each step's
    share (10 to 50)."""
    wait_interval_seconds: int = Field(default=300, ge=0, le=3600)
    """Baking time between steps, while the rollback alarms are watched."""
    termination_wait_seconds: int = Field(default=0, ge=0, le=3600)
    """Wait before the old fleet is terminated."""
    maximum_execution_timeout_seconds: int | None = Field(default=None, ge=600, le=28800)
    """Longest a blue/green update may take before SageMaker rolls it back. Unset: SageMaker's."""
    auto_rollback_alarms: list[str] = Field(
        default_factory=list,
        max_length=10,
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 255}},
    )
    """CloudWatch alarms that roll the update back while any of them is in ALARM."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.strategy != 'linear' || self.stepPercent >= 10",
                "linear steps move 10 to 50 percent of capacity",
                ".stepPercent",
            )
        )
    }

    @model_validator(mode="after")
    def _linear_step(self) -> SageMakerDeployment:
        if self.strategy == "linear" and self.step_percent < 10:
            raise ValueError("linear steps move 10 to 50 percent of capacity")
        return self


class SecretRef(ApiModel):
    """A Secret in the resource's namespace holding AWS credentials."""

    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    """Secret name; keys aws_access_key_id, aws_secret_access_key and optionally
    aws_session_token (or the same names in upper case, as for envFrom)."""


# Link-local addresses (AWS, GCP and Azure metadata: 169.254.169.254, fd00:ec2::254), Alibaba's
# 100.100.100.200, metadata host names; hosts written as one decimal or hex number, which can be
# any address; and a user@ before the host, which hides it.
METADATA_SERVICE_URL = (
    r"^https?://(\[?(fe80:|fd00:ec2:)|169\.254\.|100\.100\.100\.200|metadata([.:/]|$)"
    r"|(0x[0-9a-fA-F]+|[0-9]+)([:/]|$)|[^/?#]*@)"
)
METADATA_SERVICE_REFUSAL = "must not be a link-local or cloud metadata address, nor carry user@"


def _not_metadata_service(url: str | None) -> str | None:
    if url and re.match(METADATA_SERVICE_URL, url):
        raise ValueError(METADATA_SERVICE_REFUSAL)
    return url


EndpointUrl = Annotated[
    str,
    Field(
        pattern=r"^https?://.+",
        max_length=2048,
        json_schema_extra=validations(
            cel(f"!self.matches(r'{METADATA_SERVICE_URL}')", METADATA_SERVICE_REFUSAL)
        ),
    ),
    AfterValidator(_not_metadata_service),
]


SAGEMAKER_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"


class SageMakerServing(ApiModel):
    """How the model is served on a SageMaker endpoint."""

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$", max_length=32)
    """AWS region, e.g. eu-west-1."""
    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", max_length=2048)
    """The execution role SageMaker assumes (reads model.tar.gz, pulls the image)."""
    instance_type: str = Field(
        default="ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$", max_length=64
    )
    """Instance type, e.g. ml.m5.large. Changing it deploys a new EndpointConfig."""
    instance_count: int = Field(default=1, ge=1, le=100)
    """Instances behind the endpoint; changed in place, without a new EndpointConfig."""
    image: str | None = Field(default=None, max_length=2048)
    """Serving container image. Unset: SageMaker's XGBoost image for an xgboost model, else
    MLflow's pyfunc image (`mlflow sagemaker build-and-push-container`) in the role's account."""
    environment: Annotated[
        dict[str, Annotated[str, Field(max_length=1024)]], MapBounds(64, ENV_VAR_NAME, 1024)
    ] = Field(default_factory=dict)
    """Extra environment variables of the serving container."""
    artifact_bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", max_length=63
    )
    """S3 bucket model.tar.gz is uploaded to. Unset: the operator's sagemaker_artifact_bucket."""
    endpoint_name: str | None = Field(default=None, pattern=SAGEMAKER_NAME_PATTERN, max_length=63)
    """The SageMaker endpoint's name. Unset: `<name>-<first 8 characters of the UID>`. Naming an
    existing endpoint takes it over only with the annotation `mlplane.dev/adopt: "true"`."""
    variant_name: str = Field(default="AllTraffic", pattern=SAGEMAKER_NAME_PATTERN, max_length=63)
    """The production variant; an adopted endpoint's must match for blue/green updates."""
    endpoint_url: EndpointUrl | None = None
    """Custom AWS endpoint for SageMaker and S3 (VPC endpoints, or a local moto server); never a
    cloud metadata service, where the operator would send its signed requests."""
    credentials_secret: SecretRef | None = None
    """Credentials from a Secret; unset uses the operator's ambient identity (IRSA)."""
    serverless: Serverless | None = None
    """Serverless inference instead of instances."""
    deployment: SageMakerDeployment = Field(default_factory=SageMakerDeployment)
    """Traffic shifting on update."""
    tags: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": 40,
            **validations(
                cel(
                    "self.all(k, size(k) <= 128 && !k.startsWith('mlplane.dev/'))",
                    "tag keys have at most 128 characters; mlplane.dev/ keys are the operator's",
                )
            ),
        },
    )
    """AWS tags on the model, endpoint config and endpoint (values up to 256 characters); changes
    are applied to the endpoint in place. Keys starting with `mlplane.dev/` are the operator's."""

    @field_validator("tags")
    @classmethod
    def _user_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key in tags:
            if len(key) > 128 or key.startswith("mlplane.dev/"):
                raise ValueError(
                    f"tag {key!r}: keys have at most 128 characters; "
                    "mlplane.dev/ keys are the operator's"
                )
        return tags


SAGEMAKER_CANARY = (
    "canary is for target ray; on SageMaker, sagemaker.deployment shifts traffic (blue/green)"
)


class ModelDeploymentSpec(ApiModel):
    """What to serve, where, and how traffic moves to a new model."""

    model: ModelSource
    """The model to serve."""
    target: Literal["ray", "sagemaker"] = "ray"
    """ray (Ray Serve) or sagemaker (a SageMaker endpoint)."""
    ray: RayServing = Field(default_factory=RayServing)
    """Ray Serve options (target ray)."""
    sagemaker: SageMakerServing | None = None
    """SageMaker options (target sagemaker)."""
    canary: Canary | None = None
    """Gradual, guarded rollout of a candidate model."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.target != 'sagemaker' || has(self.sagemaker)",
                "target sagemaker needs the sagemaker section",
                ".sagemaker",
            ),
            cel(
                "self.target != 'sagemaker' || !has(self.canary)",
                SAGEMAKER_CANARY,
                ".canary",
            ),
            *immutable("target"),
        )
    }

    @model_validator(mode="after")
    def _target_options(self) -> ModelDeploymentSpec:
        if self.target == "sagemaker" and self.sagemaker is None:
            raise ValueError("target sagemaker needs the sagemaker section")
        if self.target == "sagemaker" and self.canary is not None:
            raise ValueError(SAGEMAKER_CANARY)
        return self


class Traffic(ApiModel):
    """One model's share of traffic."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    uri: str
    """The model URI as resolved."""
    version: str | None = None
    """Registered model version."""
    percent: int = 0
    """Share of requests."""
    role: Literal["stable", "canary"] = "stable"
    """stable, or the canary being judged."""


class ServingMetrics(ApiModel):
    """Live request metrics over the last observation window."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    rps: float = 0
    """Requests per second."""
    p50_ms: float | None = None
    """Median latency."""
    p99_ms: float | None = None
    """99th percentile latency."""
    error_rate: float = 0
    """Share of the requests the model answered that failed (5xx); client errors (4xx) are
    not counted."""


class ReplicaCounts(ApiModel):
    """Replicas ready and wanted."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    ready: int = 0
    """Replicas serving."""
    desired: int = 0
    """Replicas wanted now."""


class Endpoint(ApiModel):
    """The SageMaker endpoint behind a target sagemaker deployment, and what it was built from."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str | None = None
    """Endpoint name."""
    arn: str | None = None
    """Endpoint ARN."""
    region: str | None = None
    """The endpoint's AWS region."""
    status: str | None = None
    """SageMaker's EndpointStatus: Creating, Updating, SystemUpdating, InService, RollingBack,
    Failed, UpdateRollbackFailed, OutOfService or Deleting."""
    config_name: str | None = None
    """The EndpointConfig in use."""
    target_config_name: str | None = None
    """The EndpointConfig the operator last deployed; differs from configName while an update
    runs, and after SageMaker rolled one back."""
    model_name: str | None = None
    """The SageMaker Model of targetConfigName."""
    model_data_url: str | None = None
    """The model.tar.gz the model serves."""
    image: str | None = None
    """The serving container image."""
    failure_reason: str | None = None
    """SageMaker's FailureReason."""
    tags: dict[str, str] | None = None
    """spec.sagemaker.tags as last applied to the endpoint."""
    retry_after: datetime | None = None
    """After an AWS error that needs a person (AccessDenied, a validation error): when the
    operator tries again, unless the spec changes first."""


class CanaryStatus(ApiModel):
    """Where a canary rollout stands."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    step: int = 0
    """Index into spec.canary.steps."""
    percent: int = 0
    """Traffic on the canary now."""
    step_started: datetime | None = None
    """When the current step began."""
    outcome: Literal["InProgress", "Promoted", "RolledBack"] = "InProgress"
    """InProgress, Promoted or RolledBack."""


class ModelDeploymentStatus(ApiModel):
    """Where the model is served and how it is doing."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    phase: (
        Literal["Deploying", "Available", "Progressing", "Degraded", "RollingBack", "Failed"] | None
    ) = None
    """Deploying, Available, Progressing, Degraded, RollingBack or Failed."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Ready and Progressing; with target sagemaker also Synced (AWS matches the spec) and
    Terminal (an error only a person can fix)."""
    url: str | None = None
    """Where to send requests."""
    replicas: ReplicaCounts | None = None
    """Replicas ready and wanted."""
    traffic: list[Traffic] = Field(default_factory=list)
    """Traffic split across model versions."""
    metrics: ServingMetrics | None = None
    """Live rps, latency and error rate."""
    endpoint: Endpoint | None = None
    """SageMaker endpoint details."""
    canary: CanaryStatus | None = None
    """Canary progress."""
    kopf: FreeForm | None = None
    """The operator's own bookkeeping (kept in status so Argo CD sees no drift)."""


class ModelDeployment(ApiModel):
    """A ModelDeployment resource as it is applied."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["mlplane.dev/v1alpha1"] = API_VERSION
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
