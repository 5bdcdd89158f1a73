"""The TrainingJob state machine, step by step.

The backend here is an in-memory stand-in for the Ray Jobs API (tests/inmemory.py), so each
transition (retry, deadline, duplicate submission after a restart) can be forced; MLflow is real,
on a SQLite file. The same reconciler runs against real Ray in tests/e2e.
"""

import json
import shlex
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from inmemory import InMemoryJobs
from mlflow import MlflowClient
from wide_tables import feature_names

from mlplane.crds.trainingjob import TrainingJob
from mlplane.operator.admission import AdmitAll, Decision, Work
from mlplane.operator.backends.base import JobState
from mlplane.operator.config import CodePolicy, NodePool, OperatorConfig
from mlplane.operator.lifecycle import submission_id
from mlplane.operator.status import condition
from mlplane.operator.tracking import MetricsFeed, RunLookup, Tracking
from mlplane.operator.trainingjob import TrainingJobReconciler
from mlplane.training.__main__ import arguments, spec_and_context


class QueueEverything(AdmitAll):
    def admit(self, work: Work) -> Decision:
        decision = super().admit(work)
        return Decision(False, decision.queue.model_copy(update={"position": 1}), "no GPUs free")


def make_reconciler(
    tmp_path: Path, tracking: Tracking, backend: InMemoryJobs, local_code: bool = False
) -> TrainingJobReconciler:
    config = OperatorConfig(data_dir=tmp_path)
    feed = MetricsFeed(tracking, max_age_seconds=0)
    return TrainingJobReconciler(config, backend, tracking, feed, AdmitAll(), local_code)


@pytest.fixture
def parts(tmp_path: Path, tracking: Tracking, writer: MlflowClient, runner_opens):
    backend = InMemoryJobs()
    reconciler = make_reconciler(tmp_path, tracking, backend)
    global UID
    UID = str(uuid.uuid4())
    return reconciler, backend, lambda job: runner_opens(reconciler, job)


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


def test_launch_submits_once_and_the_run_the_runner_makes_is_found(parts) -> None:
    reconciler, backend, runner_opens = parts
    job = step(reconciler, make_job())
    assert job.status.phase == "Starting"
    assert condition(job.status.conditions, "Admitted").status == "True"
    assert job.status.attempts == 1
    assert [s.submission_id for s in backend.submissions] == [submission_id(UID, 1)]
    assert "--spec " in backend.submissions[0].entrypoint  # a small spec travels inline
    assert job.status.mlflow is None  # the runner makes the run as the attempt starts

    backend.jobs[job.status.ray.submission_id] = "RUNNING"
    run_id = runner_opens(job)
    job = step(reconciler, job)
    assert job.status.mlflow.run_id == run_id
    assert job.status.mlflow.url.endswith(f"/runs/{run_id}")


def test_restart_before_status_was_written_submits_nothing_new(parts) -> None:
    reconciler, backend, _ = parts
    step(reconciler, make_job())
    # The operator died before patching status: the next step starts from the original object.
    again = step(reconciler, make_job())
    assert len(backend.submissions) == 1
    assert again.status.ray.submission_id == submission_id(UID, 1)


def test_running_then_succeeded_with_metrics_model_and_gates(parts, writer) -> None:
    reconciler, backend, runner_opens = parts
    job = step(reconciler, make_job(gates={"roc_auc": ">= 0.9"}))
    sid, run_id = job.status.ray.submission_id, runner_opens(job)
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
    # Each condition names the spec it is about: kstatus readers (Argo CD, kubectl wait) take
    # one without observedGeneration for one about a spec the operator has not seen yet.
    assert {c.type: c.observed_generation for c in job.status.conditions} == {
        "Admitted": 1,
        "Running": 1,
        "GatesPassed": 1,
        "Complete": 1,
    }


def test_failed_gate_is_success_without_a_model(parts, writer) -> None:
    reconciler, backend, runner_opens = parts
    job = step(reconciler, make_job(gates={"roc_auc": ">= 0.999"}))
    verdict = "failed: roc_auc 0.99 < 0.999"
    writer.set_tag(runner_opens(job), "mlplane.gates", verdict)
    # Over before any timer saw it run: the run is found as it finishes.
    backend.jobs[job.status.ray.submission_id] = "SUCCEEDED"
    job = step(reconciler, job)
    assert job.status.phase == "Succeeded"
    gates = condition(job.status.conditions, "GatesPassed")
    assert gates.status == "False" and "roc_auc 0.99 < 0.999" in gates.message
    assert job.status.model is None


