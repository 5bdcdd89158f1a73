"""`mlplane queue`'s view, drawn from statuses as the operator writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mlplane.operator.cli import app
from mlplane.operator.queue_view import Snapshot, held, render, short_duration, waiting

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def run(
    name: str,
    phase: str,
    pool: str = "a100",
    gpus: int = 4,
    position: int = 0,
    namespace: str = "team-a",
    kind: str = "TrainingJob",
    reason: str = "Admitted",
    since: str = "2026-12-05T11:57:30Z",
) -> dict[str, Any]:
    admitted = "False" if phase == "Queued" else "True"
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": "2026-12-05T11:00:00Z",
        },
        "status": {
            "phase": phase,
            "queue": {"pool": pool, "gpus": gpus, "position": position},
            "conditions": [
                {
                    "type": "Admitted",
                    "status": admitted,
                    "reason": reason,
                    "lastTransitionTime": since,
                }
            ],
        },
    }


RUNS = [
    run("done", "Succeeded"),
    run("a", "Running"),
    run("b", "Starting", gpus=8),
    run("c", "Queued", position=2, reason="WaitingForQuota", since="2026-12-05T11:59:15Z"),
    run("d", "Queued", position=1, reason="WaitingForQuota"),
    run("s", "Queued", pool="t4", gpus=2, position=1, namespace="team-b", kind="TuningSweep",
        reason="WaitingForCapacity"),
    run("e", "Running", pool="t4", gpus=2, namespace="team-b"),
]  # fmt: skip

QUOTA = {
    "metadata": {"name": "gpus", "namespace": "team-a"},
    "spec": {"pools": [{"name": "a100", "gpus": 12}, {"name": "t4", "gpus": 4}]},
    "status": {"pools": [{"name": "a100", "limit": 12, "used": 12, "queued": 8}]},
}


def shown(snapshot: Snapshot) -> list[list[str]]:
    console = Console(width=200, record=True)
    console.print(render(snapshot))
    return [line.split() for line in console.export_text().splitlines()]


def test_the_queue_is_in_line_order_with_its_reasons_and_waits() -> None:
    lines = waiting(RUNS)
    assert [(w.namespace, w.name, w.position) for w in lines] == [
        ("team-a", "trainingjob/d", 1),
        ("team-a", "trainingjob/c", 2),
        ("team-b", "tuningsweep/s", 1),
    ]
    rows = shown(Snapshot(RUNS, [QUOTA], NOW))
    assert ["team-a", "a100", "1", "trainingjob/d", "4", "WaitingForQuota", "2m30s"] in rows
    assert ["team-a", "a100", "2", "trainingjob/c", "4", "WaitingForQuota", "45s"] in rows


def test_pools_count_what_admitted_work_holds_and_what_waits() -> None:
    assert held(RUNS) == {"a100": 12, "t4": 2}
    a100 = {"metadata": {"name": "a100"}, "status": {"nodes": 3, "summary": "16/24"}}
    h100 = {"metadata": {"name": "h100"}, "status": {"nodes": 0, "summary": "0/0"}}
    rows = shown(Snapshot(RUNS, [], NOW, pools=[a100, h100]))
    assert ["a100", "3", "16/24", "12", "2", "8"] in rows  # all of a100 is counted, not just these
    assert ["h100", "0", "0/0", "0", "0", "0"] in rows
    assert ["t4", "-", "-", "2", "1", "2"] in rows  # a configured pool: no NodePool to count it


def test_each_quota_pool_is_a_row_even_before_the_operator_reports_it() -> None:
    rows = shown(Snapshot([], [QUOTA], NOW))
    assert ["team-a", "gpus", "a100", "12", "12", "8"] in rows
    assert ["team-a", "gpus", "t4", "0", "4", "0"] in rows


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m"), (192, "3m12s"), (7500, "2h5m"), (273600, "3d4h")],
)
def test_waits_read_as_kubectl_shows_ages(seconds: float, text: str) -> None:
    assert short_duration(seconds) == text


def test_without_a_cluster_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(app, ["queue"])
    assert result.exit_code == 1
    assert "mlplane queue: no cluster" in result.output
