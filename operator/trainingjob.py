"""The TrainingJob reconciler: one Ray Train run, its metrics, its gates and its model version."""

from __future__ import annotations

from mlplane.crds.base import Progress, RunStatus
from mlplane.crds.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus
from mlplane.operator.lifecycle import RunReconciler, Step, gates_checked, resource_problems
from mlplane.operator.status import Event, now
from mlplane.operator.tracking import RunSnapshot
from mlplane.training.tags import (
    EPOCHS_PLANNED_TAG,
    GATES_TAG,
)

# The test metric shown by `kubectl get tj`: the first one present wins.
KEY_METRICS = ("test_roc_auc", "test_accuracy", "test_r2", "test_rmse")


def experiment_name(job: TrainingJob) -> str:
    return job.spec.tracking.experiment or f"{job.metadata.namespace}/{job.metadata.name}"


def key_metric(metrics: dict[str, float]) -> str | None:
    key = next((k for k in KEY_METRICS if k in metrics), None)
    return f"{key}={metrics[key]:.4f}" if key else None


def eta_seconds(status: RunStatus, done: int, planned: int) -> int | None:
    """Seconds left, if the rest goes as fast as what is done so far: estimated when `done`
    moves and kept until it moves again, so that time passing alone writes no status."""
    if not (status.start_time and done and planned > done):
        return None
    known = status.progress
    if known and (known.epoch, known.of) == (done, planned) and known.eta_seconds is not None:
        return known.eta_seconds
    elapsed = (now() - status.start_time).total_seconds()
    return round(elapsed / done * (planned - done))


class TrainingJobReconciler(RunReconciler[TrainingJobStatus]):
    kind = "TrainingJob"
    runner_command = "train"

    def new_status(self) -> TrainingJobStatus:
        return TrainingJobStatus()

    def problems(self, job: TrainingJob) -> list[str]:
        return resource_problems(job.spec.resources, self.config, "spec.resources")

    def gpus(self, job: TrainingJob) -> tuple[str, int]:
        return job.spec.resources.node_pool or "default", job.spec.resources.gpus

    def training_spec(self, job: TrainingJob) -> TrainingJobSpec:
        return job.spec

    def experiment(self, job: TrainingJob) -> str:
        return experiment_name(job)

    def retries(self, job: TrainingJob) -> int:
        return job.spec.retries

    def mirror(self, status: TrainingJobStatus, run: RunSnapshot) -> None:
        status.metrics = {k: round(v, 6) for k, v in sorted(run.metrics.items())}
        status.key_metric = key_metric(run.metrics) or status.key_metric
        planned = int(run.tags.get(EPOCHS_PLANNED_TAG, "0") or 0)
        done = int(run.metrics.get("epoch", 0))
        if planned or done:
            status.progress = Progress(
                epoch=done, of=planned, eta_seconds=eta_seconds(status, done, planned)
            )

    def succeed(
        self, step: Step[TrainingJobStatus], job: TrainingJob, run: RunSnapshot | None
    ) -> str:
        status = step.status
        gates = run.tags.get(GATES_TAG, "none") if run else "none"
        if not gates_checked(step, gates, "every gate held on the test split", job):
            step.events.append(Event("Warning", "GateFailed", f"model not registered: {gates}"))
        if run and (model := run.registered_model(job.spec.tracking.alias)):
            status.model = model
        parts = [status.key_metric or "finished"]
        if status.model and status.model.uri:
            parts.append(f"registered {status.model.uri}")
        return "; ".join(parts)
