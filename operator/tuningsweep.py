"""The TuningSweep reconciler: one Ray Tune run, its trial counts, best trial and promotion.

The sweep's runner (`python -m mlplane.training tune`) writes to the MLflow parent run the operator
creates: metrics `trials_completed|running|failed|pruned` and `best_<objective>`, tags
`mlplane.trials_planned`, `mlplane.best_trial` (JSON: number, params, metrics, runId), and at the
end the same `mlplane.gates` / `mlplane.model_*` / `mlplane.error` tags a TrainingJob's runner does.
"""

from __future__ import annotations

import json

from mlplane.crds.base import Progress
from mlplane.crds.trainingjob import ResourceRequest, TrainingJobSpec
from mlplane.crds.tuningsweep import BestTrial, TrialCounts, TuningSweep, TuningSweepStatus
from mlplane.operator.lifecycle import RunReconciler, Step, gates_checked, resource_problems
from mlplane.operator.status import Event
from mlplane.operator.tracking import RunSnapshot
from mlplane.operator.trainingjob import eta_seconds
from mlplane.training.tags import (
    BEST_TRIAL_TAG,
    ERROR_TAG,
    GATES_TAG,
    TRIALS_PLANNED_TAG,
)

# An interrupted sweep (Ray restarted, the job vanished) resumes from Tune's saved state this
# many times; a sweep that failed on its own terms (too many failed trials) is not retried.
INTERRUPTION_RETRIES = 2
TRIAL_STATES = ("completed", "running", "failed", "pruned")


class TuningSweepReconciler(RunReconciler[TuningSweepStatus]):
    kind = "TuningSweep"
    runner_command = "tune"
    spec_path = "spec.template"

    def new_status(self) -> TuningSweepStatus:
        return TuningSweepStatus()

    def problems(self, sweep: TuningSweep) -> list[str]:
        return resource_problems(
            sweep.spec.template.resources, self.config, f"{self.spec_path}.resources"
        )

    def gpus(self, sweep: TuningSweep) -> tuple[str, int]:
        template = sweep.spec.template.resources
        return template.node_pool or "default", template.gpus * sweep.spec.trials.parallel

    def training_spec(self, sweep: TuningSweep) -> TrainingJobSpec:
        return sweep.spec.template

    def launch_resources(self, sweep: TuningSweep) -> ResourceRequest:
        template = sweep.spec.template.resources
        return template.model_copy(
            update={"workers": template.workers * sweep.spec.trials.parallel}
        )

    def experiment(self, sweep: TuningSweep) -> str:
        return sweep.spec.template.tracking.experiment or (
            f"{sweep.metadata.namespace}/{sweep.metadata.name}"
        )

    def retries(self, sweep: TuningSweep) -> int:
        return INTERRUPTION_RETRIES

    def retryable(self, run: RunSnapshot | None) -> bool:
        return not (run and run.tags.get(ERROR_TAG))

    def mirror(self, status: TuningSweepStatus, run: RunSnapshot) -> None:
        counts = {state: int(run.metrics.get(f"trials_{state}", 0)) for state in TRIAL_STATES}
        status.trials = TrialCounts(**counts)
        status.metrics = {k: round(v, 6) for k, v in sorted(run.metrics.items())}
        best = run.tags.get(BEST_TRIAL_TAG)
        if best:
            status.best_trial = BestTrial.model_validate(json.loads(best))
        best_metric = next((k for k in sorted(run.metrics) if k.startswith("best_")), None)
        if best_metric:
            status.key_metric = (
                f"{best_metric.removeprefix('best_')}={run.metrics[best_metric]:.4f}"
            )
        planned = int(run.tags.get(TRIALS_PLANNED_TAG, "0") or 0)
        finished = counts["completed"] + counts["failed"] + counts["pruned"]
        if planned:
            eta = eta_seconds(status, finished, planned)
            status.progress = Progress(epoch=finished, of=planned, eta_seconds=eta)

    def succeed(
        self, step: Step[TuningSweepStatus], sweep: TuningSweep, run: RunSnapshot | None
    ) -> str:
        status = step.status
        gates = run.tags.get(GATES_TAG, "none") if run else "none"
        promotion = sweep.spec.promote_best
        if promotion and not gates_checked(step, gates, "the best trial passed", sweep):
            step.events.append(Event("Warning", "GateFailed", f"best trial not promoted: {gates}"))
        if run and (model := run.registered_model(promotion.alias if promotion else None)):
            status.model = model
        trials = status.trials or TrialCounts()
        parts = [
            f"{trials.completed} completed, {trials.pruned} pruned, {trials.failed} failed",
            f"best {status.key_metric}" if status.key_metric else "no best trial",
        ]
        if status.model and status.model.uri:
            parts.append(f"promoted {status.model.uri}")
        return "; ".join(parts)
