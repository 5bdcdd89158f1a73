"""Admission inside the run lifecycle: the GPU ledger's queue on the status, Kueue hand-off, and
the reasons a launched attempt does not start, step by step with an in-memory backend."""

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from inmemory import InMemoryJobs

from mlplane.crds.trainingjob import TrainingJob
from mlplane.operator.backends.base import AttemptRef, JobState
from mlplane.operator.config import NodePool, OperatorConfig
from mlplane.operator.handlers import status_patch
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
    assert (admitted.status, admitted.reason) == ("False", "WaitingForQuota")
    assert admitted.message == "needs 4 a100 GPUs; team-a uses 8 of 8 a100 GPUs; position 1"
    assert len(backend.submissions) == 2  # nothing launched for the queued job


def test_a_finished_job_lets_the_next_one_in(parts, runner_opens) -> None:
    reconciler, backend, ledger = parts
    first, _, third = (step(reconciler, make_job(n)) for n in (1, 2, 3))
    runner_opens(reconciler, first)
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
        ["WaitingForQuota"],
    ]
    assert observed == []


def test_a_submit_that_fails_gives_back_its_gpus_and_says_why(parts) -> None:
    reconciler, backend, ledger = parts
    backend.refusal = ConnectionError("the Ray dashboard refused the connection")
    job = make_job(1)
    result = reconciler.reconcile(job)
    job.status = result.status
    admitted = condition(job.status.conditions, "Admitted")
    assert (job.status.phase, admitted.reason) == ("Pending", "SubmitFailed")
    assert admitted.message == (
        "attempt 1 was not submitted: ConnectionError: the Ray dashboard refused the connection"
    )
    assert [e.reason for e in result.events] == ["SubmitFailed"]
    assert ledger.held("a100", "team-a") == 0  # nothing held while nothing runs
    backend.refusal = None
    assert step(reconciler, make_job(2)).status.phase == "Starting"
    job = step(reconciler, job)  # the next pass submits the same attempt
    assert job.status.phase == "Starting"
    assert [s.submission_id for s in backend.submissions][-1].endswith("-1")
    assert ledger.held("a100", "team-a") == 8


def test_an_admission_is_recorded_before_anything_is_launched(parts) -> None:
    reconciler, backend, _ = parts
    recorded: list[tuple[str | None, str | None, int]] = []

    def record(status) -> None:
        admitted = condition(status.conditions, "Admitted")
        recorded.append((status.phase, admitted.status, len(backend.submissions)))
        assert status.ray is None

    job = make_job(1)
    job.status = reconciler.reconcile(job, record=record).status
    assert recorded == [("Starting", "True", 0)]
    assert job.status.phase == "Starting" and job.status.ray
    assert len(backend.submissions) == 1

    queued = make_job(2, workers=2)
    reconciler.reconcile(queued, record=record)
    assert len(recorded) == 1  # a job the ledger queues changes nothing outside its status


def test_a_restart_between_admission_and_launch_neither_overfills_nor_relaunches(
    parts, tracking: Tracking
) -> None:
    """The operator stopped right after it recorded an admission: the ledger a new operator
    rebuilds from the statuses counts those GPUs, so later work waits, and the admitted job is
    launched once, by its own next step."""
    reconciler, backend, _ = parts
    first = make_job(1, workers=2)
    recorded: list = []

    def record_then_stop(status) -> None:
        recorded.append(status.model_copy(deep=True))
        raise KeyboardInterrupt  # as abrupt as a SIGKILL: nothing after it runs

    with pytest.raises(KeyboardInterrupt):
        reconciler.reconcile(first, record=record_then_stop)
    first.status = recorded[0]
    assert backend.submissions == []

    config = reconciler.config
    ledger = GpuLedger(config_limits(config, namespace_quota=lambda ns: None))
    restarted = TrainingJobReconciler(
        config, backend, tracking, MetricsFeed(tracking, max_age_seconds=0), ledger
    )
    ledger.rebuild([(restarted.work(first), first.status.phase)])
    second = step(restarted, make_job(2))
    assert second.status.phase == "Queued"
    first = step(restarted, first)
    assert first.status.phase == "Starting"
    assert [s.submission_id for s in backend.submissions] == [submission_id(first.metadata.uid, 1)]
    step(restarted, first)
    assert len(backend.submissions) == 1


def test_a_run_bigger_than_its_pool_fails_at_once_and_holds_no_one_up(parts) -> None:
    reconciler, backend, ledger = parts
    huge = step(reconciler, make_job(1, workers=7))  # 28 GPUs; the pool has 3 nodes of 8
    failed = condition(huge.status.conditions, "Failed")
    assert (huge.status.phase, failed.reason) == ("Failed", "ExceedsPoolCapacity")
    assert failed.message == "needs 28 a100 GPUs; pool a100 has 24 GPUs in all"
    assert step(reconciler, make_job(2)).status.phase == "Starting"
    assert ledger.waiting() == [] and backend.submissions[0].submission_id.endswith("-1")


def test_a_running_job_observed_again_writes_no_status(parts) -> None:
    """Time passing alone changes nothing on the resource: a hundred running jobs observed every
    second would otherwise be a hundred status writes a second."""
    reconciler, backend, _ = parts
    job = step(reconciler, make_job(1))
    job.status.start_time -= timedelta(seconds=30)  # within the current GPU-minute
    backend.jobs[job.status.ray.submission_id] = "RUNNING"
    job = step(reconciler, job)
    assert job.status.phase == "Running" and job.status.gpu_seconds == 0
    before = job.status.to_dict()
    time.sleep(1.1)
    assert status_patch(step(reconciler, job).status, before) == {}

    job.status.start_time -= timedelta(minutes=1)
    assert step(reconciler, job).status.gpu_seconds == 4 * 60  # in whole minutes while held
