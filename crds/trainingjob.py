"""TrainingJob: one Ray Train run (XGBoost or PyTorch) that tracks, evaluates and registers."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from mlplane.crds.base import (
    API_VERSION,
    ENV_VAR_NAME,
    NAME_PATTERN,
    ApiModel,
    MapBounds,
    ObjectMeta,
    Parameters,
    Resources,
    RunStatus,
    cel,
    immutable,
    validations,
)

SKLEARN_DATASETS = ("breast_cancer", "digits", "wine", "iris", "diabetes")
DATASET_SCHEMES = ("s3", "file", "sklearn")
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
GATE_PATTERN = r"^\s*(>=|<=|==|>|<)\s*(-?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)\s*$"
MAX_DEADLINE_SECONDS = 366 * 24 * 3600
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class Split(ApiModel):
    """How the rows are divided into train, validation and the held-out test split."""

    validation: float = Field(default=0.2, gt=0, lt=1)
    """Share of rows for validation (early stopping, checkpoints)."""
    test: float = Field(default=0.1, ge=0, lt=1)
    """Share of rows held out for the final evaluation and the gates."""
    strategy: Literal["stratified", "random", "time", "group"] = "stratified"
    """stratified (by label; falls back to random for regression), random, time or group."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed for the shuffle, so a rerun sees the same rows."""
    time_column: str | None = Field(default=None, max_length=256)
    """With strategy time: the column that orders rows; the latest rows become test."""
    group_column: str | None = Field(default=None, max_length=256)
    """With strategy group: rows sharing this column's value stay in one split."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("self.validation + self.test < 1.0", "validation + test must be below 1"),
            cel(
                "self.strategy != 'time' || has(self.timeColumn)",
                "strategy time needs timeColumn",
                ".timeColumn",
            ),
            cel(
                "self.strategy != 'group' || has(self.groupColumn)",
                "strategy group needs groupColumn",
                ".groupColumn",
            ),
        )
    }

    @model_validator(mode="after")
    def _shares_and_columns(self) -> Split:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must be below 1")
        if self.strategy == "time" and not self.time_column:
            raise ValueError("strategy time needs timeColumn")
        if self.strategy == "group" and not self.group_column:
            raise ValueError("strategy group needs groupColumn")
        return self


def _known_dataset(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    if scheme not in DATASET_SCHEMES or not rest:
        raise ValueError("must start with s3://, file:// or sklearn://")
    if scheme == "sklearn" and rest not in SKLEARN_DATASETS:
        raise ValueError(f"unknown sklearn dataset {rest!r}; known: {', '.join(SKLEARN_DATASETS)}")
    return uri


class Dataset(ApiModel):
    """Where the table comes from and which column is the label."""

    uri: Annotated[str, AfterValidator(_known_dataset)] = Field(
        max_length=2048,
        json_schema_extra=validations(
            cel(
                "self.matches('^(s3|file|sklearn)://.+')",
                "must start with s3://, file:// or sklearn://",
            ),
            cel(
                "!self.startsWith('sklearn://') || self in ["
                + ", ".join(f"'sklearn://{name}'" for name in SKLEARN_DATASETS)
                + "]",
                "unknown sklearn dataset; known: " + ", ".join(SKLEARN_DATASETS),
            ),
        ),
    )
    """`s3://bucket/key.parquet`, `file:///data/train.csv` (CSV or Parquet) or `sklearn://<name>`."""
    label: str = Field(min_length=1, max_length=256)
    """The column to predict."""
    features: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=4096
    )
    """Columns to train on. Unset: every column but the label (and split columns)."""
    split: Split = Field(default_factory=Split)
    """Train / validation / test split."""


class Model(ApiModel):
    """The built-in tabular model, or the user's own training function."""

    task: Literal["auto", "classification", "regression"] = "auto"
    """auto decides from the label: integers or strings with few values mean classification."""
    params: Parameters = Field(default_factory=dict)
    """Architecture parameters; for the torch MLP `hidden` (layer widths) and `dropout`."""
    entrypoint: str | None = Field(default=None, pattern=ENTRYPOINT_PATTERN, max_length=512)
    """`package.module:function`: your train_loop_per_worker instead of the built-in model."""


class SecretName(ApiModel):
    """A Secret in the resource's own namespace."""

    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    """The Secret's name."""


class EnvFromSecret(ApiModel):
    """Every key of a Secret as an environment variable, as a pod's `envFrom` does."""

    secret_ref: SecretName
    """The Secret; keys that are not environment variable names are left out."""


class RuntimeEnv(ApiModel):
    """Ray runtime_env for custom code: what the workers install and see."""

    pip: list[Annotated[str, Field(pattern=r"^[^-\s]", max_length=1024)]] = Field(
        default_factory=list, max_length=256
    )
    """Extra pip requirements, e.g. `lightgbm==4.6.0`; pip options (`--index-url`) are refused:
    the platform's pip configuration decides where packages come from."""
    working_dir: str | None = Field(default=None, max_length=2048)
    """The code directory every worker runs in: a local path with `mlplane run`; on a cluster a
    remote .zip (s3://, gs://, https:// or http://), as `mlplane package` uploads it."""
    py_modules: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list, max_length=64
    )
    """Extra package directories: local paths with `mlplane run`; on a cluster remote .zip
    archives, as `mlplane package` uploads them."""
    env_vars: Annotated[
        dict[str, Annotated[str, Field(max_length=32768)]], MapBounds(256, ENV_VAR_NAME)
    ] = Field(default_factory=dict)
    """Environment variables for every worker: at most 256, names like `MY_SETTING`. The whole
    runtimeEnv travels on the job's command line, so it may take at most 64 KiB."""
    env_from: list[EnvFromSecret] = Field(default_factory=list, max_length=16)
    """Credentials the job needs (S3 keys, MLFLOW_TRACKING_USERNAME and _PASSWORD), from Secrets
    in the resource's namespace: every key becomes an environment variable of the driver and
    every worker. The kuberay backend puts them on the Ray pods as `envFrom`, never into the
    RayJob; the ray backend's operator reads them (with the chart's
    `rbac.readCredentialsSecrets`) and passes them to this job's runtime env only."""


