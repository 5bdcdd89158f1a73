"""The lifecycle TrainingJob and TuningSweep share: validate → admit → launch → observe → finish.

A reconciler knows nothing of kopf: it takes the resource as it is and returns the status it should
have, plus the Events to emit. The kopf handlers and `mlplane run` both drive it, so the operator
and the local runner show the same status. Every step is safe to repeat: the submission id derives
from the UID and attempt, so an operator restarted at any point never submits twice; and an
admission is on the resource before its launch, so the GPU ledger a restarted operator rebuilds
from the statuses counts every attempt that may be running.

Each kind supplies only what differs (`RunReconciler`'s abstract methods): the GPUs it needs, the
runner command, how MLflow maps onto its status, and what success means.
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import json
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from mlplane.crds.base import ConditionStatus, ConditionType, Queue, RayRef, RunStatus
from mlplane.crds.trainingjob import ResourceRequest, TrainingJobSpec
from mlplane.operator.admission import Admission, Decision, Work
from mlplane.operator.backends.base import AttemptRef, JobState, Launch, Owner, TrainingBackend
from mlplane.operator.code_package import is_local
from mlplane.operator.config import OperatorConfig
from mlplane.operator.status import TERMINAL_PHASES, Event, condition, now, set_condition
from mlplane.operator.tracking import MetricsFeed, RunLookup, RunSnapshot, Tracking
from mlplane.training.tags import ERROR_TAG, RUN_UID_TAG

S = TypeVar("S", bound=RunStatus)
UNRETRYABLE = frozenset({"DeadlineExceeded", "ValidationFailed"})
"""Failure reasons a retry of the same spec would meet again: the run fails at once, with them."""
GPU_ACCOUNTING_SECONDS = 60
"""How often a running job's status.gpuSeconds moves (exact once it ends)."""

# Linux refuses to exec a process given any one string over 128 KiB (MAX_ARG_STRLEN: E2BIG). Ray
# runs a job's entrypoint as the one string of `sh -c ENTRYPOINT` and hands its runtime env to the
# driver as one environment variable; KubeRay's submitter runs both as one `bash -c` string. So the
# entrypoint carries a spec only up to INLINE_SPEC_BYTES, and the runtime env is held to
# RUNTIME_ENV_BYTES: together, with the context and Ray's own words, well under 128 KiB.
INLINE_SPEC_BYTES = 32 * 1024
"""A spec packed into at most this many characters travels on the runner's command line; a bigger
one is stored under the checkpoint storage, which every Ray node reads, and the line names it."""
RUNTIME_ENV_BYTES = 64 * 1024
"""The most a Ray runtime env (env vars, pip requirements) may take as JSON."""


