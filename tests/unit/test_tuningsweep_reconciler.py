"""The TuningSweep state machine: the shared lifecycle with sweep-shaped status and promotion."""

import json
import uuid
from pathlib import Path

import pytest
import yaml
from inmemory import InMemoryJobs
from mlflow import MlflowClient

from mlplane.crds.trainingjob import RuntimeEnv
from mlplane.crds.tuningsweep import TuningSweep
from mlplane.operator.admission import AdmitAll
from mlplane.operator.config import OperatorConfig
from mlplane.operator.lifecycle import submission_id
from mlplane.operator.status import condition
from mlplane.operator.tracking import MetricsFeed, Tracking
from mlplane.operator.tuningsweep import INTERRUPTION_RETRIES, TuningSweepReconciler

EXAMPLE = Path(__file__).parents[2] / "examples" / "tuningsweep-xgboost.yaml"


@pytest.fixture
def parts(tmp_path: Path, tracking: Tracking, writer: MlflowClient):
    backend = InMemoryJobs()
    reconciler = TuningSweepReconciler(
        OperatorConfig(data_dir=tmp_path),
        backend,
        tracking,
        MetricsFeed(tracking, max_age_seconds=0),
        AdmitAll(),
    )
    return reconciler, backend, writer


def make_sweep() -> TuningSweep:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="team-a", uid=str(uuid.uuid4()), generation=1)
    return TuningSweep.model_validate(doc)


def step(reconciler: TuningSweepReconciler, sweep: TuningSweep) -> TuningSweep:
    sweep.status = reconciler.reconcile(sweep).status
    return sweep


def test_launch_runs_the_tune_command_with_parallel_workers(parts) -> None:
    reconciler, backend, _ = parts
    sweep = step(reconciler, make_sweep())
    assert sweep.status.phase == "Starting"
    launch = backend.submissions[0]
    assert launch.entrypoint.startswith("python -m mlplane.training tune ")
    assert launch.resources.workers == 2  # 1 worker per trial, 2 trials at once
    assert reconciler.gpus(sweep) == ("default", 0)


def test_a_local_path_in_the_template_is_refused_naming_its_field(parts) -> None:
    reconciler, backend, _ = parts
    sweep = make_sweep()
    sweep.spec.template.runtime_env = RuntimeEnv(py_modules=["../../../../etc"])
    sweep = step(reconciler, sweep)
    failed = condition(sweep.status.conditions, "Failed")
    assert (sweep.status.phase, failed.reason) == ("Failed", "InvalidSpec")
    assert failed.message.startswith(
        "spec.template.runtimeEnv.pyModules[0]: '../../../../etc' is a path on the operator's"
    )
    assert backend.submissions == []


def test_trial_counts_best_trial_and_promotion(parts, runner_opens) -> None:
    reconciler, backend, writer = parts
    sweep = step(reconciler, make_sweep())
    run_id = runner_opens(reconciler, sweep)
    log = writer
    log.set_tag(run_id, "mlplane.trials_planned", "12")
    for state, count in {"completed": 5, "running": 2, "failed": 1, "pruned": 3}.items():
        log.log_metric(run_id, f"trials_{state}", count)
    log.log_metric(run_id, "best_val_auc", 0.995)
    best = {"number": 4, "params": {"eta": 0.2, "max_depth": 3}, "metrics": {"val_auc": 0.995}}
    log.set_tag(run_id, "mlplane.best_trial", json.dumps(best))
    backend.jobs[sweep.status.ray.submission_id] = "RUNNING"
    sweep = step(reconciler, sweep)
    assert sweep.status.phase == "Running"
    assert sweep.status.trials.model_dump() == {
        "completed": 5,
        "running": 2,
        "failed": 1,
        "pruned": 3,
    }
    assert (sweep.status.progress.epoch, sweep.status.progress.of) == (9, 12)
    assert sweep.status.progress.eta_seconds is not None  # 3 trials to go at this pace
    assert sweep.status.best_trial.params == {"eta": 0.2, "max_depth": 3}
    assert sweep.status.key_metric == "val_auc=0.9950"

    for key, value in {
        "mlplane.gates": "passed",
        "mlplane.model_name": "churn-model",
        "mlplane.model_version": "4",
        "mlplane.model_uri": "models:/churn-model/4",
    }.items():
        log.set_tag(run_id, key, value)
    backend.jobs[sweep.status.ray.submission_id] = "SUCCEEDED"
    sweep = step(reconciler, sweep)
    assert sweep.status.phase == "Succeeded"
    assert sweep.status.model.alias == "champion"
    assert (
        "promoted models:/churn-model/4" in condition(sweep.status.conditions, "Complete").message
    )
    assert {c.type: c.observed_generation for c in sweep.status.conditions} == {
        "Admitted": 1,
        "Running": 1,
        "GatesPassed": 1,
        "Complete": 1,
    }


def test_too_many_failed_trials_fail_without_retry(parts, runner_opens) -> None:
    reconciler, backend, writer = parts
    sweep = step(reconciler, make_sweep())
    error = "TooManyTrialFailures: 3 trials failed (maxFailures 2); last: ValueError: boom"
    writer.set_tag(runner_opens(reconciler, sweep), "mlplane.error", error)
    backend.jobs[sweep.status.ray.submission_id] = "FAILED"
    sweep = step(reconciler, sweep)
    assert sweep.status.phase == "Failed"
    assert "TooManyTrialFailures" in condition(sweep.status.conditions, "Failed").message
    assert len(backend.submissions) == 1


def test_an_interrupted_sweep_is_resubmitted_to_resume(parts) -> None:
    reconciler, backend, _ = parts
    sweep = step(reconciler, make_sweep())
    uid = sweep.metadata.uid
    del backend.jobs[submission_id(uid, 1)]  # the Ray cluster restarted and forgot the job
    sweep = step(reconciler, sweep)
    assert sweep.status.phase == "Starting" and sweep.status.attempts == 2
    assert backend.submissions[-1].submission_id == submission_id(uid, 2)
    assert INTERRUPTION_RETRIES >= 1
