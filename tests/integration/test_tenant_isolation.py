"""A tenant's job on the Ray head the operator starts finds none of the operator's credentials.

The operator's environment here carries AWS keys, an MLflow password and a kubeconfig, and its
HOME holds ~/.aws/credentials and ~/.kube/config, as an operator's pod or a platform engineer's
shell would. A probe job — its driver and a Ray task, where a training function runs — looks for
each of them, by name, by value and through HOME.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobSubmissionClient

from mlplane.operator import embedded
from mlplane.operator.backends.base import Launch, Owner
from mlplane.operator.backends.ray import RayJobsBackend

pytestmark = pytest.mark.ray

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAOPERATOR0000000",
    "AWS_SECRET_ACCESS_KEY": "operator-aws-secret-key",
    "AWS_SESSION_TOKEN": "operator-session-token",
    "MLFLOW_TRACKING_PASSWORD": "operator-mlflow-password",
    "MLFLOW_TRACKING_TOKEN": "operator-mlflow-token",
}

PROBE = """
import json, os, pathlib, sys
import ray

SECRETS = json.loads(sys.argv[1])

def look():
    home = pathlib.Path.home()
    return {
        "names": sorted({*SECRETS, "KUBECONFIG"} & set(os.environ)),
        "values": sorted(n for n, v in os.environ.items() if v in SECRETS.values()),
        "files": [str(p) for p in (home / ".aws/credentials", home / ".kube/config") if p.exists()],
        "tenant": os.environ.get("TENANT_S3_KEY"),
    }

@ray.remote
def in_a_worker():
    return look()

print("PROBE " + json.dumps({"driver": look(), "worker": ray.get(in_a_worker.remote())}))
"""


@pytest.fixture(scope="module")
def operator_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head started as the operator starts its own, from an environment full of secrets."""
    home = tmp_path_factory.mktemp("operator-home")
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIAOPERATOR\n")
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("HOME", str(home))
        environment.setenv("KUBECONFIG", str(home / ".kube" / "config"))
        for name, value in SECRETS.items():
            environment.setenv(name, value)
        head = embedded.start_local_ray(
            tmp_path_factory.mktemp("ray"), num_cpus=1, object_store_mb=100
        )
    yield head
    embedded.stop(head)


def probe(
    head: str, tmp_path: Path, secrets: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """What a tenant's job, submitted as the operator submits it, finds in its driver and in a
    Ray task; `secrets` are the Secrets of its namespace its spec names (envFrom), by name."""
    secrets = secrets or {}
    script = tmp_path / "code" / "probe.py"  # beside no directory named like a module
    script.parent.mkdir()
    script.write_text(PROBE)
    backend = RayJobsBackend(head, secrets=lambda namespace, name: secrets.get(name))
    launch = Launch(
        submission_id=f"mlplane-probe-{tmp_path.name}",
        entrypoint=f"python {script} '{json.dumps(SECRETS)}'",
        owner=Owner("mlplane.dev/v1alpha1", "TrainingJob", "probe", "tenant-b", "uid-probe"),
        secret_env=tuple(secrets),
    )
    backend.submit(launch)
    deadline = time.monotonic() + 120
    while (state := backend.state(launch.ref)).status not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, "probe job did not finish"
        time.sleep(0.5)
    logs = JobSubmissionClient(head).get_job_logs(launch.submission_id)
    assert state.status == "SUCCEEDED", logs
    return json.loads(logs.split("PROBE ", 1)[1].splitlines()[0])


def test_a_tenants_job_finds_no_operator_credential(operator_head: str, tmp_path: Path) -> None:
    nothing = {"names": [], "values": [], "files": [], "tenant": None}
    assert probe(operator_head, tmp_path) == {"driver": nothing, "worker": nothing}


def test_a_job_gets_the_credentials_its_spec_names_from_its_namespace(
    operator_head: str, tmp_path: Path
) -> None:
    tenant = {"TENANT_S3_KEY": "tenant-b-key", "not a variable": "left out"}
    found = probe(operator_head, tmp_path, {"tenant-b-s3": tenant})
    for where in ("driver", "worker"):
        assert found[where]["tenant"] == "tenant-b-key"
        assert found[where]["names"] == found[where]["values"] == []  # still none of the operator's
