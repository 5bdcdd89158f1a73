"""The ModelDeployment reconciler: resolve the models, deploy on Serve, observe, run the canary.

Like the TrainingJob reconciler it knows nothing of kopf: it takes the resource as it is and
returns the status it should have plus the Events to emit, and every step is safe to repeat. The
only state is the resource's status and what Serve reports: which canary is running is the
`traffic` entry with role canary, where it stands is `status.canary`, and whether a config is live
is Serve's own answer. An operator restarted at any point picks up where it was.

Canary: steps[i]% of requests go to the canary (an in-place `user_config` change, no restart).
Once a step has been live for `intervalSeconds` with the guard holding, the next step starts;
after the last one the canary becomes the stable model (a Serve rolling update). The guard is
judged on every reconcile over the seconds since the step began, so a breach rolls back at once:
first the canary's share drops to 0 (in place, immediate), then it is unloaded. A rolled-back
canary is not retried until `spec.canary.model` changes; a promoted one stays the stable model
while `spec.canary.model` still names it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from mlplane.crds.base import ConditionType
from mlplane.crds.modeldeployment import (
    Canary,
    CanaryStatus,
    ModelDeployment,
    ModelDeploymentStatus,
    ModelSource,
    ReplicaCounts,
    ServingMetrics,
    Traffic,
)
from mlplane.operator.backends.serve import AppState, ServingBackend, same_config
from mlplane.operator.mlflow_rest import MlflowError, MlflowRest
from mlplane.operator.status import Event, condition, now, set_condition
from mlplane.serving.config import ModelRef, app_name, route_prefix, serve_application

Phase = Literal["Deploying", "Available", "Progressing", "Degraded", "RollingBack", "Failed"]
JobModelLookup = Callable[[str, str], str | None]
"""(namespace, TrainingJob name) → the job's `status.model.uri`, or None while unregistered."""

# Progressing reasons that explain a rollback; kept on the condition until the next change.
ROLLBACK_REASONS = ("CanaryGuardBreached", "CanaryNotReady")
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelNotFound(LookupError):
    """The URI names no model (a typo, a deleted version, an alias never set)."""


class ModelPending(LookupError):
    """The model will exist later (its TrainingJob has not registered one yet)."""


class DeletionPending(RuntimeError):
    """What a deployment runs on cannot be removed yet (SageMaker is still changing the endpoint);
    deletion is retried after `delay_seconds`."""

    def __init__(self, message: str, delay_seconds: float = 10.0) -> None:
        super().__init__(message)
        self.delay_seconds = delay_seconds


class EndpointTarget(Protocol):
    """Where `target: sagemaker` deployments go (mlplane.operator.backends.sagemaker)."""

    def reconcile(
        self, deployment: ModelDeployment, step: Step, resolve: Callable[[], ModelRef]
    ) -> None:
        """Advance the endpoint one step, writing status and Events into `step`; `resolve` pins
        the model spec.model names now (ModelPending / ModelNotFound when it cannot)."""
        ...

    def delete(self, deployment: ModelDeployment) -> None:
        """Remove what the deployment created; DeletionPending while that must wait."""
        ...


class ModelResolver(Protocol):
    def resolve(self, uri: str) -> ModelRef:
        """The model `uri` serves now, pinned to a version; ModelNotFound if there is none."""
        ...


