"""The TrainingJob state machine, step by step.

The backend here is an in-memory stand-in for the Ray Jobs API (tests/inmemory.py), so each
transition (retry, deadline, duplicate submission after a restart) can be forced; MLflow is real,
on a SQLite file. The same reconciler runs against real Ray in tests/e2e.
"""

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from inmemory import InMemoryJobs
from mlflow import MlflowClient

from mlplane.crds.trainingjob import TrainingJob
from mlplane.operator.admission import AdmitAll, Decision, Work
from mlplane.operator.config import NodePool, OperatorConfig
from mlplane.operator.lifecycle import submission_id
from mlplane.operator.status import condition
from mlplane.operator.tracking import MetricsFeed, Tracking
from mlplane.operator.trainingjob import TrainingJobReconciler


class QueueEverything(AdmitAll):
    def admit(self, work: Work) -> Decision:
        decision = super().admit(work)
        return Decision(False, decision.queue.model_copy(update={"position": 1}), "no GPUs free")


@pytest.fixture
def parts(tmp_path: Path, tracking: Tracking, writer: MlflowClient):
    backend = InMemoryJobs()
    config = OperatorConfig(data_dir=tmp_path)
    reconciler = TrainingJobReconciler(
        config, backend, tracking, MetricsFeed(tracking, max_age_seconds=0), AdmitAll()
    )
    global UID
    UID = str(uuid.uuid4())
    return reconciler, backend, writer


UID = "u-1"


def make_job(**spec) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "team-a", "uid": UID, "generation": 1},
            "spec": {
                "framework": "xgboost",
                "dataset": {"uri": "sklearn://breast_cancer", "label": "target"},
                **spec,
            },
        }
    )


def step(reconciler: TrainingJobReconciler, job: TrainingJob) -> TrainingJob:
    job.status = reconciler.reconcile(job).status
    return job


def test_launch_creates_the_mlflow_run_and_one_submission(parts) -> None:
    reconciler, backend, writer = parts
    job = step(reconciler, make_job())
    assert job.status.phase == "Starting"
    assert condition(job.status.conditions, "Admitted").status == "True"
    assert job.status.attempts == 1
    assert [s.submission_id for s in backend.submissions] == [submission_id(UID, 1)]
    run = writer.get_run(job.status.mlflow.run_id)
    assert run.data.tags["mlplane.uid"] == UID
    assert "--spec-json" in backend.submissions[0].entrypoint


def test_restart_before_status_was_written_submits_nothing_new(parts) -> None:
    reconciler, backend, _ = parts
    step(reconciler, make_job())
    # The operator died before patching status: the next step starts from the original object.
    again = step(reconciler, make_job())
    assert len(backend.submissions) == 1
    assert again.status.ray.submission_id == submission_id(UID, 1)


def test_running_then_succeeded_with_metrics_model_and_gates(parts) -> None:
    reconciler, backend, writer = parts
    job = step(reconciler, make_job(gates={"roc_auc": ">= 0.9"}))
    sid, run_id = job.status.ray.submission_id, job.status.mlflow.run_id
    backend.jobs[sid] = "RUNNING"
    writer.set_tag(run_id, "mlplane.epochs_planned", "10")
    writer.log_metric(run_id, "epoch", 4)
    writer.log_metric(run_id, "val_auc", 0.97)
    job = step(reconciler, job)
    assert job.status.phase == "Running"
    assert (job.status.progress.epoch, job.status.progress.of) == (4, 10)
    assert job.status.metrics["val_auc"] == pytest.approx(0.97)

    writer.log_metric(run_id, "test_roc_auc", 0.991)
    for key, value in {
        "mlplane.gates": "passed",
        "mlplane.model_name": "m",
        "mlplane.model_version": "3",
        "mlplane.model_uri": "models:/m/3",
    }.items():
        writer.set_tag(run_id, key, value)
    backend.jobs[sid] = "SUCCEEDED"
    job = step(reconciler, job)
    assert job.status.phase == "Succeeded"
    assert condition(job.status.conditions, "Complete").status == "True"
    assert condition(job.status.conditions, "GatesPassed").status == "True"
    assert job.status.model.uri == "models:/m/3"
    assert job.status.key_metric == "test_roc_auc=0.9910"
    assert job.status.completion_time is not None


def test_failed_gate_is_success_without_a_model(parts) -> None:
    reconciler, backend, writer = parts
    job = step(reconciler, make_job(gates={"roc_auc": ">= 0.999"}))
    verdict = "failed: roc_auc 0.99 < 0.999"
    writer.set_tag(job.status.mlflow.run_id, "mlplane.gates", verdict)
    backend.jobs[job.status.ray.submission_id] = "SUCCEEDED"
    job = step(reconciler, job)
    assert job.status.phase == "Succeeded"
    gates = condition(job.status.conditions, "GatesPassed")
    assert gates.status == "False" and "roc_auc 0.99 < 0.999" in gates.message
    assert job.status.model is None


