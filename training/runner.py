"""One attempt of a TrainingJob, as the Ray job's driver: data → Ray Train → evaluation → MLflow.

The operator (or `mlplane run`) submits `python -m mlplane.training train …` through the Ray Jobs
API once per attempt. This module does the work in order: open the job's MLflow run, load and
split the data, fit the preprocessing, run Ray Train (resuming from the latest checkpoint under
`storagePath/<uid>`), evaluate the chosen checkpoint on the test split, check the gates, log the
model and register it when they pass. Every outcome ends up as tags on the run, which is all the
operator reads: training code never talks to Kubernetes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import mlflow
import ray
from mlflow import MlflowClient
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    ControllerError,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
    WorkerGroupError,
)

from mlplane.crds.base import ApiModel, Resources, quantity_value
from mlplane.crds.trainingjob import ResourceRequest, TrainingJobSpec
from mlplane.training.checkpoints import load_checkpoint_model
from mlplane.training.datasets import (
    Splits,
    content_hash,
    feature_columns,
    load_table,
    resolve_task,
    split_table,
)
from mlplane.training.epoch_logging import EpochLogger
from mlplane.training.evaluation import evaluate_gates, held_out_metrics, overfit_gap
from mlplane.training.packaging import TabularModel, log_model
from mlplane.training.preprocessing import Prepared, prepare
from mlplane.training.tags import (
    ATTEMPT_TAG,
    DATASET_HASH_TAG,
    DATASET_URI_TAG,
    EPOCHS_PLANNED_TAG,
    ERROR_TAG,
    GATES_TAG,
    KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_URI_TAG,
    MODEL_VERSION_TAG,
    NAME_TAG,
    NAMESPACE_TAG,
    RUN_UID_TAG,
    SPEC_HASH_TAG,
    VERSION_TAG,
)
from mlplane.training.tracking import open_run, params_of
from mlplane.training.worker import BUILT_IN_LOOPS, PreparedData, planned_epochs, resolve, run_loop


@dataclass(frozen=True)
class RunContext:
    """Who this attempt is and where it writes: the runner's `--context`."""

    namespace: str
    name: str
    uid: str
    attempt: int
    mlflow_tracking_uri: str
    storage_path: str
    """Ray Train storage; checkpoints live in `<storage_path>/<uid>` across attempts."""
    experiment: str

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunContext:
        return cls(
            namespace=data.get("namespace") or "",
            name=data["name"],
            uid=data["uid"],
            attempt=int(data.get("attempt", 1)),
            mlflow_tracking_uri=data["mlflowTrackingUri"],
            storage_path=data["storagePath"],
            experiment=data["experiment"],
        )


class Stopped(Exception):
    """The job was stopped (SIGTERM from `ray job stop`, e.g. the TrainingJob was deleted)."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


def run_attempt(context: RunContext, work: Callable[[MlflowClient, str], None]) -> None:
    """Run one attempt of a TrainingJob or TuningSweep as the active MLflow run's `work`.

    The run ends FINISHED, or FAILED/KILLED with `mlplane.error`, which the operator reads.
    """
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    mlflow.set_tracking_uri(context.mlflow_tracking_uri)
    client = MlflowClient()
    run_id = open_run(client, context.experiment, context.uid, context.name)
    try:
        work(client, run_id)
    except BaseException as error:
        mlflow.set_tag(ERROR_TAG, error_line(error))
        mlflow.end_run("KILLED" if isinstance(error, Stopped | KeyboardInterrupt) else "FAILED")
        raise
    finally:
        ray.shutdown()  # before the caller's last stderr line, so Ray's exit logs come first
    mlflow.end_run("FINISHED")


def train(spec: TrainingJobSpec, context: RunContext) -> None:
    """Run one attempt of a TrainingJob."""
    run_attempt(context, lambda client, run_id: _train(spec, context, client, run_id))


@dataclass(frozen=True)
class TrainingData:
    """The job's rows, split and preprocessed: the same for every attempt (and every trial)."""

    splits: Splits
    prepared: Prepared
    features: list[str]
    dataset_hash: str


def load_training_data(spec: TrainingJobSpec) -> TrainingData:
    """Load, split and preprocess the dataset in the driver, before any worker starts."""
    table = load_table(spec.dataset.uri)
    label = spec.dataset.label
    features = feature_columns(table, spec.dataset)
    task = resolve_task(table[label], spec.model.task)
    splits = split_table(table, label, spec.dataset.split, task)
    prepared = prepare(splits, features, label, task)
    return TrainingData(splits, prepared, features, content_hash(table))