class MlflowModelResolver:
    """Pins registry URIs to a version, so every replica loads the same one.

    `models:/name@alias` becomes `models:/name/<version>`: a later alias move is then a visible
    rollout (new version in `status.traffic`), not replicas silently disagreeing. Other URIs
    (runs:/, s3://, MLflow 3 logged-model ids) carry no registry version and pass through.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.client = MlflowRest(tracking_uri)

    def resolve(self, uri: str) -> ModelRef:
        match = _REGISTRY_URI.match(uri)
        if not match:
            return ModelRef(uri)
        name, alias = match["name"], match["alias"]
        try:
            if alias:
                version = self.client.model_version(name, alias=alias)
            else:
                version = self.client.model_version(name, version=match["version"])
        except MlflowError as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise ModelNotFound(f"{uri}: {error.message}") from error
            raise
        return ModelRef(f"models:/{name}/{version}", str(version))


@dataclass
class Step:
    """The outcome of one reconcile step."""

    status: ModelDeploymentStatus
    events: list[Event] = field(default_factory=list)

    def phase(self, phase: Phase, reason: str, message: str, warning: bool = False) -> None:
        if self.status.phase != phase:
            self.events.append(Event("Warning" if warning else "Normal", reason, message))
        self.status.phase = phase


@dataclass
class Plan:
    """The Serve config this step wants, and how to describe the rollout it implies."""

    application: dict[str, Any]
    traffic: list[Traffic]
    reason: str = "Stable"
    message: str = ""
    in_progress: bool = False
    """A canary is stepping: the deployment is Progressing even once the config is live."""
    rolling_back: bool = False


class ModelDeploymentReconciler:
    """Drives one ModelDeployment one step at a time through a Serve backend."""

    def __init__(
        self,
        backend: ServingBackend,
        models: ModelResolver,
        job_models: JobModelLookup,
        env: dict[str, str] | None = None,
        sagemaker: EndpointTarget | None = None,
        node_pool_label: str | None = None,
        metrics_window_seconds: float = 60.0,
        min_canary_requests: int = 10,
        clock: Callable[[], datetime] = now,
    ) -> None:
        """`env` is the replicas' environment (MLFLOW_TRACKING_URI at least). A canary step is
        judged only once the canary answered `min_canary_requests` requests in it: fewer say
        nothing about its error rate. `sagemaker` serves `target: sagemaker`; without it such
        deployments fail with UnsupportedTarget."""
        self.backend = backend
        self.sagemaker = sagemaker
        self.models = models
        self.job_models = job_models
        self.env = env or {}
        self.node_pool_label = node_pool_label
        self.metrics_window_seconds = metrics_window_seconds
        self.min_canary_requests = min_canary_requests
        self.clock = clock

    def reconcile(self, deployment: ModelDeployment) -> Step:
        step = Step((deployment.status or ModelDeploymentStatus()).model_copy(deep=True))
        status = step.status
        status.observed_generation = deployment.metadata.generation
        if deployment.spec.target == "sagemaker" and self.sagemaker is not None:
            self.sagemaker.reconcile(
                deployment,
                step,
                lambda: self._resolve(deployment, deployment.spec.model, "spec.model"),
            )
            return step
        if deployment.spec.target != "ray":
            self._conditions(
                step,
                deployment,
                ready=False,
                reason="UnsupportedTarget",
                message="this operator has no SageMaker backend",
                progressing=False,
            )
            step.phase(
                "Failed",
                "UnsupportedTarget",
                "target sagemaker needs the sagemaker backend",
                warning=True,
            )
            return step
        name = self._name(deployment)
        before = self.backend.state(name)
        try:
            stable = self._resolve(deployment, deployment.spec.model, "spec.model")
        except (ModelPending, ModelNotFound) as problem:
            self._unresolved(step, deployment, before, problem)
            return step
        plan = self._plan(step, deployment, stable, before)
        # A PUT changes Serve's target at once: read it back so "live" means the new config.
        after = self.backend.state(name) if self.backend.apply(plan.application) else before
        status.traffic = plan.traffic
        self._observe(step, deployment, plan, after)
        return step

    def delete(self, deployment: ModelDeployment) -> None:
        """Remove the Serve application (or the SageMaker endpoint); safe to call twice."""
        if deployment.spec.target == "sagemaker":
            if self.sagemaker is not None:
                self.sagemaker.delete(deployment)
            return
        self.backend.remove(self._name(deployment))

    # -- models --------------------------------------------------------------------------------

    @staticmethod
    def _name(deployment: ModelDeployment) -> str:
        return app_name(deployment.metadata.namespace or "default", deployment.metadata.name)

    def _resolve(self, deployment: ModelDeployment, source: ModelSource, field: str) -> ModelRef:
        uri = source.uri
        if source.training_job_ref:
            job = source.training_job_ref.name
            uri = self.job_models(deployment.metadata.namespace or "default", job)
            if not uri:
                raise ModelPending(
                    f"{field}.trainingJobRef: TrainingJob {job!r} has not registered a model yet"
                )
        assert uri is not None  # the API schema requires exactly one of uri, trainingJobRef
        try:
            return self.models.resolve(uri)
        except ModelNotFound as error:
            raise ModelNotFound(f"{field}: {error}") from error

    def _unresolved(
        self, step: Step, deployment: ModelDeployment, state: AppState, problem: LookupError
    ) -> None:
        """No model to deploy: keep whatever already serves, and say what is missing."""
        pending = isinstance(problem, ModelPending)
        reason = "ModelPending" if pending else "ModelNotFound"
        serving = state.status == "RUNNING" or state.ready_replicas > 0
        if serving:
            self._observe_serving(step, deployment, state)
        self._conditions(
            step,
            deployment,
            serving,
            "Serving" if serving else reason,
            "serving the previous model" if serving else str(problem),
            progressing=pending,
            progress_reason=reason,
            progress_message=str(problem),
        )
        if pending:
            step.phase("Progressing" if serving else "Deploying", reason, str(problem))
        else:
            step.phase("Degraded" if serving else "Failed", reason, str(problem), warning=True)

    # -- the canary state machine --------------------------------------------------------------

    def _render(
        self,
        deployment: ModelDeployment,
        stable: ModelRef,
        canary: ModelRef | None = None,
        percent: int = 0,
    ) -> dict[str, Any]:
        return serve_application(
            deployment, stable, canary, percent, self.env, self.node_pool_label
        )

    def _plan(
        self, step: Step, deployment: ModelDeployment, stable: ModelRef, state: AppState
    ) -> Plan:
        status = step.status
        spec = deployment.spec.canary
        if spec is None:
            status.canary = None
            return Plan(self._render(deployment, stable), _traffic(stable))
        try:
            canary = self._resolve(deployment, spec.model, "spec.canary.model")
        except (ModelPending, ModelNotFound) as problem:
            status.canary = None
            reason = "CanaryPending" if isinstance(problem, ModelPending) else "CanaryNotFound"
            return Plan(self._render(deployment, stable), _traffic(stable), reason, str(problem))
        previous_stable = next((t for t in status.traffic if t.role == "stable"), None)
        current = status.canary
        live_canary = next(  # this canary's traffic record, if it was live already
            (t for t in status.traffic if t.role == "canary" and t.uri == canary.uri), None
        )
        if (
            current
            and current.outcome == "Promoted"
            and previous_stable
            and (previous_stable.uri == canary.uri)
        ):
            return Plan(
                self._render(deployment, canary),
                _traffic(canary),
                "CanaryPromoted",
                f"{canary.uri} was promoted; it stays while spec.canary names it",
            )
        if current and current.outcome == "RolledBack" and live_canary:
            plan = self._rolling_back(deployment, stable, canary, state, live_canary)
            why = condition(status.conditions, ConditionType.PROGRESSING)
            if why and why.reason in ROLLBACK_REASONS:
                plan.reason, plan.message = why.reason, why.message
            return plan
        if canary.uri == stable.uri:
            status.canary = None
            return Plan(self._render(deployment, stable), _traffic(stable))
        if not (current and current.outcome == "InProgress" and live_canary):
            current = status.canary = CanaryStatus(step=0, percent=spec.steps[0])
            step.events.append(
                Event("Normal", "CanaryStarted", f"{canary.uri}: {spec.steps[0]}% of traffic")
            )
        return self._step(step, deployment, spec, stable, canary, current, state)

    def _step(
        self,
        step: Step,
        deployment: ModelDeployment,
        spec: Canary,
        stable: ModelRef,
        canary: ModelRef,
        current: CanaryStatus,
        state: AppState,
    ) -> Plan:
        """One look at a stepping canary: wait for the step to go live, judge, advance."""
        percent = spec.steps[current.step]
        current.percent = percent
        application = self._render(deployment, stable, canary, percent)
        plan = Plan(
            application,
            _traffic(stable, canary, percent),
            "CanaryStep",
            f"step {current.step + 1}/{len(spec.steps)}: {percent}% to {canary.uri}",
            in_progress=True,
        )
        if not _live(state, application):
            current.step_started = None
            plan.message += " (rolling out)"
            return plan
        if current.step_started is None:
            current.step_started = self.clock()
            return plan
        elapsed = (self.clock() - current.step_started).total_seconds()
        metrics = self.backend.metrics(route_prefix(deployment), max(elapsed, 1.0))
        if metrics is None:
            plan.message += " (metrics unavailable)"
            return plan
        breach = self._breach(spec, canary, metrics)
        if breach:
            reason, message = breach
            current.outcome = "RolledBack"
            step.events.append(Event("Warning", reason, f"rolling back: {message}"))
            plan = self._rolling_back(
                deployment,
                stable,
                canary,
                state,
                Traffic(uri=canary.uri, version=canary.version, role="canary"),
            )
            plan.reason, plan.message = reason, message
            return plan
        answered = _served(metrics.get("roles", {}).get("canary") or {})
        if elapsed < spec.interval_seconds:
            return plan
        if answered < self.min_canary_requests:
            plan.message += (
                f"; waiting for canary traffic: {answered} of {self.min_canary_requests} "
                "requests needed to judge the guard (client errors do not count)"
            )
            return plan
        if current.step + 1 < len(spec.steps) and percent < 100:
            current.step += 1
            current.percent = spec.steps[current.step]
            current.step_started = None
            step.events.append(
                Event(
                    "Normal",
                    "CanaryAdvanced",
                    f"{canary.uri}: guard held; {current.percent}% of traffic",
                )
            )
            return self._step(step, deployment, spec, stable, canary, current, state)
        current.outcome = "Promoted"
        current.percent = 100
        step.events.append(
            Event(
                "Normal", "CanaryPromoted", f"{canary.uri} held the guard at every step; now stable"
            )
        )
        return Plan(
            self._render(deployment, canary),
            _traffic(canary),
            "CanaryPromoted",
            f"{canary.uri} promoted after {len(spec.steps)} steps",
        )

    def _breach(
        self, spec: Canary, canary: ModelRef, metrics: dict[str, Any]
    ) -> tuple[str, str] | None:
        """(reason, message with the numbers) when the canary broke its guard, else None."""
        for reported in metrics.get("models", {}).get("canary", []):
            if reported.get("uri") == canary.uri and reported.get("error"):
                return "CanaryNotReady", f"canary {canary.uri} is not ready: {reported['error']}"
        observed = metrics.get("roles", {}).get("canary") or {}
        # Only requests the model was asked to answer judge it: a client's malformed or oversized
        # request (4xx, `rejected`) says nothing about the canary, and anyone could send them.
        requests = _served(observed)
        if requests < self.min_canary_requests:
            return None
        guard = spec.guard
        window = metrics.get("windowSeconds", 0)
        errors = observed.get("errors", 0)
        rate = errors / requests
        if rate > guard.max_error_rate:
            return "CanaryGuardBreached", (
                f"canary {canary.uri}: error rate {rate:.1%} > maxErrorRate "
                f"{guard.max_error_rate:.1%} ({errors} of {requests} requests failed in "
                f"{window:.0f}s)"
            )
        p99 = observed.get("p99Ms")
        if (
            guard.max_latency_p99_ms is not None
            and p99 is not None
            and (p99 > guard.max_latency_p99_ms)
        ):
            return "CanaryGuardBreached", (
                f"canary {canary.uri}: p99 latency {p99:.1f}ms > maxLatencyP99Ms "
                f"{guard.max_latency_p99_ms:g}ms over {requests} requests in {window:.0f}s"
            )
        return None

    def _rolling_back(
        self,
        deployment: ModelDeployment,
        stable: ModelRef,
        canary: ModelRef,
        state: AppState,
        record: Traffic,
    ) -> Plan:
        """Two moves: the canary's share to 0 (in place, immediate), then unload it."""
        drained = self._render(deployment, stable, canary, 0)
        unloaded = self._render(deployment, stable)
        done = same_config(state.config, unloaded) or _live(state, drained)
        traffic = [*_traffic(stable), record.model_copy(update={"percent": 0})]
        return Plan(
            unloaded if done else drained,
            traffic,
            "CanaryRolledBack",
            f"{canary.uri} rolled back",
            rolling_back=True,
        )

    # -- observation ---------------------------------------------------------------------------

    def _observe(
        self, step: Step, deployment: ModelDeployment, plan: Plan, state: AppState
    ) -> None:
        status = step.status
        live = _live(state, plan.application)
        serving = state.status == "RUNNING" or state.ready_replicas > 0
        if serving:
            self._observe_serving(step, deployment, state)
        else:
            status.replicas = ReplicaCounts(ready=0, desired=state.desired_replicas)
        trouble = _serve_message(state)
        rollout = plan.rolling_back or plan.in_progress
        if not serving:
            failed = state.status == "DEPLOY_FAILED"
            reason = "DeployFailed" if failed else "Deploying"
            message = trouble or f"Serve application {state.status.lower()}"
            self._conditions(
                step,
                deployment,
                False,
                reason,
                message,
                progressing=not failed,
                # A canary's or rollback's reason outlives a moment without ready replicas.
                progress_reason=plan.reason if rollout else reason,
                progress_message=plan.message if rollout else message,
            )
            step.phase("Failed" if failed else "Deploying", reason, message, warning=failed)
            return
        if state.status in ("UNHEALTHY", "DEPLOY_FAILED"):
            message = trouble or f"Serve application {state.status.lower()}"
            self._conditions(
                step,
                deployment,
                True,
                "Serving",
                f"serving at {status.url}",
                progressing=False,
                progress_reason="DeployFailed",
                progress_message=message,
            )
            step.phase("Degraded", "Degraded", message, warning=True)
            return
        moving = not live or plan.in_progress
        message = plan.message or (
            f"rolling out {_describe_traffic(plan.traffic)}" if not live else "up to date"
        )
        self._conditions(
            step,
            deployment,
            True,
            "Serving",
            f"serving at {status.url}",
            progressing=moving,
            progress_reason=plan.reason,
            progress_message=message,
        )
        if plan.rolling_back and moving:
            step.phase("RollingBack", plan.reason, message, warning=True)
        elif moving:
            step.phase("Progressing", plan.reason, message)
        else:
            step.phase("Available", "Available", f"serving {_describe_traffic(plan.traffic)}")

    def _observe_serving(self, step: Step, deployment: ModelDeployment, state: AppState) -> None:
        status = step.status
        prefix = route_prefix(deployment)
        status.url = self.backend.url(prefix)
        status.replicas = ReplicaCounts(ready=state.ready_replicas, desired=state.desired_replicas)
        metrics = self.backend.metrics(prefix, self.metrics_window_seconds)
        if metrics:
            total = metrics.get("total") or {}
            status.metrics = ServingMetrics(
                rps=total.get("rps", 0.0),
                p50_ms=total.get("p50Ms"),
                p99_ms=total.get("p99Ms"),
                error_rate=total.get("errorRate", 0.0),
            )

    def _conditions(
        self,
        step: Step,
        deployment: ModelDeployment,
        ready: bool,
        reason: str,
        message: str,
        progressing: bool,
        progress_reason: str | None = None,
        progress_message: str = "",
    ) -> None:
        status = step.status
        generation = deployment.metadata.generation
        status.conditions = set_condition(
            status.conditions,
            ConditionType.READY,
            "True" if ready else "False",
            reason,
            message,
            generation=generation,
        )
        status.conditions = set_condition(
            status.conditions,
            ConditionType.PROGRESSING,
            "True" if progressing else "False",
            progress_reason or reason,
            progress_message or message,
            generation=generation,
        )


def _live(state: AppState, application: dict[str, Any]) -> bool:
    """Serve runs exactly `application`: every replica has it and is healthy."""
    return state.status == "RUNNING" and same_config(state.config, application)


def _served(observed: dict[str, Any]) -> int:
    """Requests a role's model was asked to answer: all of them but the client errors."""
    return observed.get("requests", 0) - observed.get("rejected", 0)


def _traffic(stable: ModelRef, canary: ModelRef | None = None, percent: int = 0) -> list[Traffic]:
    split = [Traffic(uri=stable.uri, version=stable.version, percent=100 - percent, role="stable")]
    if canary:
        split.append(
            Traffic(uri=canary.uri, version=canary.version, percent=percent, role="canary")
        )
    return split


def _describe_traffic(traffic: list[Traffic]) -> str:
    return ", ".join(f"{t.uri} ({t.percent}%)" for t in traffic if t.percent)


def _serve_message(state: AppState) -> str:
    parts = [state.message] if state.message else []
    parts += [f"{name}: {message}" for name, message in state.deployment_messages.items()]
    return "; ".join(parts)[:2000]
