"""The ModelDeployment state machine, step by step, against an in-memory Serve.

The backend keeps the configs it is given and reports them DEPLOYING until the test settles them,
as Serve does while replicas start; canary metrics are whatever the test says. The same
reconciler, driven by the same `Story`, runs against real Ray Serve in
tests/integration/test_serving_serve.py.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from serving_support import Story

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends.serve import AppState, same_config
from mlplane.operator.modeldeployment import ModelDeploymentReconciler, ModelNotFound
from mlplane.serving.config import ModelRef, canary_percent
from mlplane.serving.metrics import Counts, summarize

NAME = "ns.churn"
PINNED = {"models:/churn@prod": "1", "models:/churn/1": "1", "models:/churn/2": "2"}


@dataclass
class InMemoryServe:
    name: str = "memory"
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    puts: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    windows: list[float] = field(default_factory=list)
    served: set[str] = field(default_factory=set)
    """Applications that ran once: their old replicas serve on while an update deploys."""

    def apply(self, application: dict[str, Any]) -> bool:
        if same_config(self.apps.get(application["name"]), application):
            return False
        self.apps[application["name"]] = application
        self.statuses[application["name"]] = "DEPLOYING"
        self.puts.append(application)
        return True

    def settle(self, status: str = "RUNNING") -> None:
        for name in self.statuses:
            self.statuses[name] = status
            if status == "RUNNING":
                self.served.add(name)

    def state(self, name: str) -> AppState:
        if name not in self.apps:
            return AppState("MISSING")
        status = self.statuses[name]
        ready = 1 if status in ("RUNNING", "UNHEALTHY") or name in self.served else 0
        message = "ModelServer: replica failed to start" if status == "DEPLOY_FAILED" else ""
        return AppState(status, message, self.apps[name], ready, 1)

    def metrics(self, route_prefix: str, window_seconds: float) -> dict[str, Any]:
        self.windows.append(window_seconds)
        total = {"requests": 40, "rps": 2.0, "p50Ms": 3.0, "p99Ms": 9.5, "errorRate": 0.0}
        return {
            "windowSeconds": window_seconds,
            "total": total,
            "roles": self.roles,
            "models": self.models,
        }

    def remove(self, name: str) -> None:
        self.apps.pop(name, None)

    def url(self, route_prefix: str) -> str:
        return "http://serve:8000" + route_prefix


class Registry:
    def resolve(self, uri: str) -> ModelRef:
        if uri not in PINNED:
            raise ModelNotFound(f"{uri}: no such registered model version")
        return ModelRef(f"models:/churn/{PINNED[uri]}", PINNED[uri])


@dataclass
class Clock:
    at: datetime = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass(kw_only=True)
class Harness(Story):
    """The reconciler's story against the in-memory Serve, on a clock the test moves."""

    serve: InMemoryServe
    clock: Clock
    jobs: dict[str, str]

    def settle_and_step(self) -> ModelDeployment:
        self.serve.settle()
        return self.step()

    @property
    def app(self) -> dict[str, Any]:
        return self.serve.apps[NAME]


def make(model: dict[str, Any], **spec: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "churn", "namespace": "ns", "generation": 1},
            "spec": {"model": model, **spec},
        }
    )


@pytest.fixture
def h() -> Harness:
    serve, clock, jobs = InMemoryServe(), Clock(), {}
    reconciler = ModelDeploymentReconciler(
        serve,
        Registry(),
        lambda namespace, name: jobs.get(f"{namespace}/{name}"),
        env={"MLFLOW_TRACKING_URI": "http://mlflow"},
        min_canary_requests=10,
        clock=clock,
    )
    return Harness(
        reconciler=reconciler,
        md=make({"uri": "models:/churn@prod"}),
        serve=serve,
        clock=clock,
        jobs=jobs,
    )


def healthy(requests: int = 20) -> dict[str, Any]:
    return {"requests": requests, "errors": 0, "errorRate": 0.0, "p99Ms": 8.0}