class EarlyStopping(ApiModel):
    """Stop training when a validation metric stops improving."""

    metric: str = Field(min_length=1, max_length=128)
    """A metric the run reports, e.g. val_logloss."""
    mode: Literal["min", "max"] = "min"
    """Whether lower (min) or higher (max) is better."""
    patience: int = Field(default=10, ge=1, le=100000)
    """Epochs (boosting rounds) without improvement before stopping."""


class ResourceRequest(ApiModel):
    """How many Ray Train workers, what each gets, and where they run."""

    workers: int = Field(default=1, ge=1, le=256)
    """Ray Train workers (ScalingConfig.num_workers)."""
    per_worker: Resources = Field(default_factory=Resources)
    """CPU, memory and GPUs of each worker."""
    node_pool: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    """The GPU node pool to run on (from the operator configuration)."""

    @property
    def gpus(self) -> int:
        return self.workers * self.per_worker.gpu


class Checkpoint(ApiModel):
    """How often to checkpoint and how many to keep (the best by the early-stopping metric)."""

    every: int = Field(default=1, ge=1, le=100000)
    """Checkpoint every N epochs (boosting rounds)."""
    keep: int = Field(default=2, ge=1, le=100)
    """Checkpoints to keep."""


class Tracking(ApiModel):
    """MLflow experiment and model registration."""

    experiment: str | None = Field(default=None, max_length=256)
    """MLflow experiment name. Unset: `<namespace>/<name>` of the resource."""
    register_as: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN, max_length=256)
    """Register the trained model under this name when the gates pass."""
    alias: str | None = Field(default=None, pattern=ALIAS_PATTERN, max_length=128)
    """Point this alias (e.g. candidate) at the new version."""
    tags: Annotated[
        dict[str, Annotated[str, Field(max_length=5000)]], MapBounds(64, max_key=250)
    ] = Field(default_factory=dict)
    """Extra tags on the MLflow run: at most 64, keys up to 250 characters (MLflow's limit)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("!has(self.alias) || has(self.registerAs)", "alias needs registerAs", ".alias")
        )
    }

    @model_validator(mode="after")
    def _alias_needs_name(self) -> Tracking:
        if self.alias and not self.register_as:
            raise ValueError("alias needs registerAs")
        return self


def _parse_gate(condition: str) -> str:
    if not re.match(GATE_PATTERN, condition):
        raise ValueError(f"{condition!r} is not a comparison such as '>= 0.95'")
    return condition


Gate = Annotated[
    str,
    Field(max_length=64),
    AfterValidator(_parse_gate),
    WithJsonSchema({"type": "string", "pattern": GATE_PATTERN, "maxLength": 64}),
]


class TrainingJobSpec(ApiModel):
    """What to train, on which data and hardware, and what counts as good enough to register."""

    framework: Literal["xgboost", "torch"]
    """xgboost (Ray Train XGBoostTrainer) or torch (TorchTrainer, DDP)."""
    dataset: Dataset
    """The training table."""
    model: Model = Field(default_factory=Model)
    """Built-in model settings, or a custom entrypoint."""
    runtime_env: RuntimeEnv | None = None
    """Ray runtime_env for custom code."""
    hyperparameters: Parameters = Field(default_factory=dict)
    """Framework hyperparameters, e.g. eta, max_depth, num_boost_round or lr, epochs, batch_size."""
    early_stopping: EarlyStopping | None = None
    """Stop when a validation metric stops improving."""
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    """Workers, per-worker resources and node pool."""
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    """Checkpoint frequency and retention."""
    retries: int = Field(default=0, ge=0, le=10)
    """Retries after a failed attempt; each resumes from the latest checkpoint."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_DEADLINE_SECONDS)
    """Fail the job (reason DeadlineExceeded) when it runs longer than this."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Higher is admitted first when GPUs are short; FIFO within a priority."""
    queue_name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    """A Kueue LocalQueue: Kueue admits the work instead of mlplane's own quota."""
    tracking: Tracking = Field(default_factory=Tracking)
    """MLflow experiment and registration."""
    gates: Annotated[dict[str, Gate], MapBounds(32, max_key=250)] = Field(default_factory=dict)
    """Conditions on test-split metrics that must hold to register, e.g. roc_auc: ">= 0.95"."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            *immutable(
                "framework",
                "dataset",
                "model",
                "runtimeEnv",
                "hyperparameters",
                "earlyStopping",
                "resources",
                "checkpoint",
                "tracking",
                "gates",
            )
        )
    }


class TrainingJobStatus(RunStatus):
    """What happened: phase, conditions, metrics, MLflow lineage, queue position."""


class TrainingJob(ApiModel):
    """A TrainingJob resource as it is applied."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["mlplane.dev/v1alpha1"] = API_VERSION
    kind: Literal["TrainingJob"] = "TrainingJob"
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
