"""TuningSweep: one Ray Tune run (Optuna search, ASHA pruning) over a TrainingJob template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from mlplane.crds.base import (
    API_VERSION,
    NAME_PATTERN,
    ApiModel,
    ObjectMeta,
    RunStatus,
    Scalar,
    cel,
    immutable,
    validations,
)
from mlplane.crds.trainingjob import (
    ALIAS_PATTERN,
    MAX_DEADLINE_SECONDS,
    MODEL_NAME_PATTERN,
    TrainingJobSpec,
)

# Far beyond any hyperparameter, well inside what float arithmetic on samples keeps exact enough.
MAX_BOUND = 1e12
PARAM_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class Range(ApiModel):
    """A closed interval of numbers."""

    low: float = Field(ge=-MAX_BOUND, le=MAX_BOUND)
    """Lower bound, within ±1e12."""
    high: float = Field(ge=-MAX_BOUND, le=MAX_BOUND)
    """Upper bound, within ±1e12; must be above low."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(cel("self.low < self.high", "low must be below high"))
    }

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


class LogRange(Range):
    """An interval sampled on a log scale: both bounds above zero."""

    model_config = Range.model_config | {
        "json_schema_extra": validations(
            cel("self.low < self.high", "low must be below high"),
            cel("self.low > 0.0", "loguniform needs low > 0", ".low"),
        )
    }

    @model_validator(mode="after")
    def _positive(self) -> LogRange:
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low:g}")
        return self


class Dimension(ApiModel):
    """One hyperparameter's distribution: exactly one of uniform, loguniform, randint, choice."""

    uniform: Range | None = None
    """Real numbers, uniform between low and high."""
    loguniform: LogRange | None = None
    """Real numbers, uniform in log space (learning rates)."""
    randint: Range | None = None
    """Integers from low to high (high excluded, as in Ray Tune)."""
    choice: list[Scalar] | None = Field(default=None, min_length=1, max_length=256)
    """One of these values."""

    # Exactly one property, checked by the schema itself: CEL cannot see the untyped choice list.
    model_config = ApiModel.model_config | {
        "json_schema_extra": {"minProperties": 1, "maxProperties": 1}
    }

    @model_validator(mode="after")
    def _exactly_one(self) -> Dimension:
        kinds = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("set exactly one of uniform, loguniform, randint, choice")
        if self.randint and not (self.randint.low.is_integer() and self.randint.high.is_integer()):
            raise ValueError("randint needs whole-number bounds")
        return self

    @property
    def discrete(self) -> bool:
        """Whether the values can be listed (what a grid search needs)."""
        return self.choice is not None or self.randint is not None

    def examples(self) -> list[Any]:
        """Values this dimension can produce, to check up front that the template takes them:
        every choice, else the low bound and a midpoint (fractional for real ranges)."""
        if self.choice is not None:
            return list(self.choice)
        if self.randint:
            return [int(self.randint.low), int(self.randint.high) - 1]
        bounds = self.uniform or self.loguniform
        assert bounds
        return [bounds.low, (bounds.low + bounds.high) / 2]


class Objective(ApiModel):
    """The metric a trial is judged by."""

    metric: str = Field(min_length=1, max_length=128)
    """A reported metric, e.g. val_auc."""
    mode: Literal["min", "max"]
    """Whether lower (min) or higher (max) is better."""


class TrialEarlyStopping(ApiModel):
    """Prune trials that fall behind (Ray Tune's ASHA scheduler)."""

    algorithm: Literal["asha", "none"] = "asha"
    """asha, or none to run every trial to the end."""
    grace_period: int = Field(default=5, ge=1, le=100000)
    """Epochs every trial gets before it can be pruned."""
    reduction_factor: int = Field(default=3, ge=2, le=10)
    """Only 1/reductionFactor of trials go on at each rung."""


