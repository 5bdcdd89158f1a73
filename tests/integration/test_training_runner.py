"""The training runner on a real Ray head and MLflow server, submitted as the operator does.

Every test submits `python -m mlplane.training train …` through the Ray Jobs API with the
operator's own runtime_env, then reads what the runner left in MLflow: the one run per job,
its per-epoch metrics, test metrics, gate verdict and the registered model.

All jobs are submitted together when the module starts (the `launched` fixture) and each test then
waits for its own: Ray runs them side by side, so the module takes about as long as its slowest
job instead of the sum of all of them.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from ray.job_submission import JobStatus, JobSubmissionClient
from service_fixtures import MotoServer
from sklearn.datasets import load_breast_cancer, load_wine

from mlplane.crds.trainingjob import TrainingJobSpec
from mlplane.operator.lifecycle import runner_entrypoint

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

JOB_TIMEOUT_SECONDS = 420


@dataclass
class Attempt:
    """How one submitted attempt ended."""

    status: JobStatus
    logs: str
    run: Run


@dataclass
class Runner:
    """Submits runner attempts to the test Ray head, the way the operator's ray backend does."""

    jobs: JobSubmissionClient
    tracking_uri: str
    storage_path: Path

    def submit(self, spec: dict[str, Any], uid: str, attempt: int = 1, name: str = "job") -> str:
        parsed = TrainingJobSpec.model_validate(spec)
        context = {
            "namespace": "tests",
            "name": name,
            "uid": uid,
            "attempt": attempt,
            "mlflowTrackingUri": self.tracking_uri,
            "storagePath": str(self.storage_path),
            "experiment": parsed.tracking.experiment or f"tests/{name}",
        }
        entrypoint = runner_entrypoint("train", parsed.to_dict(), context)
        return self.jobs.submit_job(
            entrypoint=entrypoint,
            submission_id=f"mlplane-{uid}-{attempt}",
            runtime_env=runtime_env(parsed),
        )

    def wait(self, submission_id: str, uid: str) -> Attempt:
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while not (status := self.jobs.get_job_status(submission_id)).is_terminal():
            assert time.monotonic() < deadline, f"{submission_id} still {status}"
            time.sleep(1)
        logs = self.jobs.get_job_logs(submission_id)
        runs = MlflowClient(self.tracking_uri).search_runs(
            _all_experiments(self.tracking_uri), filter_string=f"tags.`mlplane.uid` = '{uid}'"
        )
        assert len(runs) == 1, f"expected one MLflow run for {uid}, found {len(runs)}\n{logs}"
        return Attempt(status, logs, runs[0])

    def launch(self, spec: dict[str, Any], attempt: int = 1, uid: str | None = None) -> Launched:
        uid = uid or str(uuid.uuid4())
        return Launched(self, spec, uid, self.submit(spec, uid, attempt))


@dataclass
class Launched:
    """A submitted attempt; `result()` waits for it once and remembers how it ended."""

    runner: Runner
    spec: dict[str, Any]
    uid: str
    submission_id: str
    _result: Attempt | None = None

    def result(self) -> Attempt:
        if self._result is None:
            self._result = self.runner.wait(self.submission_id, self.uid)
        return self._result


def runtime_env(spec: TrainingJobSpec) -> dict[str, Any]:
    """The Ray runtime_env the operator builds from `spec.runtimeEnv`."""
    env: dict[str, Any] = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}
    if spec.runtime_env:
        env["env_vars"].update(spec.runtime_env.env_vars)
        if spec.runtime_env.working_dir:
            env["working_dir"] = str(Path(spec.runtime_env.working_dir).resolve())
    return env


def _all_experiments(tracking_uri: str) -> list[str]:
    return [e.experiment_id for e in MlflowClient(tracking_uri).search_experiments()]


