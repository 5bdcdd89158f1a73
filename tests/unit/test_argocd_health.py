"""The Argo CD health checks the chart ships, run in Lua 5.1 (the language of Argo CD's gopher-lua).

The scripts are taken from the rendered argocd-cm, exactly as Argo CD would read them, and run
against objects shaped like the ones the operator writes. Every phase the API allows is covered:
the phase lists come from the status models, so a new phase without a health mapping fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from mlplane.operator.cluster import chart
from mlplane.operator.metrics import phases

RUN_HEALTH = {
    "Pending": "Progressing",
    "Queued": "Suspended",
    "Starting": "Progressing",
    "Running": "Progressing",
    "Succeeded": "Healthy",
    "Failed": "Degraded",
}
DEPLOYMENT_HEALTH = {
    "Deploying": "Progressing",
    "Available": "Healthy",
    "Progressing": "Progressing",
    "Degraded": "Degraded",
    "RollingBack": "Degraded",
    "Failed": "Degraded",
}
EXPECTED = {
    "TrainingJob": RUN_HEALTH,
    "TuningSweep": RUN_HEALTH,
    "ModelDeployment": DEPLOYMENT_HEALTH,
}
CASES = [(kind, phase) for kind, health in EXPECTED.items() for phase in health]


@pytest.fixture(scope="module")
def scripts(helm: Path) -> dict[str, str]:
    rendered = chart.template(
        helm,
        "--set",
        "argocd.healthChecks.enabled=true",
        "--show-only",
        "templates/argocd-health.yaml",
    )
    config_map = yaml.safe_load(rendered)
    assert config_map["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    prefix = "resource.customizations.health.mlplane.dev_"
    return {key.removeprefix(prefix): script for key, script in config_map["data"].items()}


def health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run one health.lua as Argo CD does: `obj` a global table, the script's return value read."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {key: result[key] for key in ("status", "message")}


def conditions(kind: str, phase: str) -> list[dict[str, str]]:
    """The conditions the operator writes next to each phase."""
    if kind == "ModelDeployment":
        ready = phase in ("Available", "Progressing", "Degraded", "RollingBack")
        return [
            {"type": "Ready", "status": str(ready), "reason": "Serving", "message": "serving"},
            {
                "type": "Progressing",
                "status": str(phase in ("Deploying", "Progressing", "RollingBack")),
                "reason": phase,
                "message": f"{phase} because of something specific",
            },
        ]
    found = {
        "Queued": [
            {"type": "Admitted", "status": "False", "message": "needs 8 a100 GPUs; position 2"}
        ],
        "Succeeded": [{"type": "Complete", "status": "True", "message": "test_roc_auc=0.9900"}],
        "Failed": [{"type": "Failed", "status": "True", "message": "spec.dataset.uri: unknown"}],
    }
    return found.get(phase, [])


def resource(
    kind: str, phase: str | None, generation: int = 2, observed: int = 2
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "team-a", "generation": generation},
        "spec": {},
    }
    if phase is not None:
        obj["status"] = {
            "phase": phase,
            "observedGeneration": observed,
            "conditions": conditions(kind, phase),
        }
    return obj


def test_every_phase_of_every_kind_has_a_health() -> None:
    for kind, health_by_phase in EXPECTED.items():
        assert set(health_by_phase) == set(phases(kind)), kind


@pytest.mark.parametrize(("kind", "phase"), CASES)
def test_phase_maps_to_health(scripts: dict[str, str], kind: str, phase: str) -> None:
    assert health(scripts[kind], resource(kind, phase))["status"] == EXPECTED[kind][phase]


@pytest.mark.parametrize(("kind", "phase"), CASES)
def test_a_lagging_observed_generation_is_progressing(
    scripts: dict[str, str], kind: str, phase: str
) -> None:
    """The status describes an older spec: whatever it says, the new one is not acted on yet."""
    result = health(scripts[kind], resource(kind, phase, generation=3, observed=2))
    assert result == {
        "status": "Progressing",
        "message": "Waiting for the mlplane operator to observe generation 3",
    }


@pytest.mark.parametrize("kind", EXPECTED)
def test_a_new_resource_is_progressing(scripts: dict[str, str], kind: str) -> None:
    assert health(scripts[kind], resource(kind, None))["status"] == "Progressing"
    never_observed = resource(kind, "Pending" if kind != "ModelDeployment" else "Deploying")
    del never_observed["status"]["observedGeneration"]
    assert health(scripts[kind], never_observed)["status"] == "Progressing"


@pytest.mark.parametrize("kind", ["TrainingJob", "TuningSweep"])
def test_run_messages_say_why(scripts: dict[str, str], kind: str) -> None:
    script = scripts[kind]
    assert health(script, resource(kind, "Queued"))["message"] == "needs 8 a100 GPUs; position 2"
    assert health(script, resource(kind, "Failed"))["message"] == "spec.dataset.uri: unknown"
    assert health(script, resource(kind, "Succeeded"))["message"] == "test_roc_auc=0.9900"
    running = resource(kind, "Running")
    running["status"]["progress"] = {"epoch": 12, "of": 300}
    assert health(script, running) == {"status": "Progressing", "message": "Running: 12 of 300"}


def test_deployment_is_healthy_only_when_ready(scripts: dict[str, str]) -> None:
    script = scripts["ModelDeployment"]
    not_ready = resource("ModelDeployment", "Available")
    not_ready["status"]["conditions"][0]["status"] = "False"
    assert health(script, not_ready)["status"] == "Progressing"
    rolled_back = health(script, resource("ModelDeployment", "RollingBack"))
    assert rolled_back == {
        "status": "Degraded",
        "message": "RollingBack because of something specific",
    }


def test_the_documented_application_installs_this_chart() -> None:
    text = (chart.REPO / "docs" / "argocd.md").read_text()
    docs = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)]
    apps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Application"}
    source = apps["mlplane"]["spec"]["source"]
    assert chart.REPO / source["path"] == chart.CHART
    assert all((chart.CHART / f).is_file() for f in source["helm"]["valueFiles"])
    destination = apps["mlplane"]["spec"]["destination"]
    assert destination["namespace"] == chart.NAMESPACE


@pytest.mark.parametrize(("kind", "summary"), [("GPUQuota", "a100 8/16"), ("NodePool", "8/24")])
def test_a_quota_or_pool_is_healthy_once_its_status_is_of_its_spec(
    scripts: dict[str, str], kind: str, summary: str
) -> None:
    found = resource(kind, None)
    assert health(scripts[kind], found)["status"] == "Progressing"
    found["status"] = {"observedGeneration": 1, "summary": summary}
    assert health(scripts[kind], found) == {
        "status": "Progressing",
        "message": "Waiting for the mlplane operator to observe generation 2",
    }
    found["status"]["observedGeneration"] = 2
    assert health(scripts[kind], found) == {"status": "Healthy", "message": summary}