class Trials(ApiModel):
    """How many trials, how many at once, how many may fail."""

    max: int = Field(default=10, ge=1, le=10000)
    """Trials in total."""
    parallel: int = Field(default=1, ge=1, le=256)
    """Trials running at once."""
    max_failures: int = Field(default=0, ge=0, le=10000)
    """Failed trials tolerated before the sweep fails."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel("self.parallel <= self.max", "parallel must not exceed max", ".parallel")
        )
    }

    @model_validator(mode="after")
    def _parallel_within_max(self) -> Trials:
        if self.parallel > self.max:
            raise ValueError(f"parallel ({self.parallel}) must not exceed max ({self.max})")
        return self


class Promotion(ApiModel):
    """Register the best trial's model (only if the template's gates pass on it)."""

    register_as: str = Field(pattern=MODEL_NAME_PATTERN, max_length=256)
    """Registered model name."""
    alias: str | None = Field(default=None, pattern=ALIAS_PATTERN, max_length=128)
    """Alias to point at the promoted version, e.g. champion."""


class TuningSweepSpec(ApiModel):
    """The search: a TrainingJob template, the space to sample, and how to judge trials."""

    template: TrainingJobSpec
    """The TrainingJob spec every trial runs, with sampled values filled in."""
    search_space: dict[str, Dimension] = Field(
        min_length=1,
        max_length=64,
        json_schema_extra=validations(
            cel(
                f"self.all(k, k.matches(r'{PARAM_PATTERN}'))",
                "keys are hyperparameter names, or dotted paths such as model.params.dropout",
            )
        ),
    )
    """Hyperparameter name (or dotted path, e.g. model.params.dropout) to distribution."""
    objective: Objective
    """The metric to optimise."""
    algorithm: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    """Optuna sampler: tpe, random, grid or cmaes."""
    early_stopping: TrialEarlyStopping = Field(default_factory=TrialEarlyStopping)
    """Trial pruning."""
    trials: Trials = Field(default_factory=Trials)
    """Trial budget and parallelism."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_DEADLINE_SECONDS)
    """Fail the sweep when it runs longer than this."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Higher is admitted first when GPUs are short."""
    queue_name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    """A Kueue LocalQueue: Kueue admits the work instead of mlplane's own quota."""
    promote_best: Promotion | None = None
    """Register the best trial's model."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            *immutable("template", "searchSpace", "objective", "algorithm", "earlyStopping")
        )
    }

    @field_validator("search_space")
    @classmethod
    def _fits_the_template(
        cls, space: dict[str, Dimension], info: ValidationInfo
    ) -> dict[str, Dimension]:
        template = info.data.get("template")
        if template is None:  # the template itself is invalid; that error is reported instead
            return space
        for key, dimension in space.items():
            for value in dimension.examples():
                try:
                    trial_spec(template, {key: value})
                except ValueError as error:
                    message = f"{key}: the template cannot take {value!r}: {error}"
                    raise ValueError(message) from None
        return space

    @model_validator(mode="after")
    def _trials_can_run(self) -> TuningSweepSpec:
        # A trial runs the built-in loop in-process in its Tune trial (see mlplane.training.tuning).
        if self.template.model.entrypoint:
            raise ValueError(
                "template.model.entrypoint: sweeps run the built-in xgboost and torch models; "
                "custom training code is not supported in a TuningSweep yet"
            )
        if self.template.resources.workers > 1:
            raise ValueError(
                "template.resources.workers: each trial trains on one worker; "
                "use trials.parallel to run more trials at once"
            )
        if self.algorithm == "grid":
            for key, dimension in self.search_space.items():
                if not dimension.discrete:
                    raise ValueError(f"searchSpace.{key}: algorithm grid needs choice or randint")
        return self


def trial_spec(template: TrainingJobSpec, sampled: Mapping[str, Any]) -> TrainingJobSpec:
    """The TrainingJob spec one trial runs: the template with the sampled values filled in.

    A plain name (`eta`) is a hyperparameter; a dotted path (`model.params.dropout`,
    `earlyStopping.patience`) is a field of the template as written in YAML. The result is
    validated like any TrainingJob, so a value the template cannot take fails with its path.
    """
    wire = template.to_dict()
    for key, value in sampled.items():
        path = key.split(".") if "." in key else ["hyperparameters", key]
        node = wire
        for depth, part in enumerate(path[:-1], start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{'.'.join(path[:depth])} is not a mapping")
        node[path[-1]] = value
    try:
        return TrainingJobSpec.model_validate(wire)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{field}: {message}") from None


class BestTrial(ApiModel):
    """The best trial so far."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    number: int = 0
    """Trial number (0-based, in order of start)."""
    params: dict[str, Scalar] = Field(default_factory=dict)
    """The sampled values."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Its metrics."""
    run_id: str | None = None
    """Its MLflow run (a child of the sweep's run)."""


class TrialCounts(ApiModel):
    """Trials by state."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    completed: int = 0
    """Ran to the end."""
    running: int = 0
    """Running now."""
    failed: int = 0
    """Raised an error."""
    pruned: int = 0
    """Stopped early by ASHA."""


class TuningSweepStatus(RunStatus):
    """Trial counts, the best trial, and the sweep's MLflow parent run."""

    trials: TrialCounts | None = None
    """Trials by state."""
    best_trial: BestTrial | None = None
    """The best trial so far."""


class TuningSweep(ApiModel):
    """A TuningSweep resource as it is applied."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["mlplane.dev/v1alpha1"] = API_VERSION
    kind: Literal["TuningSweep"] = "TuningSweep"
    metadata: ObjectMeta
    spec: TuningSweepSpec
    status: TuningSweepStatus | None = None
