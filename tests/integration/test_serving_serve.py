"""ModelDeployment on real Ray Serve with models from a real MLflow registry.

One story, in order, on one Serve application (each replica start costs seconds on this machine,
so the tests share it): deploy and compare with the model loaded directly; bad requests; roll to a
new version under load; a failing canary rolled back by its guard; a healthy canary promoted
through every step. Each test leaves the deployment Available for the next. The reconciler is
driven as the operator's timer would drive it; the backend talks to Serve only over HTTP.
"""

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import cloudpickle
import mlflow
import mlflow.pyfunc
import pandas as pd
import pytest
import requests
from mlflow.models import infer_signature
from serving_support import FEATURES, ROWS, Story, available, register_iris, serving_story

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelNotFound
from mlplane.serving.config import ModelRef

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]


class FailsOnRealTraffic(mlflow.pyfunc.PythonModel):
    """A broken candidate: it passes its warm-up (on the all-zero example) and then fails on
    every real request, as a model with a preprocessing bug would."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        if (model_input["pl"] > 0).any():
            raise ValueError("feature pipeline broke on real data")
        return [0] * len(model_input)


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> dict[str, str]:
    """Three registered versions of `iris`: two healthy ones and one that fails on traffic."""
    mlflow.set_tracking_uri(mlflow_server)
    # Replicas cannot import this test module: ship the broken model's class inside its pickle.
    cloudpickle.register_pickle_by_value(sys.modules[FailsOnRealTraffic.__module__])
    with mlflow.start_run():
        uris = {
            tag: register_iris("iris", tag, strength)
            for tag, strength in (("v1", 1.0), ("v2", 0.01))
        }
        frame = pd.DataFrame(ROWS)
        info = mlflow.pyfunc.log_model(
            name="broken",
            python_model=FailsOnRealTraffic(),
            signature=infer_signature(frame, [0] * len(frame)),
            pip_requirements=["pandas"],
            registered_model_name="iris",
        )
        uris["broken"] = f"models:/iris/{info.registered_model_version}"
    return uris


@pytest.fixture(scope="module")
def story(ray_cluster: str, mlflow_server: str, registry: dict[str, str]) -> Iterator[Story]:
    spec = {
        "model": {"uri": registry["v1"]},
        "ray": {"perReplica": {"cpu": "200m"}, "batching": {"maxBatchSize": 8}},
    }
    with serving_story(ray_cluster, mlflow_server, "serving-test", "iris", spec) as story:
        yield story


class Load:
    """A bounded client loop: one request after another until stopped, every answer kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                response = session.post(self.url, json={"instances": ROWS[:2]}, timeout=30)
                version = response.json().get("model", {}).get("version")
                self.answers.append((response.status_code, version))
            except requests.RequestException as error:
                self.answers.append((0, str(error)))
            time.sleep(0.02)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def predict(url: str, body: Any) -> requests.Response:
    return requests.post(url, json=body, timeout=30)


def test_registry_uris_are_pinned_to_a_version(mlflow_server: str, registry: dict[str, str]):
    client = mlflow.MlflowClient(mlflow_server)
    version = registry["v2"].rsplit("/", 1)[1]
    client.set_registered_model_alias("iris", "champion", version)
    resolver = MlflowModelResolver(mlflow_server)
    assert resolver.resolve("models:/iris@champion") == ModelRef(registry["v2"], version)
    assert resolver.resolve(registry["v1"]).uri == registry["v1"]
    assert resolver.resolve("runs:/abc/model") == ModelRef("runs:/abc/model")
    with pytest.raises(ModelNotFound):
        resolver.resolve("models:/iris@nobody")
    with pytest.raises(ModelNotFound):
        resolver.resolve("models:/iris/999")