def test_deploys_pinned_then_available_and_idempotent(h: Harness) -> None:
    md = h.step()
    assert md.status.phase == "Deploying"
    assert h.reason("Ready").startswith("False/Deploying")
    assert h.app["args"]["stable"] == {"uri": "models:/churn/1", "version": "1"}
    assert h.app["runtime_env"] == {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow"}}
    md = h.settle_and_step()
    assert md.status.phase == "Available"
    assert md.status.observed_generation == 1
    assert h.reason("Ready") == "True/Serving: serving at http://serve:8000/ns/churn"
    assert h.reason().startswith("False/")
    assert md.status.url == "http://serve:8000/ns/churn"
    assert md.status.replicas.ready == md.status.replicas.desired == 1
    assert [(t.uri, t.version, t.percent, t.role) for t in md.status.traffic] == [
        ("models:/churn/1", "1", 100, "stable")
    ]
    assert (md.status.metrics.rps, md.status.metrics.p99_ms) == (2.0, 9.5)
    h.step()
    assert len(h.serve.puts) == 1  # nothing changed: nothing sent
    assert [e[1] for e in h.events] == ["Deploying", "Available"]


def test_training_job_ref_waits_for_the_registered_model(h: Harness) -> None:
    h.md = make({"trainingJobRef": {"name": "churn-xgb"}})
    md = h.step()
    assert md.status.phase == "Deploying"
    assert "TrainingJob 'churn-xgb' has not registered a model yet" in h.reason("Ready")
    assert "spec.model.trainingJobRef" in h.reason("Ready")
    assert h.serve.puts == []
    h.jobs["ns/churn-xgb"] = "models:/churn/2"
    h.step()
    assert h.app["args"]["stable"]["version"] == "2"
    assert h.settle_and_step().status.phase == "Available"


def test_unknown_model_fails_with_the_field_named(h: Harness) -> None:
    h.md = make({"uri": "models:/churn/99"})
    md = h.step()
    assert md.status.phase == "Failed"
    assert h.reason("Ready").startswith("False/ModelNotFound: spec.model: models:/churn/99")
    assert h.events[-1][0] == "Warning"


def test_unknown_model_while_serving_keeps_the_old_one(h: Harness) -> None:
    h.step()
    h.settle_and_step()
    h.edit(model={"uri": "models:/churn/99"})
    md = h.step()
    assert md.status.phase == "Degraded"
    assert h.reason("Ready").startswith("True/")
    assert h.app["args"]["stable"]["version"] == "1"


def test_model_change_is_one_rolling_update(h: Harness) -> None:
    h.step()
    h.settle_and_step()
    h.edit(model={"uri": "models:/churn/2"})
    md = h.step()
    assert md.status.phase == "Progressing"
    assert h.reason("Ready").startswith("True/")  # the old replicas keep serving
    assert "rolling out models:/churn/2" in h.reason()
    assert len(h.serve.puts) == 2
    md = h.settle_and_step()
    assert md.status.phase == "Available"
    assert md.status.traffic[0].version == "2"


def test_deploy_failure_without_replicas_is_failed_with_serves_message(h: Harness) -> None:
    h.step()
    h.serve.settle("DEPLOY_FAILED")
    md = h.step()
    assert md.status.phase == "Failed"
    assert "replica failed to start" in h.reason("Ready")


def canary(h: Harness, **guard: Any) -> None:
    h.step()
    h.settle_and_step()
    h.edit(
        canary={
            "model": {"uri": "models:/churn/2"},
            "steps": [10, 50, 100],
            "intervalSeconds": 30,
            "guard": {"maxErrorRate": 0.05, **guard},
        }
    )


def test_healthy_canary_is_promoted_through_every_step(h: Harness) -> None:
    canary(h)
    h.serve.roles = {"canary": healthy()}
    seen = []
    for _ in range(3):
        md = h.step()  # the step's config goes out
        seen.append(canary_percent(h.app))
        assert md.status.phase == "Progressing"
        assert md.status.traffic[1].percent == seen[-1]
        h.settle_and_step()  # live: the step's clock starts
        assert md.status.canary.outcome == "InProgress"
        h.clock.advance(31)
    md = h.step()
    assert seen == [10, 50, 100]
    assert md.status.canary.outcome == "Promoted"
    assert h.app["args"]["canary"] is None
    assert h.app["args"]["stable"]["version"] == "2"
    assert md.status.phase == "Progressing"
    md = h.settle_and_step()
    assert md.status.phase == "Available"
    assert [(t.version, t.percent, t.role) for t in md.status.traffic] == [("2", 100, "stable")]
    assert h.reason().startswith("False/CanaryPromoted")
    h.step()
    assert h.app["args"]["stable"]["version"] == "2"  # stays promoted while spec names it
    reasons = [e[1] for e in h.events]
    assert reasons.count("CanaryAdvanced") == 2 and "CanaryPromoted" in reasons
    # The guard was judged over the seconds since each step began.
    assert max(h.serve.windows) >= 31


def test_steps_move_by_user_config_only(h: Harness) -> None:
    canary(h)
    h.serve.roles = {"canary": healthy()}
    h.step()
    first = h.app
    h.settle_and_step()
    h.clock.advance(31)
    h.step()
    assert h.app["args"] == first["args"]  # same replicas: no restart
    assert canary_percent(h.app) == 50


def test_error_rate_breach_rolls_back_and_says_why(h: Harness) -> None:
    canary(h)
    h.step()
    h.settle_and_step()
    h.clock.advance(5)  # before the interval: a breach does not wait for it
    h.serve.roles = {"canary": {"requests": 20, "errors": 20, "errorRate": 1.0, "p99Ms": 3.0}}
    md = h.step()
    assert md.status.phase == "RollingBack"
    assert md.status.canary.outcome == "RolledBack"
    assert canary_percent(h.app) == 0 and h.app["args"]["canary"]  # share first, in place
    assert h.reason().startswith(
        "True/CanaryGuardBreached: canary models:/churn/2: error rate 100.0% > maxErrorRate"
    )
    assert "20 of 20 requests failed" in h.reason()
    assert ("Warning", "CanaryGuardBreached") in [(e[0], e[1]) for e in h.events]
    md = h.settle_and_step()
    assert md.status.phase == "RollingBack"
    assert h.app["args"]["canary"] is None  # then unloaded
    md = h.settle_and_step()
    assert md.status.phase == "Available"
    assert h.reason().startswith("False/CanaryGuardBreached: canary models:/churn/2")
    assert [(t.version, t.percent, t.role) for t in md.status.traffic] == [
        ("1", 100, "stable"),
        ("2", 0, "canary"),
    ]
    puts = len(h.serve.puts)
    h.clock.advance(600)
    h.step()
    assert len(h.serve.puts) == puts  # the same canary is not retried


def test_latency_breach_rolls_back(h: Harness) -> None:
    canary(h, maxLatencyP99Ms=50)
    h.serve.roles = {"canary": {**healthy(), "p99Ms": 120.0}}
    h.step()
    h.settle_and_step()
    h.clock.advance(5)
    md = h.step()
    assert md.status.phase == "RollingBack"
    assert "p99 latency 120.0ms > maxLatencyP99Ms 50ms" in h.reason()


def figures(**outcomes: int) -> dict[str, Any]:
    """A role's figures as a replica's collector reports them, from counted outcomes."""
    counts = Counts()
    for outcome, times in outcomes.items():
        for _ in range(times):
            counts.observe(outcome, 0.3 if outcome == "rejected" else 4.0)
    return summarize(counts, 30)


def test_a_canary_receiving_only_client_errors_is_not_rolled_back(h: Harness) -> None:
    canary(h, maxLatencyP99Ms=50)
    h.serve.roles = {"canary": figures(rejected=500)}
    h.step()
    h.settle_and_step()
    h.clock.advance(31)
    md = h.step()
    assert md.status.canary.outcome == "InProgress" and md.status.phase == "Progressing"
    assert canary_percent(h.app) == 10  # not judged healthy on client errors either
    assert "0 of 10 requests needed to judge the guard (client errors do not count)" in h.reason()
    h.serve.roles = {"canary": figures(rejected=500, ok=20)}
    h.step()
    assert canary_percent(h.app) == 50
    assert not [e for e in h.events if e[0] == "Warning"]


def test_client_errors_do_not_hide_a_failing_canary(h: Harness) -> None:
    canary(h)
    h.serve.roles = {"canary": figures(rejected=990, ok=8, error=2)}
    h.step()
    h.settle_and_step()
    h.clock.advance(5)
    md = h.step()
    assert md.status.canary.outcome == "RolledBack"
    assert "error rate 20.0% > maxErrorRate 5.0% (2 of 10 requests failed" in h.reason()


def test_canary_that_cannot_load_rolls_back(h: Harness) -> None:
    canary(h)
    h.serve.models = {"canary": [{"uri": "models:/churn/2", "error": "warm-up failed: Boom"}]}
    h.step()
    h.settle_and_step()
    h.clock.advance(1)
    md = h.step()
    assert md.status.phase == "RollingBack"
    assert h.reason().startswith("True/CanaryNotReady: canary models:/churn/2 is not ready")


def test_too_little_canary_traffic_holds_the_step(h: Harness) -> None:
    canary(h)
    h.serve.roles = {"canary": healthy(requests=3)}
    h.step()
    h.settle_and_step()
    h.clock.advance(31)
    md = h.step()
    assert canary_percent(h.app) == 10
    assert "waiting for canary traffic: 3 of 10 requests" in h.reason()
    assert md.status.phase == "Progressing"


def test_a_new_canary_after_a_rollback_starts_again(h: Harness) -> None:
    test_error_rate_breach_rolls_back_and_says_why(h)
    PINNED["models:/churn/3"] = "3"
    try:
        h.edit(canary={"model": {"uri": "models:/churn/3"}, "steps": [50]})
        md = h.step()
        assert md.status.canary.outcome == "InProgress"
        assert h.app["args"]["canary"]["version"] == "3"
        assert canary_percent(h.app) == 50
    finally:
        del PINNED["models:/churn/3"]


def test_delete_removes_the_application_twice_safely(h: Harness) -> None:
    h.step()
    h.reconciler.delete(h.md)
    h.reconciler.delete(h.md)
    assert NAME not in h.serve.apps