def _train(spec: TrainingJobSpec, context: RunContext, client: MlflowClient, run_id: str) -> None:
    mlflow.set_tags(
        lineage_tags("TrainingJob", spec_hash(spec), context, spec)
        | {EPOCHS_PLANNED_TAG: str(planned_epochs(spec.framework, spec.hyperparameters))}
    )
    resolve(entrypoint(spec))  # a bad entrypoint fails here, before any worker starts
    data = load_training_data(spec)
    mlflow.set_tag(DATASET_HASH_TAG, data.dataset_hash)
    mlflow.log_params(training_params(spec, data.prepared.data.task))

    ray.init()
    result = _fit(spec, context, data.prepared, run_id)
    evaluate_and_publish(spec, result, data, client)


def entrypoint(spec: TrainingJobSpec) -> str:
    """The training loop, `package.module:function`: the user's, or the framework's built-in."""
    return spec.model.entrypoint or BUILT_IN_LOOPS[spec.framework]


def loop_config(spec: TrainingJobSpec, data: object, attempt: int) -> dict[str, Any]:
    """The config every training loop receives (see `mlplane.training.worker`)."""
    early = spec.early_stopping
    return {
        "entrypoint": entrypoint(spec),
        "data": data,
        "hyperparameters": spec.hyperparameters,
        "model_params": spec.model.params,
        "early_stopping": early.model_dump() if early else None,
        "checkpoint_every": spec.checkpoint.every,
        "attempt": attempt,
    }


def evaluate_and_publish(
    spec: TrainingJobSpec, result: Result, data: TrainingData, client: MlflowClient
) -> None:
    """Test metrics of the chosen checkpoint, the gates, the logged model and its registration,
    all on the active run. A run that already registered a version (an attempt that died after
    registering) is not registered again."""
    prepared, splits = data.prepared, data.splits
    task = prepared.data.task
    checkpoint, epoch_metrics = _chosen_checkpoint(result, spec)
    with checkpoint.as_directory() as directory:
        trained = load_checkpoint_model(spec.framework, Path(directory))
    model = TabularModel(
        spec.framework, trained, prepared.preprocessor, data.features, task, prepared.classes
    )

    metrics = (
        held_out_metrics(task, prepared.y_test, model.scores(splits.test))
        if len(splits.test)
        else {}
    )
    gap = overfit_gap(epoch_metrics, _primary_metric(spec, prepared.data))
    if gap is not None:
        metrics["overfit_gap"] = gap
    mlflow.log_metrics(metrics, step=int(epoch_metrics.get("epoch", 0)))
    gates = evaluate_gates(spec.gates, metrics)
    mlflow.set_tag(GATES_TAG, gates)

    active = mlflow.active_run()
    if active and MODEL_VERSION_TAG in client.get_run(active.info.run_id).data.tags:
        return
    info = log_model(model, splits.train, _code_paths(spec.model.entrypoint))
    name = spec.tracking.register_as
    if name and not gates.startswith("failed"):
        version = mlflow.register_model(info.model_uri, name).version
        if spec.tracking.alias:
            client.set_registered_model_alias(name, spec.tracking.alias, version)
        mlflow.set_tags(
            {
                MODEL_NAME_TAG: name,
                MODEL_VERSION_TAG: str(version),
                MODEL_URI_TAG: f"models:/{name}/{version}",
            }
        )


def _fit(spec: TrainingJobSpec, context: RunContext, prepared: Prepared, run_id: str) -> Result:
    """Ray Train, named by UID under storagePath: a retry finds the earlier checkpoints."""
    early = spec.early_stopping
    # The data goes through the object store once, not pickled into every worker's config.
    config = loop_config(spec, ray.put(prepared.data), context.attempt)
    run_config = RunConfig(
        name=context.uid,
        storage_path=context.storage_path,
        checkpoint_config=CheckpointConfig(
            num_to_keep=spec.checkpoint.keep,
            checkpoint_score_attribute=early.metric if early else None,
            checkpoint_score_order=early.mode if early else "max",
        ),
        # Retries are the operator's (spec.retries): each is a new attempt with its own Ray job.
        failure_config=FailureConfig(max_failures=0),
        callbacks=[EpochLogger(context.mlflow_tracking_uri, run_id)],
    )
    if spec.framework == "xgboost":
        from ray.train.xgboost import XGBoostTrainer as Trainer
    else:
        from ray.train.torch import TorchTrainer as Trainer
    trainer = Trainer(
        run_loop,
        train_loop_config=config,
        scaling_config=scaling_config(spec.resources),
        run_config=run_config,
    )
    return trainer.fit()


def worker_resources(per_worker: Resources) -> dict[str, float]:
    """`perWorker` as Ray resources: CPUs, GPUs when asked, memory in bytes."""
    wanted: dict[str, float] = {"CPU": float(quantity_value(per_worker.cpu))}
    if per_worker.gpu:
        wanted["GPU"] = float(per_worker.gpu)
    if per_worker.memory is not None:
        wanted["memory"] = float(quantity_value(per_worker.memory))
    return wanted