def test_failure_retries_then_fails_with_the_error(parts, writer) -> None:
    reconciler, backend, runner_opens = parts
    job = step(reconciler, make_job(retries=1))
    backend.jobs[submission_id(UID, 1)] = "FAILED"  # before the runner made the run
    job = step(reconciler, job)
    assert job.status.phase == "Starting" and job.status.attempts == 2
    assert backend.submissions[-1].submission_id == submission_id(UID, 2)

    writer.set_tag(runner_opens(job), "mlplane.error", "ValueError: bad column")
    backend.jobs[submission_id(UID, 2)] = "FAILED"
    backend.logs = "Traceback (most recent call last):\nValueError: bad column"
    job = step(reconciler, job)
    assert job.status.phase == "Failed"
    failed = condition(job.status.conditions, "Failed")
    assert failed.reason == "TrainingFailed"
    assert "attempt 2 of 2 failed: ValueError: bad column" in failed.message
    assert job.status.attempts == 2


def test_a_child_the_backend_refuses_fails_at_once_without_a_retry(parts) -> None:
    reconciler, backend, _ = parts
    job = step(reconciler, make_job(retries=2))
    refusal = "ValidationFailed: RayJob name should be a valid DNS1035 label"
    backend.details[job.status.ray.submission_id] = JobState("FAILED", refusal, "ValidationFailed")
    backend.logs = refusal
    job = step(reconciler, job)
    assert job.status.phase == "Failed" and job.status.attempts == 1
    failed = condition(job.status.conditions, "Failed")
    assert failed.reason == "ValidationFailed"
    assert "RayJob name should be a valid DNS1035 label" in failed.message
    assert len(backend.submissions) == 1


def test_a_spec_over_a_mebibyte_reaches_the_runner_in_arguments_under_128_kib(parts) -> None:
    reconciler, backend, _ = parts
    dataset = {"uri": "s3://data/wide.parquet", "label": "target"}
    job = step(reconciler, make_job(dataset={**dataset, "features": feature_names()}))
    assert len(json.dumps(job.spec.to_dict())) > 2**20
    assert job.status.phase == "Starting"
    entrypoint = backend.submissions[0].entrypoint
    # Ray runs the entrypoint as `sh -c ENTRYPOINT`: that one string is an argument too.
    argv = shlex.split(entrypoint)
    assert max(len(arg.encode()) for arg in [entrypoint, *argv]) < 128 * 1024
    assert argv[:4] == ["python", "-m", "mlplane.training", "train"]
    spec, context = spec_and_context(arguments(argv[3:]))
    assert spec == job.spec.to_dict()
    assert (context.uid, context.storage_path) == (
        UID,
        str(reconciler.config.data_dir / "checkpoints"),
    )


def test_a_runtime_env_too_big_for_ray_is_refused_naming_the_field(parts) -> None:
    reconciler, backend, _ = parts
    env_vars = {f"FEATURE_FLAG_{i}": "x" * 1000 for i in range(100)}
    job = step(reconciler, make_job(runtimeEnv={"envVars": env_vars}))
    failed = condition(job.status.conditions, "Failed")
    assert (job.status.phase, failed.reason) == ("Failed", "InvalidSpec")
    assert failed.message.startswith("spec.runtimeEnv: 99 KiB, over the 64 KiB")
    assert failed.message.endswith("the largest part is spec.runtimeEnv.envVars")
    assert backend.submissions == []


