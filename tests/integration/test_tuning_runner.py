"""The sweep runner on the session's Ray head and MLflow server, launched as the operator does.

Each sweep is submitted with the operator's own launch (`TuningSweepReconciler.launch_for`)
through the ray backend; the tests read what the runner left in MLflow: the parent run the
operator mirrors, and one child run per trial. The small sweeps all start when the module does
(the `launched` fixture) and each test waits for its own; `mlplane run` of the example comes
last, when the test head's CPUs are free again. Budget: about 3 minutes on an idle 2-core box.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from mlplane.crds.tuningsweep import TuningSweep
from mlplane.operator.admission import AdmitAll
from mlplane.operator.backends.base import JobState, Launch
from mlplane.operator.backends.ray import RayJobsBackend
from mlplane.operator.config import OperatorConfig
from mlplane.operator.tracking import MetricsFeed, Tracking
from mlplane.operator.tuningsweep import TuningSweepReconciler

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
SWEEP_TIMEOUT = 600
DEPTH_ERROR = "XGBoostError: value -1 for Parameter max_depth should be greater equal to 0"


def sweep_doc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    template = {
        "framework": "xgboost",
        "dataset": {"uri": "sklearn://breast_cancer", "label": "target"},
        "hyperparameters": {"num_boost_round": 6},
        "checkpoint": {"every": 3, "keep": 1},
        "tracking": {"experiment": "sweeps"},
    }
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "TuningSweep",
        "metadata": {"name": name, "namespace": "tests", "uid": str(uuid.uuid4())},
        "spec": {
            "template": template,
            "objective": {"metric": "val_auc", "mode": "max"},
            "earlyStopping": {"algorithm": "none"},
            **spec,
        },
    }


def failing_sweep(name: str, max_failures: int, **extra: Any) -> dict[str, Any]:
    """Half of a 2x2 grid sets max_depth -1, which xgboost refuses: two trials fail."""
    return sweep_doc(
        name,
        {
            "searchSpace": {"max_depth": {"choice": [3, -1]}, "eta": {"choice": [0.1, 0.3]}},
            "algorithm": "grid",
            "trials": {"max": 4, "parallel": 1, "maxFailures": max_failures},
            **extra,
        },
    )


@dataclass
class Launched:
    """A submitted attempt of one sweep."""

    sweep: TuningSweep
    launch: Launch


@dataclass
class Launcher:
    """Submits sweep attempts as the operator's reconciler and ray backend would."""

    reconciler: TuningSweepReconciler
    backend: RayJobsBackend
    client: MlflowClient

    def launch(self, doc: dict[str, Any], attempt: int = 1) -> Launched:
        sweep = TuningSweep.model_validate(doc)
        launch = self.reconciler.launch_for(sweep, attempt)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.backend.submit(launch)
                return Launched(sweep, launch)
            except RuntimeError as error:
                # A head that just started may not have its job agent yet (the operator's timer
                # retries the same way).
                if "No available agent" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def wait(self, launched: Launched, timeout: float = SWEEP_TIMEOUT) -> JobState:
        deadline = time.monotonic() + timeout
        while (state := self.backend.state(launched.launch.ref)).status in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, f"{launched.launch.submission_id} still {state}"
            time.sleep(1)
        return state

    def logs(self, launched: Launched) -> str:
        return self.backend.logs_tail(launched.launch.ref, lines=60)

    def parent(self, launched: Launched) -> Run | None:
        uid = launched.sweep.metadata.uid
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        found = self.client.search_runs(experiments, filter_string=f"tags.`mlplane.uid` = '{uid}'")
        assert len(found) <= 1, "one parent run per sweep"
        return found[0] if found else None

    def children(self, parent: Run) -> list[Run]:
        runs = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        )
        return sorted(runs, key=lambda r: int(r.data.tags["mlplane.trial_number"]))

    def epochs(self, run: Run) -> list[int]:
        history = self.client.get_metric_history(run.info.run_id, "epoch")
        return sorted(m.step for m in history)