@dataclass
class Step(Generic[S]):
    """The outcome of one reconcile step."""

    status: S
    events: list[Event] = field(default_factory=list)

    def phase(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        if self.status.phase != phase:
            self.events.append(Event("Warning" if warning else "Normal", reason, message))
        self.status.phase = phase  # type: ignore[assignment]


def nowhere(status: Any) -> None:
    """Where `mlplane run` records a status mid-step: its process is the only one that reads it."""


def submission_id(uid: str, attempt: int) -> str:
    """One Ray submission per attempt, named so that a restarted operator finds it again."""
    return f"mlplane-{uid}-{attempt}"


def resource_problems(resources: ResourceRequest, config: OperatorConfig, path: str) -> list[str]:
    """What the schema cannot know: does the named pool exist, can the cluster give GPUs."""
    problems = []
    pool_name = resources.node_pool
    pools = config.pools()
    pool = next((p for p in pools if p.name == pool_name), None)
    if pool_name and pools and pool is None:
        known = ", ".join(p.name for p in pools)
        problems.append(f"{path}.nodePool: no node pool {pool_name!r}; known: {known}")
    gpu = resources.per_worker.gpu
    if gpu:
        if not any(p.gpus_per_node or not p.nodes_known for p in pools):
            problems.append(
                f"{path}.perWorker.gpu: GPUs requested but this operator has no GPU node pool "
                "configured"
            )
        elif pool and pool.nodes_known and gpu > pool.gpus_per_node:
            problems.append(
                f"{path}.perWorker.gpu: {gpu} GPUs per worker, but nodes in pool "
                f"{pool.name!r} have {pool.gpus_per_node}"
            )
    return problems


REMOTE_ARCHIVE_SCHEMES = ("s3", "gs", "https", "http")
"""Where a job's code may come from on a cluster: object storage or a web server, never the
operator's disk, nor Ray's own package store (`gcs://`), which holds other jobs' uploads."""


def _not_a_remote_archive(value: str) -> str:
    if is_local(value):
        return "is a path on the operator's machine, which it never ships to a job"
    return f"is a {urlsplit(value).scheme}:// URI, which a job on a cluster may not fetch code from"


def runtime_env(spec: TrainingJobSpec, pip_index_url: str | None = None) -> dict[str, Any]:
    """The spec's runtimeEnv in Ray's terms; a relative workingDir is taken from the current dir.
    `pip_index_url` is the package index the platform gives its namespace (`code_policies`)."""
    # Ray Train V2 otherwise waits ~2 s per report for its health check.
    env_vars = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    env: dict[str, Any] = {"env_vars": env_vars}
    user = spec.runtime_env
    if user is None:
        return env
    env_vars.update(user.env_vars)
    if user.pip and pip_index_url:
        options = ["--index-url", pip_index_url]
        env["pip"] = {"packages": list(user.pip), "pip_install_options": options}
    elif user.pip:
        env["pip"] = list(user.pip)
    if user.working_dir:
        env["working_dir"] = _local_or_remote(user.working_dir)
    if user.py_modules:
        env["py_modules"] = [_local_or_remote(m) for m in user.py_modules]
    return env


def _local_or_remote(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def runner_entrypoint(command: str, spec: dict[str, Any], context: dict[str, Any]) -> str:
    """`python -m mlplane.training COMMAND --spec … --context …` as the runner parses it, or, for a
    spec too big to travel inline, `--spec-uri` naming where it was stored first."""
    compressed = compress(spec)
    packed = base64.urlsafe_b64encode(compressed).decode()
    if len(packed) <= INLINE_SPEC_BYTES:
        spec_argument = f"--spec {packed}"
    else:
        # Named by content: storing the same spec again (a retry, a restarted operator) is a no-op.
        name = f"specs/{context['uid']}-{hashlib.sha256(compressed).hexdigest()[:16]}.json.bz2"
        spec_argument = f"--spec-uri {shlex.quote(store(context['storagePath'], name, compressed))}"
    return f"python -m mlplane.training {command} {spec_argument} --context {pack(context)}"


def compress(data: object) -> bytes:
    """Compact JSON, bz2-compressed: a spec naming thousands of features shrinks severalfold."""
    return bz2.compress(json.dumps(data, separators=(",", ":")).encode())


def pack(data: object) -> str:
    """Compressed JSON as base64url: one shell word."""
    return base64.urlsafe_b64encode(compress(data)).decode()


def store(storage: str, name: str, data: bytes) -> str:
    """Write `data` as `name` under `storage` (a directory, s3:// or gs://); its URI."""
    from pyarrow import fs  # only for a spec too big to travel inline

    base = storage if "://" in storage else str(Path(storage).resolve())
    uri = f"{base.rstrip('/')}/{name}"
    filesystem, path = fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)
    return uri


def runtime_env_problems(spec: TrainingJobSpec, path: str) -> list[str]:
    """A runtime env too big for the one string Ray hands it to the job in."""
    size = len(json.dumps(runtime_env(spec)))
    if size <= RUNTIME_ENV_BYTES or spec.runtime_env is None:
        return []
    return [
        f"{path}.runtimeEnv: {size // 1024} KiB, over the {RUNTIME_ENV_BYTES // 1024} KiB a Ray "
        "job's runtime env may take (Ray hands it to the job in one environment variable, which "
        f"Linux holds to 128 KiB); the largest part is "
        f"{largest_part(spec.runtime_env.to_dict(), f'{path}.runtimeEnv')}"
    ]


def largest_part(data: Any, path: str) -> str:
    """The field holding most of `data`, as deep as a single field holds more than half."""
    while isinstance(data, dict) and data:
        sizes = {key: len(json.dumps(value)) for key, value in data.items()}
        key = max(sizes, key=sizes.__getitem__)
        if sizes[key] * 2 < sum(sizes.values()):
            break
        data, path = data[key], f"{path}.{key}"
    return path


def gates_checked(step: Step[Any], verdict: str, passed: str, resource: Any) -> bool:
    """GatesPassed as the runner's verdict says (`passed`, `none` or `failed: <why>`, the
    GATES_TAG); False when a gate failed, so no model was registered. `passed` says what held."""
    failed = verdict.startswith("failed")
    state: ConditionStatus
    if failed:
        state, reason, message = "False", "GateFailed", verdict
    elif verdict == "passed":
        state, reason, message = "True", "GatesPassed", passed
    else:
        state, reason, message = "True", "NoGates", "no gates set"
    step.status.conditions = set_condition(
        step.status.conditions,
        ConditionType.GATES_PASSED,
        state,
        reason,
        message,
        generation=resource.metadata.generation,
    )
    return not failed


def last_error_line(logs: str) -> str:
    """The `ExcType: message` line a failed runner ends its stderr with."""
    for line in reversed(logs.splitlines()):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").isidentifier() and head[0].isupper():
            return line.strip()
    return ""


class RunReconciler(ABC, Generic[S]):
    """Drives one resource one step at a time through its backend, MLflow and admission."""

    kind: str
    runner_command: str
    """The `python -m mlplane.training` subcommand: train or tune."""
    spec_path = "spec"
    """Where the TrainingJob spec the runner gets sits in the resource, for field-named errors."""
    local_code: bool
    """Whether `runtimeEnv` may name paths on this machine: only for `mlplane run`, where this
    machine is the user's own. An operator would read them from its own disk (its ServiceAccount
    token, its configuration) and ship them to the job."""

    def __init__(
        self,
        config: OperatorConfig,
        backend: TrainingBackend,
        tracking: Tracking,
        feed: MetricsFeed,
        admission: Admission,
        local_code: bool = False,
    ) -> None:
        self.config = config
        self.backend = backend
        self.tracking = tracking
        self.feed = feed
        self.admission = admission
        self.local_code = local_code

    # -- what each kind supplies ---------------------------------------------------------------

    @abstractmethod
    def new_status(self) -> S: ...

    @abstractmethod
    def problems(self, resource: Any) -> list[str]:
        """Semantic problems, each naming its field; any problem fails the resource."""

    @abstractmethod
    def gpus(self, resource: Any) -> tuple[str, int]:
        """The node pool and the GPUs the resource holds while it runs."""

    @abstractmethod
    def training_spec(self, resource: Any) -> TrainingJobSpec:
        """The TrainingJob spec whose resources and runtime env the launch uses."""

    @abstractmethod
    def experiment(self, resource: Any) -> str: ...

    @abstractmethod
    def retries(self, resource: Any) -> int: ...

    def launch_resources(self, resource: Any) -> ResourceRequest:
        """What one attempt needs from the cluster (a sweep multiplies by its parallel trials)."""
        return self.training_spec(resource).resources

    def retryable(self, run: RunSnapshot | None) -> bool:
        """Whether a failed attempt may be retried, given what the runner recorded."""
        return True

    @abstractmethod
    def mirror(self, status: S, run: RunSnapshot) -> None:
        """Copy what the runner wrote to MLflow onto the status."""

    @abstractmethod
    def succeed(self, step: Step[S], resource: Any, run: RunSnapshot | None) -> str:
        """Fill in what success means for this kind; return the Complete condition's message."""

    # -- the shared lifecycle ------------------------------------------------------------------

    def reconcile(self, resource: Any, record: Callable[[S], None] = nowhere) -> Step[S]:
        """One step. `record` writes a status where a restarted operator reads it; the step
        calls it with an admission before it launches anything, so that no crash can leave a
        launched attempt whose GPUs the rebuilt ledger does not count."""
        step = Step((resource.status or self.new_status()).model_copy(deep=True))
        step.status.observed_generation = resource.metadata.generation
        if step.status.phase in TERMINAL_PHASES:
            return step
        if step.status.phase is None:
            problems = [
                *self.problems(resource),
                *self._queue_problems(resource),
                *self._code_problems(resource),
                *self._policy_problems(resource),
                *runtime_env_problems(self.training_spec(resource), self.spec_path),
            ]
            if problems:
                self._fail(step, resource, "InvalidSpec", "; ".join(problems))
                return step
            # No Event: admission decides in this same step, so no one would see this phase.
            step.status.phase = "Pending"
        launched = bool(step.status.ray and step.status.ray.submission_id)
        if step.status.phase in ("Pending", "Queued") and not launched:
            # Observed from the next step on: a child just made has nothing to tell yet.
            self._admit_and_launch(step, resource, record)
        elif step.status.phase == "Starting" and not launched:
            self._launch(step, resource)  # admitted, then the operator stopped before the launch
        # Queued after the launch: the child waits, suspended, for Kueue to admit it.
        elif step.status.phase in ("Starting", "Running", "Queued") and step.status.ray:
            self._observe(step, resource)
        return step

    def delete(self, resource: Any) -> None:
        """Stop the running attempt and give back its quota; safe to call twice.

        Besides the attempt the status names, the next one is stopped too: a step may have
        submitted it and not yet written that down when the delete came (attempts have
        deterministic ids, and stopping one that never started does nothing)."""
        status = resource.status or self.new_status()
        if status.phase not in TERMINAL_PHASES:
            known = status.attempts if status.ray and status.ray.submission_id else 0
            for attempt in range(max(known, 1), known + 2):
                self.backend.stop(self.attempt_ref(resource, attempt))
        self._let_go(resource, status)

    def owner(self, resource: Any) -> Owner:
        meta = resource.metadata
        return Owner(resource.api_version, resource.kind, meta.name, meta.namespace or "", meta.uid)

    def attempt_ref(self, resource: Any, attempt: int) -> AttemptRef:
        """How the backend finds attempt `attempt` of `resource` again."""
        return AttemptRef(
            submission_id(resource.metadata.uid or "", attempt), self.owner(resource), attempt
        )

    def run_lookup(self, resource: Any) -> RunLookup:
        """How the resource's MLflow run, which its runner makes, is found."""
        meta = resource.metadata
        return RunLookup(self.experiment(resource), meta.uid or "", meta.creation_timestamp or "")

    def work(self, resource: Any) -> Work:
        pool, gpus = self.gpus(resource)
        return Work(
            uid=resource.metadata.uid or "",
            namespace=resource.metadata.namespace or "",
            name=resource.metadata.name,
            pool=pool,
            gpus=gpus,
            priority=resource.spec.priority,
            created=resource.metadata.creation_timestamp or "",
        )

    def launch_for(self, resource: Any, attempt: int) -> Launch:
        """The runner's command line and Ray runtime_env for one attempt."""
        meta = resource.metadata
        uid = meta.uid or ""
        context = {
            "namespace": meta.namespace,
            "name": meta.name,
            "uid": uid,
            "attempt": attempt,
            "mlflowTrackingUri": self.tracking.tracking_uri,
            "storagePath": self.config.checkpoint_storage
            or str(self.config.data_dir / "checkpoints"),
            "experiment": self.experiment(resource),
        }
        entrypoint = runner_entrypoint(self.runner_command, resource.spec.to_dict(), context)
        training = self.training_spec(resource)
        return Launch(
            submission_id=submission_id(uid, attempt),
            entrypoint=entrypoint,
            owner=self.owner(resource),
            attempt=attempt,
            resources=self.launch_resources(resource),
            runtime_env=runtime_env(
                training, self.config.code_policy(meta.namespace or "").pip_index_url
            ),
            metadata={"mlplane.uid": uid, "mlplane.name": meta.name},
            active_deadline_seconds=resource.spec.active_deadline_seconds,
            queue_name=resource.spec.queue_name,
            secret_env=tuple(
                source.secret_ref.name
                for source in (training.runtime_env.env_from if training.runtime_env else ())
            ),
        )

    def _queue_problems(self, resource: Any) -> list[str]:
        if resource.spec.queue_name and self.backend.name != "kuberay":
            return [
                "spec.queueName: Kueue admits RayJobs; this operator runs the "
                f"{self.backend.name!r} backend, not 'kuberay'"
            ]
        return []

    def _code_problems(self, resource: Any) -> list[str]:
        """Custom code applied to a cluster comes as a remote archive (see `local_code`)."""
        user = self.training_spec(resource).runtime_env
        if self.local_code or user is None:
            return []
        code = [("workingDir", user.working_dir)] if user.working_dir else []
        code += [(f"pyModules[{i}]", module) for i, module in enumerate(user.py_modules)]
        return [
            f"{self.spec_path}.runtimeEnv.{name}: {value!r} {_not_a_remote_archive(value)}; name "
            "a remote .zip (s3://, gs://, https:// or http://), which `mlplane package` uploads "
            "and fills in (local paths are for `mlplane run`)"
            for name, value in code
            if is_local(value) or urlsplit(value).scheme not in REMOTE_ARCHIVE_SCHEMES
        ]

    def _policy_problems(self, resource: Any) -> list[str]:
        """What the platform's code policy for the namespace does not allow."""
        namespace = resource.metadata.namespace or ""
        policy = self.config.code_policy(namespace)
        training = self.training_spec(resource)
        problems = []
        entrypoint = training.model.entrypoint
        if entrypoint and not policy.allows_module(module := entrypoint.split(":")[0]):
            allowed = ", ".join(policy.entrypoint_modules)
            problems.append(
                f"{self.spec_path}.model.entrypoint: module {module!r} is not one namespace "
                f"{namespace!r} may run (code_policies: {allowed})"
            )
        if training.runtime_env and training.runtime_env.pip and not policy.pip:
            problems.append(
                f"{self.spec_path}.runtimeEnv.pip: namespace {namespace!r} may not install "
                "packages (code_policies); use an image that has them"
            )
        return problems

    def _decide(self, resource: Any) -> Decision:
        """mlplane's GPU ledger decides, unless the resource names a Kueue LocalQueue."""
        queue_name = resource.spec.queue_name
        if not queue_name:
            return self.admission.admit(self.work(resource))
        pool, gpus = self.gpus(resource)
        return Decision(
            True,
            Queue(pool=pool, gpus=gpus, position=0, name=queue_name),
            f"handed to Kueue LocalQueue {queue_name}: the RayJob starts when Kueue admits it",
        )

    def _admit_and_launch(self, step: Step[S], resource: Any, record: Callable[[S], None]) -> None:
        status = step.status
        generation = resource.metadata.generation
        decision = self._decide(resource)
        if decision.reason == "ExceedsPoolCapacity":
            self._fail(step, resource, decision.reason, decision.message)
            return
        status.queue = decision.queue
        if not decision.admitted:
            reason, message = decision.reason, decision.message
            status.conditions = set_condition(
                status.conditions,
                ConditionType.ADMITTED,
                "False",
                reason,
                message,
                generation=generation,
            )
            step.phase("Queued", reason, message)
            return
        reason = "HandedToKueue" if decision.queue.name else "Admitted"
        status.conditions = set_condition(
            status.conditions,
            ConditionType.ADMITTED,
            "Unknown" if decision.queue.name else "True",
            reason,
            decision.message,
            generation=generation,
        )
        status.attempts = max(status.attempts, 1)
        status.start_time = status.start_time or now()
        status.phase = "Starting"  # what the ledger counts as holding GPUs when it is rebuilt
        record(status)
        self._launch(step, resource)

    def _launch(self, step: Step[S], resource: Any) -> None:
        status = step.status
        launch = self.launch_for(resource, status.attempts)
        try:
            child = self.backend.submit(launch)
        except Exception as error:
            self._not_submitted(step, resource, error)
            return
        sid = launch.submission_id
        status.ray = RayRef(
            backend=self.backend.name,
            submission_id=sid,
            dashboard_url=self.backend.dashboard_url(launch.ref),
            ray_job=child,
        )
        message = f"attempt {status.attempts} submitted as {sid}"
        step.events.append(Event("Normal", "Launched", message))
        status.phase = "Starting"

    def _not_submitted(self, step: Step[S], resource: Any, error: Exception) -> None:
        """The backend refused or could not take the attempt, after its own retries: say why on
        the resource and hold no GPUs meanwhile. Back to Pending, the next pass admits it
        again and submits the same attempt (its submission id is the same, so never twice)."""
        status = step.status
        self.admission.release(resource.metadata.uid or "")
        status.queue = None
        status.ray = None
        message = f"attempt {status.attempts} was not submitted: {type(error).__name__}: {error}"
        admitted = condition(status.conditions, ConditionType.ADMITTED)
        if not (admitted and admitted.reason == "SubmitFailed"):  # once, not every pass
            step.events.append(Event("Warning", "SubmitFailed", message))
        status.conditions = set_condition(
            status.conditions,
            ConditionType.ADMITTED,
            "False",
            "SubmitFailed",
            message,
            generation=resource.metadata.generation,
        )
        status.phase = "Pending"

    def _observe(self, step: Step[S], resource: Any) -> None:
        status = step.status
        ref = self.attempt_ref(resource, status.attempts)
        state = self.backend.state(ref)
        if state.dashboard_url and status.ray:
            status.ray.dashboard_url = state.dashboard_url
        # A job Ray has not started has written nothing to MLflow yet; leaving it out of the
        # feed keeps the one shared search to the runs that move (a long queue of pending
        # RayJobs would otherwise be read in full every interval).
        started = state.status != "PENDING"
        if started and not status.mlflow:
            status.mlflow = self.feed.find(self.run_lookup(resource))
        snapshot = self.feed.get(status.mlflow) if started and status.mlflow else None
        if snapshot:
            self.mirror(status, snapshot)
        self._account_gpus(status, resource)
        deadline = resource.spec.active_deadline_seconds
        elapsed = (now() - status.start_time).total_seconds() if status.start_time else 0
        if deadline and elapsed > deadline:
            self.backend.stop(ref)
            self._fail(step, resource, "DeadlineExceeded", f"ran longer than {deadline}s")
        elif state.status == "PENDING":
            self._not_started(step, resource, state)
        elif state.status == "RUNNING":
            status.conditions = set_condition(
                status.conditions,
                ConditionType.RUNNING,
                "True",
                "Running",
                f"attempt {status.attempts}",
                generation=resource.metadata.generation,
            )
            step.phase("Running", "Running", f"attempt {status.attempts} is running on Ray")
        elif state.status == "SUCCEEDED":
            self._finish(step, resource)
        elif state.status in ("FAILED", "STOPPED", "MISSING"):
            self._attempt_failed(step, resource, state, self._final_snapshot(resource, status))

    def _not_started(self, step: Step[S], resource: Any, state: JobState) -> None:
        """A launched attempt not running yet: suspended for Kueue, starting, or stuck (an image
        that cannot be pulled, pods a ResourceQuota forbids), said on the Running condition."""
        status = step.status
        generation = resource.metadata.generation
        queue_name = resource.spec.queue_name
        if state.reason == "Suspended":
            message = f"waiting for Kueue LocalQueue {queue_name} to admit the RayJob"
            status.conditions = set_condition(
                status.conditions,
                ConditionType.ADMITTED,
                "Unknown",
                "HandedToKueue",
                message,
                generation=generation,
            )
            step.phase("Queued", "WaitingForKueue", message)
            return
        admitted = condition(status.conditions, ConditionType.ADMITTED)
        if admitted and admitted.status == "Unknown":
            status.conditions = set_condition(
                status.conditions,
                ConditionType.ADMITTED,
                "True",
                "KueueAdmitted",
                "Kueue admitted the RayJob",
                generation=generation,
            )
            status.start_time = now()  # GPU time and the deadline count from Kueue's admission
        running = condition(status.conditions, ConditionType.RUNNING)
        if state.reason:
            if not running or running.reason != state.reason:
                step.events.append(Event("Warning", state.reason, state.message))
            status.conditions = set_condition(
                status.conditions,
                ConditionType.RUNNING,
                "False",
                state.reason,
                state.message,
                generation=generation,
            )
        elif running and running.status == "False":
            status.conditions = set_condition(
                status.conditions,
                ConditionType.RUNNING,
                "False",
                "Starting",
                state.message,
                generation=generation,
            )
        step.phase("Starting", "Starting", f"attempt {status.attempts}: {state.message}")

    def _finish(self, step: Step[S], resource: Any) -> None:
        status = step.status
        final = self._final_snapshot(resource, status)
        if final is None:
            # MLflow is the record of what a run measured and registered: without its run, no
            # status may say the gates held or name a model.
            self._fail(
                step,
                resource,
                "RunNotFound",
                f"the Ray job finished, but MLflow at {self.tracking.tracking_uri} has no run "
                f"tagged {RUN_UID_TAG}={resource.metadata.uid}: its metrics, gates and model "
                "were not recorded",
            )
            return
        self.mirror(status, final)
        message = self.succeed(step, resource, final)
        status.completion_time = now()
        self._account_gpus(status, resource)
        generation = resource.metadata.generation
        status.conditions = set_condition(
            status.conditions, ConditionType.RUNNING, "False", "Finished", generation=generation
        )
        status.conditions = set_condition(
            status.conditions,
            ConditionType.COMPLETE,
            "True",
            "Succeeded",
            message,
            generation=generation,
        )
        step.phase("Succeeded", "Succeeded", message)
        self._let_go(resource, status)

    def _final_snapshot(self, resource: Any, status: S) -> RunSnapshot | None:
        """The run as the runner left it when the attempt ended (the feed's may be older), found
        first if the attempt was over before a timer saw it run."""
        if not status.mlflow:
            lookup = self.run_lookup(resource)
            status.mlflow = self.tracking.find_runs([lookup]).get(lookup.uid)
        ref = status.mlflow
        if not (ref and ref.run_id):
            return None
        return self.tracking.snapshots([ref]).get(ref.run_id)

    def _attempt_failed(
        self, step: Step[S], resource: Any, state: JobState, run: RunSnapshot | None
    ) -> None:
        status = step.status
        ref = self.attempt_ref(resource, status.attempts)
        error = (run.tags.get(ERROR_TAG) if run else None) or last_error_line(
            self.backend.logs_tail(ref)
        )
        reason = error or state.message or f"Ray job {state.status.lower()}"
        if state.reason in UNRETRYABLE:
            self._fail(step, resource, state.reason, reason)
            return
        retries = self.retries(resource)
        if status.attempts <= retries and self.retryable(run):
            step.events.append(
                Event("Warning", "Retrying", f"attempt {status.attempts} failed: {reason}")
            )
            status.attempts += 1
            self._launch(step, resource)
            return
        logs = self.backend.logs_tail(ref, lines=10)
        message = f"attempt {status.attempts} of {retries + 1} failed: {reason}"
        if logs:
            message += f"\nlast log lines:\n{logs}"
        self._fail(step, resource, "TrainingFailed", message)

    def _fail(self, step: Step[S], resource: Any, reason: str, message: str) -> None:
        status = step.status
        status.completion_time = now()
        self._account_gpus(status, resource)
        generation = resource.metadata.generation
        if condition(status.conditions, ConditionType.RUNNING):
            status.conditions = set_condition(
                status.conditions, ConditionType.RUNNING, "False", reason, generation=generation
            )
        status.conditions = set_condition(
            status.conditions, ConditionType.FAILED, "True", reason, message, generation=generation
        )
        step.phase("Failed", reason, message.splitlines()[0], warning=True)
        self._let_go(resource, status)

    def _account_gpus(self, status: S, resource: Any) -> None:
        """GPU time so far: in whole minutes while the run holds its GPUs, exact once it ends.
        Counted every interval, a running job's status would change, and be written, every
        interval: a hundred jobs at 1 s, a hundred writes a second the API server validates
        and every watcher receives."""
        if status.start_time:
            held = ((status.completion_time or now()) - status.start_time).total_seconds()
            if not status.completion_time:
                held -= held % GPU_ACCOUNTING_SECONDS
            _, gpus = self.gpus(resource)
            status.gpu_seconds = gpus * held

    def _let_go(self, resource: Any, status: S) -> None:
        """Give back the quota and stop watching MLflow for a resource that is done."""
        uid = resource.metadata.uid or ""
        self.admission.release(uid)
        self.feed.forget(uid, status.mlflow.run_id if status.mlflow else None)