@pytest.fixture(scope="module")
def runner(
    ray_cluster: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Runner:
    return Runner(
        JobSubmissionClient(ray_cluster), mlflow_server, tmp_path_factory.mktemp("checkpoints")
    )


@pytest.fixture(autouse=True, scope="module")
def _from_repo_root(repo_root: Path) -> Iterator[None]:
    """Relative workingDirs (examples/custom) are taken from the current directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo_root)
        yield


def example(repo_root: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((repo_root / "examples" / name).read_text())["spec"]


def _succeeded(attempt: Attempt) -> Run:
    assert attempt.status == JobStatus.SUCCEEDED, attempt.logs[-4000:]
    assert attempt.run.info.status == "FINISHED"
    return attempt.run


def _history(tracking_uri: str, run: Run, metric: str) -> list[int]:
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, metric)
    return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


@pytest.fixture(scope="module")
def s3_table(moto_server: MotoServer) -> str:
    """A parquet table on moto with a string label, a categorical column and missing values."""
    rng = np.random.default_rng(0)
    n = 400
    colour = rng.choice(["red", "green", "blue"], size=n)
    size = rng.normal(size=n)
    weight = rng.normal(size=n)
    weight[rng.choice(n, 30, replace=False)] = np.nan
    label = np.where((colour == "red") | (size > 0.5), "yes", "no")
    flipped = rng.random(n) < 0.1  # label noise: no model gets (nearly) all rows right
    label = np.where(flipped, np.where(label == "yes", "no", "yes"), label)
    frame = pd.DataFrame({"colour": colour, "size": size, "weight": weight, "label": label})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="tables")
    s3.put_object(Bucket="tables", Key="shapes/train.parquet", Body=buffer.getvalue())
    return "s3://tables/shapes/train.parquet"


@pytest.fixture(scope="module")
def launched(
    runner: Runner, repo_root: Path, s3_table: str, moto_server: MotoServer
) -> dict[str, Launched]:
    """Every job of this module, submitted at once."""
    specs = {
        "xgboost": example(repo_root, "trainingjob-xgboost.yaml"),
        "torch": example(repo_root, "trainingjob-torch.yaml"),
        "custom": example(repo_root, "trainingjob-custom.yaml"),
        # s3:// parquet on moto, and a gate that cannot hold: trained, logged, not registered.
        "s3_gated": {
            "framework": "xgboost",
            "dataset": {"uri": s3_table, "label": "label", "split": {"strategy": "random"}},
            "hyperparameters": {"num_boost_round": 10, "max_depth": 3},
            "runtimeEnv": {"envVars": moto_server.env},
            "tracking": {"experiment": "gates", "registerAs": "never-registered", "alias": "prod"},
            "gates": {"accuracy": ">= 0.999", "roc_auc": ">= 0.5"},
        },
        # Attempt 1 fails right after epoch 3 (fault injection); attempt 2 must resume at 4.
        "retried": {
            "framework": "xgboost",
            "dataset": {"uri": "sklearn://breast_cancer", "label": "target"},
            "hyperparameters": {"num_boost_round": 8, "max_depth": 2},
            "checkpoint": {"every": 1, "keep": 2},
            "retries": 1,
            "runtimeEnv": {"envVars": {"MLPLANE_TEST_FAIL_AT_EPOCH": "3"}},
            "tracking": {"experiment": "retries"},
        },
    }
    return {name: runner.launch(spec) for name, spec in specs.items()}


def test_xgboost_example_registers_a_candidate(
    launched: dict[str, Launched], runner: Runner
) -> None:
    run = _succeeded(launched["xgboost"].result())
    metrics, tags = run.data.metrics, run.data.tags

    assert metrics["test_roc_auc"] >= 0.97
    for name in ("accuracy", "f1", "pr_auc", "logloss"):
        assert f"test_{name}" in metrics
    assert "overfit_gap" in metrics
    assert tags["mlplane.gates"] == "passed"
    assert tags["mlplane.kind"] == "TrainingJob"
    assert tags["mlplane.attempt"] == "1"
    assert tags["mlplane.dataset_uri"] == "sklearn://breast_cancer"
    assert len(tags["mlplane.dataset_hash"]) == 64
    assert len(tags["mlplane.spec_hash"]) == 64
    assert tags["mlplane.epochs_planned"] == "60"
    assert run.data.params["eta"] == "0.1"
    epochs = _history(runner.tracking_uri, run, "val_logloss")
    assert epochs == list(range(1, len(epochs) + 1))
    assert {"train_logloss", "val_auc", "epoch"} <= set(metrics)

    client = MlflowClient(runner.tracking_uri)
    version = client.get_model_version_by_alias("churn-model", "candidate")
    assert tags["mlplane.model_name"] == "churn-model"
    assert tags["mlplane.model_version"] == version.version
    assert tags["mlplane.model_uri"] == f"models:/churn-model/{version.version}"

    # The registered model serves raw rows: the preprocessing is inside it.
    mlflow.set_tracking_uri(runner.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/churn-model@candidate")
    rows = load_breast_cancer(as_frame=True).frame.drop(columns="target").head(20)
    predicted = model.predict(rows)
    assert set(predicted["prediction"]) <= {0, 1}
    assert np.allclose(predicted["proba_0"] + predicted["proba_1"], 1.0, atol=1e-5)


def test_torch_example_trains_on_two_workers(launched: dict[str, Launched]) -> None:
    run = _succeeded(launched["torch"].result())
    metrics = run.data.metrics
    assert metrics["test_accuracy"] >= 0.90
    assert {"train_loss", "val_loss", "val_accuracy", "test_roc_auc"} <= set(metrics)
    assert run.data.params["workers"] == "2"
    assert run.data.tags["mlplane.gates"] == "passed"
    assert run.data.tags["mlplane.model_uri"].startswith("models:/digits-mlp/")


def test_custom_example_runs_the_users_function(
    launched: dict[str, Launched], runner: Runner
) -> None:
    attempt = launched["custom"].result()
    run = _succeeded(attempt)
    assert "hello from the runtime env" in attempt.logs  # the user's code, with its envVars
    assert _history(runner.tracking_uri, run, "val_accuracy") == [1, 2, 3, 4, 5]
    assert run.data.params["entrypoint"] == "wine_train:train_loop_per_worker"
    assert run.data.tags["mlplane.gates"] == "none"
    assert "test_accuracy" in run.data.metrics
    # The logged model carries the user's module, so it loads outside the working dir too.
    mlflow.set_tracking_uri(runner.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    rows = load_wine(as_frame=True).frame.drop(columns="target").head(5)
    assert len(model.predict(rows)) == 5


def test_s3_parquet_with_a_failing_gate_is_not_registered(
    launched: dict[str, Launched], runner: Runner, s3_table: str
) -> None:
    run = _succeeded(launched["s3_gated"].result())
    assert run.data.tags["mlplane.dataset_uri"] == s3_table
    assert run.data.params["task"] == "classification"
    assert run.data.metrics["test_accuracy"] > 0.75
    verdict = run.data.tags["mlplane.gates"]
    assert verdict.startswith("failed: accuracy 0.")
    assert verdict.endswith(" < 0.999")  # names the failing gate only
    assert "mlplane.model_version" not in run.data.tags
    assert not MlflowClient(runner.tracking_uri).search_registered_models(
        filter_string="name = 'never-registered'"
    )


def test_retry_resumes_from_the_latest_checkpoint(
    launched: dict[str, Launched], runner: Runner
) -> None:
    first_launch = launched["retried"]
    first = first_launch.result()
    assert first.status == JobStatus.FAILED
    error = "RuntimeError: injected failure after epoch 3 (MLPLANE_TEST_FAIL_AT_EPOCH)"
    assert first.logs.rstrip().splitlines()[-1] == error
    assert first.run.data.tags["mlplane.error"] == error
    assert first.run.info.status == "FAILED"

    second = runner.launch(first_launch.spec, attempt=2, uid=first_launch.uid).result()
    run = _succeeded(second)
    assert run.info.run_id == first.run.info.run_id  # one run per job, across attempts
    assert run.data.tags["mlplane.attempt"] == "2"
    assert "mlplane.error" not in run.data.tags
    # Epochs 1-3 come from attempt 1 and 4-8 from attempt 2: the count did not restart.
    assert _history(runner.tracking_uri, run, "epoch") == list(range(1, 9))
    assert run.data.metrics["epoch"] == 8
