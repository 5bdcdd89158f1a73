"""The operator SIGKILLed at random points while GPU jobs run and wait on KubeRay (issue #23).

The short version of bench/operator_kills.py, with the same parts (tests/e2e/operator_chaos.py):
`mlplane operator` (kuberay backend, 1 s observe interval) in a process group of its own, in a
namespace whose a100 quota admits one job at a time; six jobs applied in order; its process group
SIGKILLed ten times, at random moments and right after a job is applied, admitted or its RayJob
made, and restarted each time. kwok pods run no code, so the Ray job inside each RayJob is played
on top of KubeRay's own status, as in test_kuberay.py. A monitor reads the namespace every ~0.1 s
throughout and counts duplicate submissions, lost jobs, GPU-seconds over quota and jobs running
while Queued: all must be zero, and every job Succeeded. The jobs take 2 GPUs each, not the
bench's 8: KubeRay keeps a finished job's cluster for 10 minutes and the suite's control plane
has 24 a100 GPUs for every test. Budget: about 50 s on a 2-core machine, plus 20 s to start a
cold control plane.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e.operator_chaos import (
    Chaos,
    Operator,
    delete_jobs,
    operator_config,
    timeline_of,
    violated,
)
from tests.e2e.test_kuberay import STARTUP_TIMEOUT

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
NAMESPACE = f"kills-{uuid.uuid4().hex[:6]}"
JOBS, KILLS, GPUS = 6, 10, 2
"""Jobs of GPUS a100 GPUs in a namespace with a quota of GPUS: one runs, the rest wait Queued."""
SEED = 2
"""The kill plan (see operator_chaos): 4 kills drawn right after an apply, 2 after a RayJob's
creation, 1 after an admission, 3 at random (those with nothing to wait for become random)."""


@pytest.fixture
def namespace(k8s_api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    core = client.CoreV1Api(k8s_api)
    core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {"mlplane.dev/test": "true"}}})
    yield NAMESPACE
    core.delete_namespace(NAMESPACE)


def test_a_sigkilled_operator_loses_doubles_and_overruns_nothing(
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    mlflow_server: str,
    tmp_path: Path,
) -> None:
    pools = REPO / "operator" / "cluster" / "nodepools.yaml"
    config = operator_config(namespace, mlflow_server, tmp_path, pools, quota_gpus=GPUS)
    operator = Operator(tmp_path, kubeconfig, config, namespace)
    chaos = Chaos(
        k8s_api,
        namespace,
        operator,
        mlflow_server,
        jobs=JOBS,
        kills=KILLS,
        gpus=GPUS,
        quota_gpus=GPUS,
        seed=SEED,
        startup_timeout=STARTUP_TIMEOUT,
        run_seconds=(1.0, 8.0),  # shorter Ray jobs than the bench's: fewer kills per job
        backlog=2,  # one running, one Queued: jobs are left for the kills after an apply
        trigger_wait=10,
        settle=90,
        log=print,  # shown with -s, and in the report of a failure
    )
    try:
        report = chaos.run()
        delete_jobs(k8s_api, namespace)  # while the operator runs: it lets go of the finalizers
    finally:
        operator.stop()

    shown = {k: v for k, v in report.items() if k not in ("violations", "loop_first_errors")}
    seen = f"{json.dumps(shown, indent=1)}\n{timeline_of(report)}"
    assert report["kills"] == KILLS, seen
    assert report["kill_triggers"].get("apply"), seen  # the admission step was hit
    assert not violated(report), f"{report['invariants']}\n{timeline_of(report)}\n{seen}"
    assert report["succeeded"] == JOBS, f"{seen}\n{operator.log()[-3000:]}"
    # The monitor saw the whole run: no stretch without a sample long enough to hide a violation.
    assert report["monitor"]["max_gap_seconds"] < 2.0, seen
