"""The TrainingJob reconciler: one step of validate → admit → launch → observe → finish.

It knows nothing of kopf: it takes the resource as it is and returns the status it should have,
plus the Events to emit. The kopf handlers and `mlplane run` both drive it, so the operator and
the local runner show the same status. Every step is safe to repeat: the submission id is derived
from the UID and attempt, so an operator restarted at any point never submits twice.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlplane.crds.base import MlflowRef, Progress, RayRef, RegisteredModel
from mlplane.crds.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus
from mlplane.operator.admission import Admission, Work
from mlplane.operator.backends.base import JobState, Launch, Owner, TrainingBackend
from mlplane.operator.config import OperatorConfig
from mlplane.operator.status import TERMINAL_PHASES, Event, now, set_condition
from mlplane.operator.tracking import MetricsFeed, RunSnapshot, Tracking

# The test metric shown by `kubectl get tj`, first one present wins.
KEY_METRICS = ("test_roc_auc", "test_accuracy", "test_r2", "test_rmse")


@dataclass
class Step:
    """The outcome of one reconcile step."""

    status: TrainingJobStatus
    events: list[Event] = field(default_factory=list)

    def phase(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        if self.status.phase != phase:
            self.events.append(Event("Warning" if warning else "Normal", reason, message))
        self.status.phase = phase  # type: ignore[assignment]


def submission_id(uid: str, attempt: int) -> str:
    """One Ray submission per attempt, named so that a restarted operator finds it again."""
    return f"mlplane-{uid}-{attempt}"


def experiment_name(job: TrainingJob) -> str:
    return job.spec.tracking.experiment or f"{job.metadata.namespace}/{job.metadata.name}"


def spec_problems(spec: TrainingJobSpec, config: OperatorConfig) -> list[str]:
    """What the schema cannot know: does the named pool exist, can the cluster give GPUs."""
    problems = []
    pool_name = spec.resources.node_pool
    pool = config.pool(pool_name) if pool_name else None
    if pool_name and config.node_pools and pool is None:
        known = ", ".join(p.name for p in config.node_pools)
        problems.append(f"spec.resources.nodePool: no node pool {pool_name!r}; known: {known}")
    if spec.resources.per_worker.gpu:
        gpu_pools = [p for p in config.node_pools if p.gpus_per_node]
        if not gpu_pools:
            problems.append(
                "spec.resources.perWorker.gpu: GPUs requested but this operator has no GPU node "
                "pool configured"
            )
        elif pool and spec.resources.per_worker.gpu > pool.gpus_per_node:
            problems.append(
                f"spec.resources.perWorker.gpu: {spec.resources.per_worker.gpu} GPUs per worker, "
                f"but nodes in pool {pool.name!r} have {pool.gpus_per_node}"
            )
    return problems


def _b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


class TrainingJobReconciler:
    """Drives one TrainingJob one step at a time through its backend, MLflow and admission."""

    def __init__(
        self,
        config: OperatorConfig,
        backend: TrainingBackend,
        tracking: Tracking,
        feed: MetricsFeed,
        admission: Admission,
    ) -> None:
        self.config = config
        self.backend = backend
        self.tracking = tracking
        self.feed = feed
        self.admission = admission

    def reconcile(self, job: TrainingJob) -> Step:
        step = Step((job.status or TrainingJobStatus()).model_copy(deep=True))
        step.status.observed_generation = job.metadata.generation
        if step.status.phase in TERMINAL_PHASES:
            return step
        if step.status.phase is None:
            problems = spec_problems(job.spec, self.config)
            if problems:
                self._fail(step, job, "InvalidSpec", "; ".join(problems))
                return step
            step.phase("Pending", "Pending", "validated; waiting for admission")
        if step.status.phase in ("Pending", "Queued"):
            self._admit_and_launch(step, job)
        if step.status.phase in ("Starting", "Running"):
            self._observe(step, job)
        return step

    # -- admission and launch ------------------------------------------------------------------

    def _work(self, job: TrainingJob) -> Work:
        return Work(
            uid=job.metadata.uid or "",
            namespace=job.metadata.namespace or "",
            name=job.metadata.name,
            pool=job.spec.resources.node_pool or "default",
            gpus=job.spec.resources.gpus,
            priority=job.spec.priority,
            created=job.metadata.creation_timestamp or "",
        )

    def _admit_and_launch(self, step: Step, job: TrainingJob) -> None:
        status = step.status
        decision = self.admission.admit(self._work(job))
        status.queue = decision.queue
        generation = job.metadata.generation
        if not decision.admitted:
            status.conditions = set_condition(
                status.conditions, "Admitted", "False", "Queued", decision.message, generation
            )
            step.phase("Queued", "Queued", decision.message)
            return
        status.conditions = set_condition(
            status.conditions, "Admitted", "True", "Admitted", decision.message, generation
        )
        status.mlflow = self.tracking.ensure_run(
            experiment_name(job),
            uid=job.metadata.uid or "",
            run_name=job.metadata.name,
            tags={
                "mlplane.kind": "TrainingJob",
                "mlplane.namespace": job.metadata.namespace or "",
                "mlplane.name": job.metadata.name,
            },
        )
        status.attempts = max(status.attempts, 1)
        status.start_time = status.start_time or now()
        self._launch(step, job)

    def _launch(self, step: Step, job: TrainingJob) -> None:
        status = step.status
        sid = submission_id(job.metadata.uid or "", status.attempts)
        self.backend.submit(self.launch_for(job, status.attempts, status.mlflow))
        status.ray = RayRef(
            backend=self.backend.name,
            submission_id=sid,
            dashboard_url=self.backend.dashboard_url(sid),
        )
        step.phase("Starting", "Launched", f"attempt {status.attempts} submitted as {sid}")

    def launch_for(self, job: TrainingJob, attempt: int, mlflow: MlflowRef | None) -> Launch:
        """The runner's command line and Ray runtime_env for one attempt."""
        uid = job.metadata.uid or ""
        context = {
            "namespace": job.metadata.namespace,
            "name": job.metadata.name,
            "uid": uid,
            "attempt": attempt,
            "mlflowTrackingUri": self.tracking.tracking_uri,
            "storagePath": str(self.config.data_dir / "checkpoints"),
            "experiment": experiment_name(job),
        }
        entrypoint = (
            "python -m mlplane.training train "
            f"--spec-json {_b64(job.spec.to_dict())} --context-json {_b64(context)}"
        )
        return Launch(
            submission_id=submission_id(uid, attempt),
            entrypoint=entrypoint,
            owner=Owner(
                api_version=job.api_version,
                kind=job.kind,
                name=job.metadata.name,
                namespace=job.metadata.namespace or "",
                uid=uid,
            ),
            attempt=attempt,
            resources=job.spec.resources,
            runtime_env=runtime_env(job.spec),
            metadata={"mlplane.uid": uid, "mlplane.name": job.metadata.name},
            active_deadline_seconds=job.spec.active_deadline_seconds,
            queue_name=job.spec.queue_name,
        )

    # -- observation ---------------------------------------------------------------------------

    def _observe(self, step: Step, job: TrainingJob) -> None:
        status = step.status
        assert status.ray and status.ray.submission_id
        state = self.backend.state(status.ray.submission_id)
        snapshot = self.feed.get(status.mlflow) if status.mlflow and status.mlflow.run_id else None
        if snapshot:
            self._mirror(status, snapshot)
        self._account_gpus(status, job)
        deadline = job.spec.active_deadline_seconds
        if (
            deadline
            and status.start_time
            and (now() - status.start_time).total_seconds() > deadline
        ):
            self.backend.stop(status.ray.submission_id)
            self._fail(step, job, "DeadlineExceeded", f"ran longer than {deadline}s")
        elif state.status == "RUNNING":
            status.conditions = set_condition(
                status.conditions, "Running", "True", "Running", f"attempt {status.attempts}"
            )
            step.phase("Running", "Running", f"attempt {status.attempts} is running on Ray")
        elif state.status == "SUCCEEDED":
            # Training wrote its last metrics and tags before exiting; read them once more.
            final = self.tracking.snapshots([status.mlflow]).get(status.mlflow.run_id or "")  # type: ignore[list-item]
            if final:
                self._mirror(status, final)
            self._succeed(step, job, final)
        elif state.status in ("FAILED", "STOPPED", "MISSING"):
            self._attempt_failed(step, job, state, snapshot)

    def _mirror(self, status: TrainingJobStatus, run: RunSnapshot) -> None:
        status.metrics = {k: round(v, 6) for k, v in sorted(run.metrics.items())}
        key = next((k for k in KEY_METRICS if k in run.metrics), None)
        if key:
            status.key_metric = f"{key}={run.metrics[key]:.4f}"
        planned = int(run.tags.get("mlplane.epochs_planned", "0") or 0)
        done = int(run.metrics.get("epoch", 0))
        if planned or done:
            status.progress = Progress(
                epoch=done, of=planned, eta_seconds=_eta(status, done, planned)
            )

    def _account_gpus(self, status: TrainingJobStatus, job: TrainingJob) -> None:
        if status.start_time:
            end = status.completion_time or now()
            status.gpu_seconds = job.spec.resources.gpus * (end - status.start_time).total_seconds()

    def _succeed(self, step: Step, job: TrainingJob, run: RunSnapshot | None) -> None:
        status = step.status
        tags = run.tags if run else {}
        gates = tags.get("mlplane.gates", "none")
        generation = job.metadata.generation
        if gates.startswith("failed"):
            status.conditions = set_condition(
                status.conditions, "GatesPassed", "False", "GateFailed", gates, generation
            )
            step.events.append(Event("Warning", "GateFailed", f"model not registered: {gates}"))
        else:
            status.conditions = set_condition(
                status.conditions,
                "GatesPassed",
                "True",
                "GatesPassed" if gates == "passed" else "NoGates",
                "every gate held on the test split" if gates == "passed" else "no gates set",
                generation,
            )
        if tags.get("mlplane.model_version"):
            status.model = RegisteredModel(
                name=tags.get("mlplane.model_name"),
                version=tags.get("mlplane.model_version"),
                alias=job.spec.tracking.alias,
                uri=tags.get("mlplane.model_uri"),
            )
        status.completion_time = now()
        self._account_gpus(status, job)
        status.conditions = set_condition(status.conditions, "Running", "False", "Finished")
        status.conditions = set_condition(
            status.conditions, "Complete", "True", "Succeeded", _summary(status), generation
        )
        step.phase("Succeeded", "Succeeded", _summary(status))
        self.admission.release(job.metadata.uid or "")
        self.feed.forget(status.mlflow.run_id if status.mlflow else "")

    def _attempt_failed(
        self, step: Step, job: TrainingJob, state: JobState, run: RunSnapshot | None
    ) -> None:
        status = step.status
        assert status.ray and status.ray.submission_id
        error = (run.tags.get("mlplane.error") if run else None) or _last_error_line(
            self.backend.logs_tail(status.ray.submission_id)
        )
        reason = error or state.message or f"Ray job {state.status.lower()}"
        if state.reason == "DeadlineExceeded":
            self._fail(step, job, "DeadlineExceeded", reason)
            return
        if status.attempts <= job.spec.retries:
            step.events.append(
                Event("Warning", "Retrying", f"attempt {status.attempts} failed: {reason}")
            )
            status.attempts += 1
            self._launch(step, job)
            return
        logs = self.backend.logs_tail(status.ray.submission_id, lines=10)
        message = f"attempt {status.attempts} of {job.spec.retries + 1} failed: {reason}"
        if logs:
            message += f"\nlast log lines:\n{logs}"
        self._fail(step, job, "TrainingFailed", message)

    def _fail(self, step: Step, job: TrainingJob, reason: str, message: str) -> None:
        status = step.status
        generation = job.metadata.generation
        status.completion_time = now()
        self._account_gpus(status, job)
        if any(c.type == "Running" for c in status.conditions):
            status.conditions = set_condition(status.conditions, "Running", "False", reason)
        status.conditions = set_condition(
            status.conditions, "Failed", "True", reason, message, generation
        )
        step.phase("Failed", reason, message.splitlines()[0], warning=True)
        self.admission.release(job.metadata.uid or "")
        if status.mlflow and status.mlflow.run_id:
            self.feed.forget(status.mlflow.run_id)

    # -- deletion ------------------------------------------------------------------------------

    def delete(self, job: TrainingJob) -> None:
        """Stop the running attempt and give back its quota; safe to call twice."""
        status = job.status or TrainingJobStatus()
        if status.phase not in TERMINAL_PHASES and status.ray and status.ray.submission_id:
            self.backend.stop(status.ray.submission_id)
        self.admission.release(job.metadata.uid or "")
        if status.mlflow and status.mlflow.run_id:
            self.feed.forget(status.mlflow.run_id)