@pytest.mark.parametrize("backend_name", ["ray", "kuberay"])
def test_on_a_cluster_custom_code_is_a_remote_archive_not_a_local_path(
    tmp_path: Path, tracking: Tracking, backend_name: str
) -> None:
    """An operator never ships a path from its own disk: with the embedded default its Ray node
    is the operator's machine, `file://` included."""
    backend = InMemoryJobs(name=backend_name)
    reconciler = make_reconciler(tmp_path, tracking, backend)
    code = {
        "workingDir": "/var/run/secrets/kubernetes.io/serviceaccount",
        "pyModules": [
            "s3://code/lib.zip",
            "file:///opt/lib",
            "../../../../etc",
            "gcs://_ray_pkg_0123456789abcdef.zip",
        ],
    }
    job = step(reconciler, make_job(runtimeEnv=code))
    failed = condition(job.status.conditions, "Failed")
    assert (job.status.phase, failed.reason) == ("Failed", "InvalidSpec")
    assert failed.message.startswith(
        "spec.runtimeEnv.workingDir: '/var/run/secrets/kubernetes.io/serviceaccount' is a path "
        "on the operator's machine, which it never ships to a job; name a remote .zip"
    )
    assert "`mlplane package`" in failed.message
    assert "spec.runtimeEnv.pyModules[1]: 'file:///opt/lib' is a path" in failed.message
    assert "spec.runtimeEnv.pyModules[2]: '../../../../etc' is a path" in failed.message
    assert (
        "spec.runtimeEnv.pyModules[3]: 'gcs://_ray_pkg_0123456789abcdef.zip' is a gcs:// URI, "
        "which a job on a cluster may not fetch code from" in failed.message
    )
    assert "s3://code/lib.zip" not in failed.message
    assert backend.submissions == []
    assert job.status.queue is None  # refused before admission: it never held a GPU


def test_mlplane_run_ships_local_code_from_the_users_machine(
    tmp_path: Path, tracking: Tracking
) -> None:
    backend = InMemoryJobs()
    reconciler = make_reconciler(tmp_path, tracking, backend, local_code=True)
    job = step(reconciler, make_job(runtimeEnv={"workingDir": "examples/custom"}))
    assert job.status.phase == "Starting"
    working_dir = backend.submissions[0].runtime_env["working_dir"]
    assert working_dir == str(Path("examples/custom").resolve())


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


def test_a_delete_racing_the_submit_leaves_no_ray_job(parts) -> None:
    """The step submitted, the delete came before its status was written: the delete sees
    the resource as it was, and still stops the job the step started."""
    reconciler, backend, _ = parts
    job = make_job()
    reconciler.reconcile(job)  # submitted; its status (Starting, attempt 1) never written
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


def test_runs_are_found_by_uid_among_the_experiments_runs(
    tracking: Tracking, writer: MlflowClient
) -> None:
    experiment = f"find-{uuid.uuid4()}"
    lookups = [RunLookup(experiment, str(uuid.uuid4())) for _ in range(3)]
    assert tracking.find_runs(lookups) == {}  # no runner has started: no experiment yet
    experiment_id = writer.create_experiment(experiment)
    # Two resources of one name (made, deleted, made again) have runs, the third has not started;
    # a sweep's trial run has no UID.
    writer.create_run(experiment_id, run_name="nightly-0")
    made = {
        lookup.uid: writer.create_run(
            experiment_id, run_name="nightly", tags={"mlplane.uid": lookup.uid}
        ).info.run_id
        for lookup in lookups[:2]
    }
    found = tracking.find_runs(lookups)
    assert {uid: ref.run_id for uid, ref in found.items()} == made


def test_runs_started_before_the_resource_was_made_are_not_searched(
    tracking: Tracking, writer: MlflowClient
) -> None:
    experiment = f"since-{uuid.uuid4()}"
    uid = str(uuid.uuid4())
    writer.create_run(writer.create_experiment(experiment), run_name="j", tags={"mlplane.uid": uid})
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert tracking.find_runs([RunLookup(experiment, uid, later)]) == {}
    assert uid in tracking.find_runs([RunLookup(experiment, uid)])


def test_one_mlflow_query_serves_many_jobs(tracking: Tracking, writer: MlflowClient) -> None:
    feed = MetricsFeed(tracking, max_age_seconds=0.5)
    experiment_id = writer.create_experiment(f"batch-{uuid.uuid4()}")
    experiment = writer.get_experiment(experiment_id).name
    lookups = [RunLookup(experiment, str(uuid.uuid4())) for _ in range(5)]
    for i, lookup in enumerate(lookups):
        tags = {"mlplane.uid": lookup.uid}
        run = writer.create_run(experiment_id, run_name=f"j{i}", tags=tags)
        writer.log_metric(run.info.run_id, "epoch", i)
    # The first ask refreshes; the rest join the next refresh, which finds them all at once.
    first = [feed.find(lookup) for lookup in lookups]
    assert feed.queries == 1 and first[0] is not None and first[1:] == [None] * 4
    time.sleep(0.6)
    refs = [feed.find(lookup) for lookup in lookups]
    second = [feed.get(ref) for ref in refs]
    assert feed.queries == 2
    assert [s.metrics["epoch"] for s in second] == [0, 1, 2, 3, 4]