@pytest.fixture(scope="module")
def launcher(
    ray_cluster: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Launcher:
    tracking = Tracking(mlflow_server)
    backend = RayJobsBackend(ray_cluster)
    config = OperatorConfig(data_dir=tmp_path_factory.mktemp("operator-data"))
    reconciler = TuningSweepReconciler(
        config, backend, tracking, MetricsFeed(tracking, max_age_seconds=0), AdmitAll()
    )
    return Launcher(reconciler, backend, MlflowClient(mlflow_server))


@pytest.fixture(scope="module")
def launched(launcher: Launcher) -> dict[str, Launched]:
    """The small sweeps, submitted at once: 5 trial CPUs on the test head's 4, and the torch
    sweep's trial gets one as soon as a failing sweep ends."""
    docs = {
        "tolerant": failing_sweep(
            "tolerant", 2, promoteBest={"registerAs": "sweep-tolerant", "alias": "best"}
        ),
        "strict": failing_sweep("strict", 1),
        "resumable": sweep_doc(
            "resumable",
            {
                "searchSpace": {
                    "eta": {"loguniform": {"low": 0.05, "high": 0.5}},
                    "max_depth": {"randint": {"low": 2, "high": 6}},
                },
                "algorithm": "random",
                "trials": {"max": 6, "parallel": 2},
            },
        ),
    }
    docs["resumable"]["spec"]["template"]["hyperparameters"]["num_boost_round"] = 60
    docs["resumable"]["spec"]["template"]["checkpoint"] = {"every": 5, "keep": 1}
    docs["torch"] = sweep_doc(
        "digits",
        {
            "searchSpace": {
                "lr": {"loguniform": {"low": 0.001, "high": 0.01}},
                "model.params.dropout": {"uniform": {"low": 0.0, "high": 0.3}},
            },
            "objective": {"metric": "val_accuracy", "mode": "max"},
            "trials": {"max": 2, "parallel": 1},
        },
    )
    docs["torch"]["spec"]["template"].update(
        framework="torch",
        dataset={"uri": "sklearn://digits", "label": "target"},
        model={"task": "classification", "params": {"hidden": [32]}},
        hyperparameters={"epochs": 3},
    )
    return {name: launcher.launch(doc) for name, doc in docs.items()}


@pytest.fixture
def mlplane_run(
    ray_cluster: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    """`mlplane run` of the example sweep, on the session's services."""
    env = {
        **os.environ,
        "MLPLANE_RAY_ADDRESS": ray_cluster,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_server,
        "MLPLANE_DATA_DIR": str(tmp_path_factory.mktemp("mlplane-run")),
        "COLUMNS": "140",
    }
    mlplane = Path(sys.executable).parent / "mlplane"
    process = subprocess.Popen(
        [str(mlplane), "run", "examples/tuningsweep-xgboost.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(
    launcher: Launcher, launched: dict[str, Launched]
) -> None:
    first = launched["resumable"]  # the module's first test: the sweep is young
    deadline = time.monotonic() + SWEEP_TIMEOUT
    while True:  # interrupt once two of its six trials have finished
        parent = launcher.parent(first)
        if parent and parent.data.metrics.get("trials_completed", 0) >= 2:
            break
        assert launcher.backend.state(first.launch.ref).status in ("PENDING", "RUNNING")
        assert time.monotonic() < deadline, "no two trials finished"
        time.sleep(1)
    launcher.backend.stop(first.launch.ref)
    assert launcher.wait(first).status == "STOPPED"
    before = launcher.children(parent)
    finished = {
        c.info.run_id: (c.info.end_time, launcher.epochs(c))
        for c in before
        if c.data.tags.get("mlplane.trial_state") == "completed"
    }
    assert len(finished) >= 2
    # Trials cut off well after a checkpoint (every 5 epochs; with keep 1 each one also snapshots
    # the experiment) continue from it rather than from epoch 1.
    checkpointed = {c.info.run_id for c in before if len(launcher.epochs(c)) >= 10} - set(finished)

    second = launcher.launch(first.sweep.to_dict(), attempt=2)
    assert launcher.wait(second).status == "SUCCEEDED", launcher.logs(second)
    parent = launcher.parent(second)
    assert parent and parent.data.tags["mlplane.attempt"] == "2"
    assert parent.data.metrics["trials_completed"] == 6
    children = launcher.children(parent)
    assert len(children) == 6  # no trial beyond trials.max, and none twice
    for child in children:
        if child.info.run_id in finished:  # not run again: same end, same single curve
            assert (child.info.end_time, launcher.epochs(child)) == finished[child.info.run_id]
        else:
            epochs = launcher.epochs(child)
            assert epochs[-1] == 60
            if child.info.run_id in checkpointed:
                assert epochs.count(1) == 1, epochs
    assert parent.data.tags["mlplane.gates"] == "none"


def test_failed_trials_within_max_failures_leave_the_sweep_succeeding(
    launcher: Launcher, launched: dict[str, Launched]
) -> None:
    sweep = launched["tolerant"]
    state = launcher.wait(sweep)
    assert state.status == "SUCCEEDED", launcher.logs(sweep)
    parent = launcher.parent(sweep)
    assert parent and parent.info.status == "FINISHED"
    metrics, tags = parent.data.metrics, parent.data.tags
    assert (metrics["trials_completed"], metrics["trials_failed"]) == (2, 2)
    assert tags["mlplane.trials_planned"] == "4"

    children = launcher.children(parent)
    assert len(children) == 4  # one child run per trial
    failed = [c for c in children if c.data.params["max_depth"] == "-1"]
    assert {c.info.status for c in failed} == {"FAILED"}
    assert {c.data.tags["mlplane.error"] for c in failed} == {DEPTH_ERROR}
    good = [c for c in children if c.data.params["max_depth"] == "3"]
    assert {c.data.tags["mlplane.trial_state"] for c in good} == {"completed"}
    assert all(launcher.epochs(c) == [1, 2, 3, 4, 5, 6] for c in good)  # per-epoch metrics

    best = yaml.safe_load(tags["mlplane.best_trial"])  # JSON is YAML
    assert best["params"]["max_depth"] == 3
    assert best["runId"] in {c.info.run_id for c in good}
    assert metrics["best_val_auc"] == max(c.data.metrics["val_auc"] for c in good)
    # Promoted once: the best trial's model, with its alias.
    assert tags["mlplane.gates"] == "none"
    version = launcher.client.get_model_version_by_alias("sweep-tolerant", "best")
    assert tags["mlplane.model_version"] == version.version == "1"
    assert "test_roc_auc" in metrics


def test_more_failed_trials_than_max_failures_fail_the_sweep_with_the_reason(
    launcher: Launcher, launched: dict[str, Launched]
) -> None:
    sweep = launched["strict"]
    state = launcher.wait(sweep)
    assert state.status == "FAILED"
    parent = launcher.parent(sweep)
    assert parent and parent.info.status == "FAILED"
    error = parent.data.tags["mlplane.error"]
    assert error.startswith("TooManyTrialFailures: 2 trials failed (maxFailures 1); first, trial ")
    assert error.endswith(DEPTH_ERROR)
    assert launcher.logs(sweep).rstrip().splitlines()[-1] == error  # what the operator reads
    assert parent.data.metrics["trials_failed"] == 2
    assert "mlplane.model_version" not in parent.data.tags


def test_a_torch_sweep_samples_a_nested_model_param(
    launcher: Launcher, launched: dict[str, Launched]
) -> None:
    sweep = launched["torch"]
    assert launcher.wait(sweep).status == "SUCCEEDED", launcher.logs(sweep)
    parent = launcher.parent(sweep)
    assert parent and parent.data.metrics["trials_completed"] == 2
    children = launcher.children(parent)
    assert [launcher.epochs(c) for c in children] == [[1, 2, 3], [1, 2, 3]]
    for child in children:
        assert 0.0 <= float(child.data.params["model.params.dropout"]) <= 0.3
        assert "val_accuracy" in child.data.metrics
    assert parent.data.metrics["test_accuracy"] > 0.5


def test_mlplane_run_shows_the_trials_and_the_best(mlplane_run: subprocess.Popen[str]) -> None:
    output, _ = mlplane_run.communicate(timeout=SWEEP_TIMEOUT)
    assert mlplane_run.returncode == 0, output[-4000:]
    table = output[: output.index("status:")]
    assert "churn-sweep: trials" in table
    for column in ("eta", "max_depth", "subsample", "min_child_weight", "val_auc", "epochs"):
        assert column in table
    assert "pruned" in table and "completed" in table
    assert "best: trial " in table
    status = yaml.safe_load(output[output.index("status:") :])["status"]
    assert status["phase"] == "Succeeded"
    trials = status["trials"]
    assert trials["completed"] + trials["pruned"] + trials.get("failed", 0) == 12
    assert status["metrics"]["test_roc_auc"] >= 0.98
    assert status["model"]["alias"] == "champion"
    assert f"best: trial {status['bestTrial']['number']}, val_auc=" in table