def runtime_env(spec: TrainingJobSpec) -> dict[str, object]:
    """The spec's runtimeEnv in Ray's terms; a relative workingDir is taken from the current dir."""
    env: dict[str, object] = {
        # Ray Train V2 otherwise waits ~2 s per report for its health check.
        "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    }
    user = spec.runtime_env
    if user is None:
        return env
    env["env_vars"] = {**env["env_vars"], **user.env_vars}  # type: ignore[dict-item]
    if user.pip:
        env["pip"] = list(user.pip)
    if user.working_dir:
        env["working_dir"] = _local_or_remote(user.working_dir)
    if user.py_modules:
        env["py_modules"] = [_local_or_remote(m) for m in user.py_modules]
    return env


def _local_or_remote(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def _eta(status: TrainingJobStatus, done: int, planned: int) -> int | None:
    if not (status.start_time and done and planned > done):
        return None
    elapsed = (now() - status.start_time).total_seconds()
    return round(elapsed / done * (planned - done))


def _summary(status: TrainingJobStatus) -> str:
    parts = [status.key_metric or "finished"]
    if status.model and status.model.uri:
        parts.append(f"registered {status.model.uri}")
    return "; ".join(parts)


def _last_error_line(logs: str) -> str:
    """The `ExcType: message` line a failed runner ends its stderr with."""
    for line in reversed(logs.splitlines()):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").isidentifier() and head[0].isupper():
            return line.strip()
    return ""