def test_predictions_match_the_model_loaded_directly(story: Story, registry: dict[str, str]):
    md = story.drive(available, timeout=180)
    assert story.reason("Ready").startswith("True/Serving")
    assert md.status.replicas.ready >= 1
    assert [(t.uri, t.percent, t.role) for t in md.status.traffic] == [
        (registry["v1"], 100, "stable")
    ]
    assert md.status.traffic[0].version == registry["v1"].rsplit("/", 1)[1]
    response = predict(story.url, {"instances": ROWS})
    assert response.status_code == 200, response.text
    direct = mlflow.pyfunc.load_model(registry["v1"]).predict(pd.DataFrame(ROWS))
    assert response.json()["predictions"] == list(direct)
    assert response.json()["model"]["role"] == "stable"
    split = {"dataframe_split": {"columns": FEATURES, "data": [list(r.values()) for r in ROWS]}}
    assert predict(story.url, split).json()["predictions"] == list(direct)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"sl": 5.1, "sw": 3.5, "pl": 1.4}]}, "missing feature(s) 'pw'"),
        ({"instances": [{**ROWS[0], "petals": 3}]}, "unknown feature(s) 'petals'"),
        ({"instances": [{**ROWS[0], "pl": "long"}]}, "feature 'pl' must be a number"),
        ({"instances": [{**ROWS[0], "sw": None}]}, "feature 'sw' is null"),
        ({"instances": ROWS * 3}, "batch of 12 rows exceeds maxBatchSize 8"),
        ({"rows": ROWS}, "exactly one of instances"),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(story: Story, body: Any, message: str):
    response = predict(story.url, body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_the_deployment_stays_available_and_reports_metrics(story: Story):
    response = requests.post(story.url, data=b"{not json", timeout=30)
    assert response.status_code == 400 and "not JSON" in response.json()["error"]
    assert predict(story.url, {"instances": ROWS}).status_code == 200
    assert requests.get(f"{story.url}/healthz", timeout=10).status_code == 200
    time.sleep(1.5)  # replicas push their counts each second
    summary = requests.get(f"{story.url}/-/metrics", params={"window": 120}, timeout=10).json()
    stable = summary["roles"]["stable"]
    assert stable["rejected"] >= 7 and stable["errors"] == 0
    assert stable["requests"] >= stable["rejected"] + 3
    md = story.step()
    assert md.status.phase == "Available"
    assert md.status.metrics.rps > 0 and md.status.metrics.p50_ms is not None
    assert md.status.metrics.error_rate == 0


def test_model_update_under_load_loses_no_request(story: Story, registry: dict[str, str]):
    new_version = registry["v2"].rsplit("/", 1)[1]
    with Load(story.url) as load:
        time.sleep(1)
        story.edit(model={"uri": registry["v2"]})
        md = story.drive(lambda md: available(md) and md.status.traffic[0].version == new_version)
        deadline = time.monotonic() + 30
        while not any(v == new_version for _, v in load.answers[-5:]):
            assert time.monotonic() < deadline, "the new version never answered"
            time.sleep(0.2)
    outcomes = Counter(status for status, _ in load.answers)
    assert outcomes == {200: len(load.answers)}, outcomes
    versions = [v for _, v in load.answers]
    old_version = registry["v1"].rsplit("/", 1)[1]
    assert versions[0] == old_version and versions[-1] == new_version
    assert md.status.traffic[0].uri == registry["v2"]


def test_canary_failing_on_every_request_is_rolled_back(story: Story, registry: dict[str, str]):
    stable = story.md.status.traffic[0].uri
    with Load(story.url) as load:
        story.edit(
            canary={
                "model": {"uri": registry["broken"]},
                "steps": [50, 100],
                "intervalSeconds": 30,
                "guard": {"maxErrorRate": 0.05},
            }
        )
        md = story.drive(
            lambda md: md.status.canary is not None and md.status.canary.outcome == "RolledBack"
        )
        assert md.status.phase == "RollingBack"
        md = story.drive(available)
    assert story.reason("Progressing").startswith(
        f"False/CanaryGuardBreached: canary {registry['broken']}: error rate"
    )
    assert any(e[:2] == ("Warning", "CanaryGuardBreached") for e in story.events)
    assert [(t.uri, t.percent, t.role) for t in md.status.traffic] == [
        (stable, 100, "stable"),
        (registry["broken"], 0, "canary"),
    ]
    assert {status for status, _ in load.answers} <= {200, 500}
    assert predict(story.url, {"instances": ROWS}).json()["model"]["uri"] == stable


def test_healthy_canary_is_promoted_through_every_step(story: Story, registry: dict[str, str]):
    seen: list[int] = []

    def promoted(md: ModelDeployment) -> bool:
        if md.status.canary and md.status.canary.percent not in seen:
            seen.append(md.status.canary.percent)
        return available(md) and bool(md.status.canary) and md.status.canary.outcome == "Promoted"

    with Load(story.url) as load:
        story.edit(
            canary={
                "model": {"uri": registry["v1"]},
                "steps": [10, 50, 100],
                "intervalSeconds": 2,
                "guard": {"maxErrorRate": 0.05},
            }
        )
        md = story.drive(promoted, timeout=180)
    assert seen[:3] == [10, 50, 100]
    assert [(t.uri, t.percent, t.role) for t in md.status.traffic] == [
        (registry["v1"], 100, "stable")
    ]
    assert story.reason("Progressing").startswith("False/CanaryPromoted")
    assert Counter(status for status, _ in load.answers) == {200: len(load.answers)}
    assert {v for _, v in load.answers} == {
        registry["v1"].rsplit("/", 1)[1],
        registry["v2"].rsplit("/", 1)[1],
    }
