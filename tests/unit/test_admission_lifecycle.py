"""Admission inside the run lifecycle: the GPU ledger's queue on the status, Kueue hand-off, and
the reasons a launched attempt does not start, step by step with an in-memory backend."""

import uuid
from pathlib import Path

import pytest
from inmemory import InMemoryJobs

from mlplane.crds.trainingjob import TrainingJob
from mlplane.operator.backends.base import AttemptRef, JobState
from mlplane.operator.config import NodePool, OperatorConfig
from mlplane.operator.lifecycle import submission_id
from mlplane.operator.quota import GpuLedger, config_limits
from mlplane.operator.status import condition
from mlplane.operator.tracking import MetricsFeed, Tracking
from mlplane.operator.trainingjob import TrainingJobReconciler

A100 = NodePool(name="a100", gpus_per_node=8, nodes=3)


@pytest.fixture
def parts(tmp_path: Path, tracking: Tracking):
    config = OperatorConfig(
        data_dir=tmp_path, node_pools=[A100], gpu_quotas={"team-a": {"a100": 8}}
    )
    ledger = GpuLedger(config_limits(config, namespace_quota=lambda ns: None))
    backend = InMemoryJobs(name="kuberay")
    feed = MetricsFeed(tracking, max_age_seconds=0)
    return TrainingJobReconciler(config, backend, tracking, feed, ledger), backend, ledger


def make_job(n: int, workers: int = 1, **spec) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {
                "name": f"j{n}",
                "namespace": "team-a",
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "creationTimestamp": f"2026-11-22T10:00:0{n}Z",
            },
            "spec": {
                "framework": "xgboost",
                "dataset": {"uri": "sklearn://iris", "label": "target"},
                "resources": {"workers": workers, "perWorker": {"gpu": 4}, "nodePool": "a100"},
                **spec,
            },
        }
    )


def step(reconciler: TrainingJobReconciler, job: TrainingJob) -> TrainingJob:
    job.status = reconciler.reconcile(job).status
    return job


def test_over_quota_work_is_queued_with_its_position_and_why(parts) -> None:
    reconciler, backend, _ = parts
    first, second, third = (step(reconciler, make_job(n)) for n in (1, 2, 3))
    assert [j.status.phase for j in (first, second, third)] == ["Starting", "Starting", "Queued"]
    queue = third.status.queue
    assert (queue.pool, queue.gpus, queue.position) == ("a100", 4, 1)
    admitted = condition(third.status.conditions, "Admitted")
    assert (admitted.status, admitted.reason) == ("False", "Queued")
    assert admitted.message == "needs 4 a100 GPUs; team-a uses 8 of 8 a100 GPUs; position 1"
    assert len(backend.submissions) == 2  # nothing launched for the queued job


def test_a_finished_job_lets_the_next_one_in(parts) -> None:
    reconciler, backend, ledger = parts
    first, _, third = (step(reconciler, make_job(n)) for n in (1, 2, 3))
    backend.jobs[first.status.ray.submission_id] = "SUCCEEDED"
    assert step(reconciler, first).status.phase == "Succeeded"
    third = step(reconciler, third)
    assert third.status.phase == "Starting"
    assert third.status.queue.position == 0
    assert ledger.held("a100", "team-a") == 8


def test_gpu_seconds_count_the_gpus_held(parts) -> None:
    reconciler, backend, _ = parts
    job = step(reconciler, make_job(1, workers=2))
    job.status.start_time = job.status.start_time.replace(year=job.status.start_time.year - 1)
    backend.jobs[job.status.ray.submission_id] = "RUNNING"
    job = step(reconciler, job)
    # 2 workers x 4 GPUs for about a year.
    assert job.status.gpu_seconds == pytest.approx(8 * 365 * 86400, rel=0.01)


def test_kueue_admits_instead_of_the_ledger(parts) -> None:
    reconciler, backend, ledger = parts
    for n in (1, 2):
        step(reconciler, make_job(n))  # the team's quota is used up
    job = step(reconciler, make_job(3, queueName="team-a-gpus"))
    assert job.status.phase == "Starting"
    assert backend.submissions[-1].queue_name == "team-a-gpus"
    assert job.status.queue.name == "team-a-gpus"
    assert ledger.held("a100", "team-a") == 8  # not counted: Kueue's quota, not ours
    sid = job.status.ray.submission_id
    backend.details[sid] = JobState("PENDING", "suspended", "Suspended")
    job = step(reconciler, job)
    assert job.status.phase == "Queued"
    assert condition(job.status.conditions, "Admitted").status == "Unknown"
    del backend.details[sid]
    job = step(reconciler, job)
    assert job.status.phase == "Starting"
    assert condition(job.status.conditions, "Admitted").reason == "KueueAdmitted"
    assert len(backend.submissions) == 3  # waiting for Kueue never resubmits


def test_kueue_needs_the_kuberay_backend(parts) -> None:
    reconciler, backend, _ = parts
    backend.name = "ray"
    job = step(reconciler, make_job(1, queueName="team-a-gpus"))
    assert job.status.phase == "Failed"
    assert "spec.queueName" in condition(job.status.conditions, "Failed").message


def test_a_stuck_launch_says_why_once(parts) -> None:
    reconciler, backend, _ = parts
    job = step(reconciler, make_job(1))
    backend.details[submission_id(job.metadata.uid, 1)] = JobState(
        "PENDING", 'Back-off pulling image "mlplane:typo"', "ImagePullBackOff"
    )
    stepped = reconciler.reconcile(job)
    job.status = stepped.status
    running = condition(job.status.conditions, "Running")
    assert (running.status, running.reason) == ("False", "ImagePullBackOff")
    assert [e.reason for e in stepped.events] == ["ImagePullBackOff"]
    assert job.status.phase == "Starting"
    assert reconciler.reconcile(job).events == []  # not again on every tick


def test_the_first_step_says_once_what_became_of_the_job(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Event per job for its admission (no Pending a user never sees as the phase), and
    the child just made is left to the next step to observe."""
    reconciler, backend, _ = parts
    observed: list[str] = []
    state = backend.state

    def observing(ref: AttemptRef) -> JobState:
        observed.append(ref.submission_id)
        return state(ref)

    monkeypatch.setattr(backend, "state", observing)
    first, second, third = (reconciler.reconcile(make_job(n)) for n in (1, 2, 3))
    assert [[e.reason for e in s.events] for s in (first, second, third)] == [
        ["Launched"],
        ["Launched"],
        ["Queued"],
    ]
    assert observed == []
