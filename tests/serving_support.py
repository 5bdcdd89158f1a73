"""A ModelDeployment on real Ray Serve, driven as the operator's timer drives it.

Shared by the serving integration tests: iris models registered in the real MLflow, and a
`Story` holding one ModelDeployment and the reconciler (with the `ray` backend, which talks to
Serve only over HTTP) that moves it on. The reconciler's unit test tells its story against an
in-memory Serve with the same `Story`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import mlflow.sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends.serve import ServeRestBackend
from mlplane.operator.embedded import free_port
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelDeploymentReconciler
from mlplane.operator.status import condition

FEATURES = ["sl", "sw", "pl", "pw"]
ROWS = [
    {"sl": 5.1, "sw": 3.5, "pl": 1.4, "pw": 0.2},
    {"sl": 6.2, "sw": 2.9, "pl": 4.3, "pw": 1.3},
    {"sl": 7.7, "sw": 3.0, "pl": 6.1, "pw": 2.3},
    {"sl": 5.9, "sw": 3.0, "pl": 5.1, "pw": 1.8},
]


def register_iris(name: str, tag: str, strength: float) -> str:
    """Log a LogisticRegression on iris (with its signature) inside the active MLflow run, as a
    new version of `name`; its pinned `models:/name/<version>` URI."""
    frame, target = load_iris(return_X_y=True, as_frame=True)
    frame.columns = FEATURES
    model = LogisticRegression(C=strength, max_iter=500).fit(frame, target)
    info = mlflow.sklearn.log_model(
        model,
        name=tag,
        signature=infer_signature(frame, model.predict(frame)),
        pip_requirements=["scikit-learn"],
        registered_model_name=name,
    )
    return f"models:/{name}/{info.registered_model_version}"


@dataclass
class Story:
    """One ModelDeployment and the reconciler that drives it."""

    reconciler: ModelDeploymentReconciler
    md: ModelDeployment
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def step(self) -> ModelDeployment:
        result = self.reconciler.reconcile(self.md)
        self.events += [(e.type, e.reason, e.message) for e in result.events]
        self.md = self.md.model_copy(update={"status": result.status})
        return self.md

    def drive(
        self, done: Callable[[ModelDeployment], bool], timeout: float = 150.0
    ) -> ModelDeployment:
        """Reconcile as the operator's timer would, until `done` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            md = self.step()
            if done(md):
                return md
            time.sleep(0.5)
        raise AssertionError(f"not done after {timeout:.0f}s: {md.status.to_dict()}")

    def edit(self, **spec: Any) -> None:
        data = self.md.to_dict()
        data["spec"].update(spec)
        data["metadata"]["generation"] += 1
        self.md = ModelDeployment.model_validate(data)

    def reason(self, type_: str = "Progressing") -> str:
        found = condition(self.md.status.conditions, type_)
        return f"{found.status}/{found.reason}: {found.message}" if found else ""

    @property
    def url(self) -> str:
        assert self.md.status.url
        return self.md.status.url


def available(md: ModelDeployment) -> bool:
    return md.status.phase == "Available"


@contextmanager
def serving_story(
    ray_cluster: str, mlflow_server: str, namespace: str, name: str, spec: dict[str, Any]
) -> Iterator[Story]:
    """A Story for `namespace/name` on the test Ray cluster's Serve; its application is deleted
    at the end."""
    backend = ServeRestBackend(ray_cluster, http_port=free_port())
    reconciler = ModelDeploymentReconciler(
        backend,
        MlflowModelResolver(mlflow_server),
        job_models=lambda namespace, name: None,
        env={"MLFLOW_TRACKING_URI": mlflow_server},
        metrics_window_seconds=30,
        min_canary_requests=5,
    )
    md = ModelDeployment.model_validate(
        {"metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": spec}
    )
    story = Story(reconciler, md)
    yield story
    reconciler.delete(story.md)
    assert backend.state(f"{namespace}.{name}").status in ("MISSING", "DELETING")