def test_failure_retries_then_fails_with_the_error(parts) -> None:
    reconciler, backend, writer = parts
    job = step(reconciler, make_job(retries=1))
    backend.jobs[submission_id(UID, 1)] = "FAILED"
    job = step(reconciler, job)
    assert job.status.phase == "Starting" and job.status.attempts == 2
    assert backend.submissions[-1].submission_id == submission_id(UID, 2)

    writer.set_tag(job.status.mlflow.run_id, "mlplane.error", "ValueError: bad column")
    backend.jobs[submission_id(UID, 2)] = "FAILED"
    backend.logs = "Traceback (most recent call last):\nValueError: bad column"
    job = step(reconciler, job)
    assert job.status.phase == "Failed"
    failed = condition(job.status.conditions, "Failed")
    assert failed.reason == "TrainingFailed"
    assert "attempt 2 of 2 failed: ValueError: bad column" in failed.message
    assert job.status.attempts == 2


def test_error_from_logs_when_the_runner_could_not_tag(parts) -> None:
    reconciler, backend, _ = parts
    job = step(reconciler, make_job())
    backend.jobs[job.status.ray.submission_id] = "FAILED"
    backend.logs = "some output\nModuleNotFoundError: No module named 'my_pkg'\n"
    job = step(reconciler, job)
    assert "ModuleNotFoundError: No module named 'my_pkg'" in job.status.conditions[-1].message


def test_deadline_stops_the_ray_job(parts) -> None:
    reconciler, backend, _ = parts
    job = step(reconciler, make_job(activeDeadlineSeconds=1))
    backend.jobs[job.status.ray.submission_id] = "RUNNING"
    job.status.start_time = job.status.start_time.replace(year=2000)
    job = step(reconciler, job)
    assert job.status.phase == "Failed"
    assert condition(job.status.conditions, "Failed").reason == "DeadlineExceeded"
    assert backend.stopped == [submission_id(UID, 1)]


def test_delete_stops_once(parts) -> None:
    reconciler, backend, _ = parts
    job = step(reconciler, make_job())
    reconciler.delete(job)
    reconciler.delete(job)
    assert backend.stopped == [submission_id(UID, 1)]


def test_queued_work_is_not_launched(parts, tmp_path: Path) -> None:
    reconciler, backend, _ = parts
    reconciler.admission = QueueEverything()
    job = step(reconciler, make_job())
    assert job.status.phase == "Queued"
    assert job.status.queue.position == 1
    assert condition(job.status.conditions, "Admitted").message == "no GPUs free"
    assert backend.submissions == []


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ({"nodePool": "h100"}, "spec.resources.nodePool: no node pool 'h100'; known: a100"),
        ({"perWorker": {"gpu": 16}, "nodePool": "a100"}, "16 GPUs per worker"),
    ],
)
def test_semantic_problems_fail_as_invalid_spec(parts, resources: dict, words: str) -> None:
    reconciler, backend, _ = parts
    reconciler.config = OperatorConfig(
        data_dir=Path("/tmp"), node_pools=[NodePool(name="a100", gpus_per_node=8)]
    )
    job = step(reconciler, make_job(resources=resources))
    assert job.status.phase == "Failed"
    failed = condition(job.status.conditions, "Failed")
    assert failed.reason == "InvalidSpec" and words in failed.message
    assert backend.submissions == []


def test_gpus_without_any_gpu_pool_are_refused(parts) -> None:
    reconciler, _, _ = parts
    job = step(reconciler, make_job(resources={"perWorker": {"gpu": 1}}))
    assert "spec.resources.perWorker.gpu" in condition(job.status.conditions, "Failed").message


def test_a_jobs_run_is_made_once_across_retried_steps_and_operator_restarts(
    tracking: Tracking, writer: MlflowClient
) -> None:
    uid, created = str(uuid.uuid4()), datetime.now(UTC).isoformat()
    first = tracking.ensure_run("once", uid, "j", {}, created)
    assert tracking.ensure_run("once", uid, "j", {}, created) == first  # the launch failed
    # The operator stopped before it wrote the status; its successor searches MLflow.
    restarted = Tracking(tracking.tracking_uri)
    assert restarted.ensure_run("once", uid, "j", {}, created) == first
    runs = writer.search_runs([first.experiment_id], filter_string=f"tags.`mlplane.uid` = '{uid}'")
    assert [r.info.run_id for r in runs] == [first.run_id]


def test_one_mlflow_query_serves_many_jobs(tracking: Tracking, writer: MlflowClient) -> None:
    feed = MetricsFeed(tracking, max_age_seconds=0.5)
    refs = [
        tracking.ensure_run("batch", uid=str(uuid.uuid4()), run_name=f"j{i}", tags={})
        for i in range(5)
    ]
    for i, ref in enumerate(refs):
        writer.log_metric(ref.run_id, "epoch", i)
    first = [feed.get(ref) for ref in refs]  # the first ask refreshes; the rest join the next
    assert feed.queries == 1 and first[0] is not None
    time.sleep(0.6)
    second = [feed.get(ref) for ref in refs]
    assert feed.queries == 2
    assert [s.metrics["epoch"] for s in second] == [0, 1, 2, 3, 4]