def scaling_config(resources: ResourceRequest) -> ScalingConfig:
    """`resources.workers`/`perWorker` in Ray Train's terms."""
    per_worker = resources.per_worker
    return ScalingConfig(
        num_workers=resources.workers,
        use_gpu=per_worker.gpu > 0,
        resources_per_worker=worker_resources(per_worker),
    )


def _chosen_checkpoint(result: Result, spec: TrainingJobSpec) -> tuple[Checkpoint, dict[str, Any]]:
    """The best kept checkpoint by the early-stopping metric, else the latest; with its metrics."""
    early = spec.early_stopping
    checkpoint = (
        result.get_best_checkpoint(early.metric, early.mode) if early else result.checkpoint
    )
    if checkpoint is None:
        raise RuntimeError(
            "training reported no checkpoint; report one holding model.ubj (xgboost) or "
            "model.pt (torch) with ray.train.report(metrics, checkpoint=...)"
        )
    metrics = next(
        (m for c, m in result.best_checkpoints or [] if c.path == checkpoint.path),
        result.metrics or {},
    )
    return checkpoint, metrics


def _primary_metric(spec: TrainingJobSpec, data: PreparedData) -> str:
    """The overfitting gap's metric: the early-stopping one (without `val_`) or the loss."""
    if spec.early_stopping and spec.early_stopping.metric.startswith("val_"):
        return spec.early_stopping.metric.removeprefix("val_")
    if spec.framework == "xgboost":
        from mlplane.training.xgboost_trainer import primary_metric

        return primary_metric(data)
    return "loss"


def spec_hash(spec: ApiModel) -> str:
    """SHA-256 of the spec's canonical JSON wire form."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


def lineage_tags(
    kind: str, spec_sha: str, context: RunContext, training: TrainingJobSpec
) -> dict[str, str]:
    """Who ran what: the resource, the attempt, mlplane's version, the spec and dataset."""
    try:
        version = importlib.metadata.version("mlplane")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        **training.tracking.tags,
        RUN_UID_TAG: context.uid,
        KIND_TAG: kind,
        NAMESPACE_TAG: context.namespace,
        NAME_TAG: context.name,
        ATTEMPT_TAG: str(context.attempt),
        VERSION_TAG: version,
        SPEC_HASH_TAG: spec_sha,
        DATASET_URI_TAG: training.dataset.uri,
    }


def training_params(spec: TrainingJobSpec, task: str) -> dict[str, str]:
    """The MLflow params of a training run: the setup, the model params and hyperparameters."""
    split = spec.dataset.split
    key_fields = {
        "framework": spec.framework,
        "task": task,
        "entrypoint": spec.model.entrypoint or "built-in",
        "dataset_uri": spec.dataset.uri,
        "label": spec.dataset.label,
        "split_strategy": split.strategy,
        "split_validation": split.validation,
        "split_test": split.test,
        "split_seed": split.seed,
        "workers": spec.resources.workers,
        "cpu_per_worker": spec.resources.per_worker.cpu,
        "gpu_per_worker": spec.resources.per_worker.gpu,
        "checkpoint_every": spec.checkpoint.every,
        "checkpoint_keep": spec.checkpoint.keep,
    }
    if spec.early_stopping:
        key_fields |= params_of(spec.early_stopping.model_dump(), prefix="early_stopping_")
    return {
        **params_of(key_fields),
        **params_of(spec.model.params, prefix="model_"),
        **params_of(spec.hyperparameters),
    }


def _code_paths(entrypoint: str | None) -> list[str]:
    """The custom code's top-level module or package, shipped inside the logged model."""
    if not entrypoint:
        return []
    top = importlib.import_module(entrypoint.partition(":")[0].split(".")[0])
    path = Path(top.__file__ or "")
    return [str(path.parent if path.name == "__init__.py" else path)]


def root_cause(error: BaseException) -> BaseException:
    """The exception that actually broke training, unwrapped from Ray Train's, Tune's and Ray's
    wrappers (which may nest: a Tune trial's task error around a Train worker group's)."""
    while True:
        if isinstance(error, WorkerGroupError) and error.worker_failures:
            inner: object = error.worker_failures[min(error.worker_failures)]
        elif isinstance(error, ControllerError):
            inner = error.controller_failure
        else:
            inner = getattr(error, "cause", None)  # ray.exceptions.RayTaskError: the original
        if not isinstance(inner, BaseException) or inner is error:
            return error
        error = inner


def error_line(error: BaseException) -> str:
    """`ExcType: message` (first line of the message), what the operator puts on Failed."""
    root = root_cause(error)
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:1000]
