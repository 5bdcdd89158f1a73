"""The operator's Prometheus metrics, read back through the text format Prometheus scrapes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlplane.operator.metrics import ObserveLag, OperatorMetrics, phases, seen


def scrape(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return scrape(metrics).get((name, tuple(sorted(labels.items()))))


def body(
    kind: str, uid: str, phase: str | None, namespace: str = "team-a", **status: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"uid": uid, "namespace": namespace, "name": uid},
        "status": {"phase": phase, **status} if phase else {},
    }


def observe(metrics: OperatorMetrics, kind: str, uid: str, phase: str | None, **kw: Any) -> None:
    metrics.view.update(uid, seen(kind, body(kind, uid, phase, **kw)))


def test_phases_come_from_the_api() -> None:
    assert phases("TrainingJob")[0] == "Pending" and "Failed" in phases("TuningSweep")
    assert "RollingBack" in phases("ModelDeployment")


def test_resources_are_counted_by_kind_namespace_and_phase() -> None:
    metrics = OperatorMetrics()
    observe(metrics, "TrainingJob", "a", "Running")
    observe(metrics, "TrainingJob", "b", "Running")
    observe(metrics, "TrainingJob", "c", None)
    observe(metrics, "ModelDeployment", "d", "Available", namespace="team-b")
    labels = {"kind": "TrainingJob", "namespace": "team-a"}
    assert value(metrics, "mlplane_resources", **labels, phase="Running") == 2
    assert value(metrics, "mlplane_resources", **labels, phase="Unknown") == 1
    assert (
        value(
            metrics,
            "mlplane_resources",
            kind="ModelDeployment",
            namespace="team-b",
            phase="Available",
        )
        == 1
    )


def test_a_phase_left_behind_drops_to_zero_instead_of_vanishing() -> None:
    metrics = OperatorMetrics()
    observe(metrics, "TrainingJob", "a", "Running")
    assert (
        value(metrics, "mlplane_resources", kind="TrainingJob", namespace="team-a", phase="Running")
        == 1
    )
    observe(metrics, "TrainingJob", "a", "Succeeded")
    labels = {"kind": "TrainingJob", "namespace": "team-a"}
    assert value(metrics, "mlplane_resources", **labels, phase="Running") == 0
    assert value(metrics, "mlplane_resources", **labels, phase="Succeeded") == 1
    metrics.view.update("a", None)  # deleted
    assert value(metrics, "mlplane_resources", **labels, phase="Succeeded") == 0


def test_gpus_allocated_and_queue_depth_follow_what_admission_wrote() -> None:
    metrics = OperatorMetrics()
    observe(
        metrics, "TrainingJob", "a", "Running", queue={"pool": "a100", "gpus": 8}, gpuSeconds=80
    )
    observe(metrics, "TuningSweep", "b", "Starting", queue={"pool": "a100", "gpus": 4})
    observe(metrics, "TrainingJob", "c", "Queued", queue={"pool": "a100", "gpus": 8, "position": 1})
    observe(
        metrics, "TrainingJob", "d", "Succeeded", queue={"pool": "t4", "gpus": 4}, gpuSeconds=40
    )
    observe(
        metrics, "TrainingJob", "e", "Running", namespace="team-b", queue={"pool": "t4", "gpus": 2}
    )
    assert value(metrics, "mlplane_gpus_allocated", pool="a100", namespace="team-a") == 12
    assert value(metrics, "mlplane_gpus_allocated", pool="t4", namespace="team-b") == 2
    assert value(metrics, "mlplane_gpus_allocated", pool="t4", namespace="team-a") is None
    assert value(metrics, "mlplane_queue_depth", pool="a100", namespace="team-a") == 1
    seconds = {"kind": "TrainingJob", "namespace": "team-a"}
    assert value(metrics, "mlplane_gpu_seconds", **seconds, pool="a100") == 80
    assert value(metrics, "mlplane_gpu_seconds", **seconds, pool="t4") == 40
    observe(metrics, "TrainingJob", "a", "Succeeded", queue={"pool": "a100", "gpus": 8})
    assert value(metrics, "mlplane_gpus_allocated", pool="a100", namespace="team-a") == 4


def test_reconcile_time_and_errors_are_counted_by_kind() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("TrainingJob"):
        pass
    with pytest.raises(ConnectionError), metrics.reconciling("TrainingJob"):
        raise ConnectionError("Ray is away")
    assert value(metrics, "mlplane_reconcile_duration_seconds_count", kind="TrainingJob") == 2
    assert value(metrics, "mlplane_reconcile_duration_seconds_count", kind="TuningSweep") == 0
    errors = value(
        metrics, "mlplane_reconcile_errors_total", kind="TrainingJob", reason="ConnectionError"
    )
    assert errors == 1


def test_transitions_count_only_changes() -> None:
    metrics = OperatorMetrics()
    metrics.transition("TrainingJob", None, "Starting")
    metrics.transition("TrainingJob", "Starting", "Starting")
    metrics.transition("TrainingJob", "Starting", "Running")
    labels = {"kind": "TrainingJob"}
    assert value(metrics, "mlplane_phase_transitions_total", **labels, phase="Starting") == 1
    assert value(metrics, "mlplane_phase_transitions_total", **labels, phase="Running") == 1
    assert value(metrics, "mlplane_phase_transitions_total", **labels, phase="Failed") == 0


def test_observe_lag_is_reported_for_every_kind() -> None:
    metrics = OperatorMetrics()
    metrics.registry.register(ObserveLag(lambda: {"TrainingJob": 7.5}))
    assert value(metrics, "mlplane_observe_lag_seconds", kind="TrainingJob") == 7.5
    assert value(metrics, "mlplane_observe_lag_seconds", kind="ModelDeployment") == 0.0