def test_a_job_whose_mlflow_run_is_missing_never_claims_its_gates_held(
    tmp_path: Path, tracking: Tracking
) -> None:
    """MLflow is the record: a Ray job that ended without a run there (another MLflow, a run
    deleted) is not Succeeded with GatesPassed "no gates set" while its gates were set."""
    backend = InMemoryJobs()
    reconciler = make_reconciler(tmp_path, tracking, backend)
    job = make_job(gates={"roc_auc": ">= 0.9"}, tracking={"registerAs": "m"})
    job.metadata.uid = "00000000-0000-4000-8000-00000000a11c"  # no runner ever opened a run
    job = step(reconciler, job)
    backend.jobs[job.status.ray.submission_id] = "SUCCEEDED"
    job = step(reconciler, job)
    failed = condition(job.status.conditions, "Failed")
    assert (job.status.phase, failed.reason) == ("Failed", "RunNotFound")
    assert f"no run tagged mlplane.uid={job.metadata.uid}" in failed.message
    assert condition(job.status.conditions, "GatesPassed") is None
    assert job.status.model is None


def test_the_secrets_a_job_names_travel_by_name_only(parts) -> None:
    reconciler, backend, _ = parts
    env = {"envVars": {"A": "1"}, "envFrom": [{"secretRef": {"name": "s3-credentials"}}]}
    step(reconciler, make_job(runtimeEnv=env))
    launch = backend.submissions[-1]
    assert launch.secret_env == ("s3-credentials",)
    assert launch.runtime_env["env_vars"]["A"] == "1"
    assert "s3-credentials" not in launch.entrypoint


def policed(tmp_path: Path, tracking: Tracking, backend: InMemoryJobs) -> TrainingJobReconciler:
    """An operator whose platform team lets team-* run only its own modules, installing from
    its own index, and other namespaces install nothing."""
    config = OperatorConfig(
        data_dir=tmp_path,
        code_policies=[
            CodePolicy(
                namespaces="team-*",
                entrypoint_modules=["team_a_models"],
                pip_index_url="https://pypi.team-a.example/simple",
            ),
            CodePolicy(pip=False),
        ],
    )
    feed = MetricsFeed(tracking, max_age_seconds=0)
    return TrainingJobReconciler(config, backend, tracking, feed, AdmitAll())


def test_a_namespaces_code_policy_limits_its_entrypoints_and_packages(
    tmp_path: Path, tracking: Tracking
) -> None:
    backend = InMemoryJobs()
    reconciler = policed(tmp_path, tracking, backend)
    code = {"workingDir": "s3://code/team-a.zip", "pip": ["lightgbm==4.6.0"]}
    refused = step(reconciler, make_job(model={"entrypoint": "os:system"}, runtimeEnv=code))
    failed = condition(refused.status.conditions, "Failed")
    assert (refused.status.phase, failed.reason) == ("Failed", "InvalidSpec")
    assert failed.message == (
        "spec.model.entrypoint: module 'os' is not one namespace 'team-a' may run "
        "(code_policies: team_a_models)"
    )
    assert backend.submissions == []

    ok = make_job(model={"entrypoint": "team_a_models.churn:train"}, runtimeEnv=code)
    ok.metadata.uid = "00000000-0000-4000-8000-0000000c0de5"
    assert step(reconciler, ok).status.phase == "Starting"
    assert backend.submissions[-1].runtime_env["pip"] == {
        "packages": ["lightgbm==4.6.0"],
        "pip_install_options": ["--index-url", "https://pypi.team-a.example/simple"],
    }

    elsewhere = make_job(runtimeEnv={"pip": ["lightgbm==4.6.0"]})
    elsewhere.metadata.namespace = "research"
    failed = condition(step(reconciler, elsewhere).status.conditions, "Failed")
    assert failed.message.startswith(
        "spec.runtimeEnv.pip: namespace 'research' may not install packages"
    )
