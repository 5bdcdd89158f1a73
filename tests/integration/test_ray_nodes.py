"""The `ray` backend on a Ray cluster of three nodes: `mlplane run` against a head and two worker
nodes (separate raylets on this machine, joined by `ray start --address`), with checkpoints on
S3 (moto), as a user who outgrew one machine runs it (`MLPLANE_RAY_ADDRESS`).

The head has no CPUs, so training runs only on the worker nodes, one CPU each: a 2-worker job
spreads over both, as do a sweep's two parallel trials, and when the node under a 1-worker job is
lost, its retry can only land on the other one, where it must resume from the checkpoint on S3.
Budget: about 5 minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from mlflow import MlflowClient
from service_fixtures import MotoServer

from mlplane.operator import embedded

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
MLPLANE = str(Path(sys.executable).parent / "mlplane")
BUCKET = "checkpoints"


@dataclass(frozen=True)
class Nodes:
    head: str
    """The head's dashboard (Jobs API) address."""
    workers: list[str]
    """The worker nodes' Ray IDs."""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    data_dir = tmp_path_factory.mktemp("ray-nodes")
    head = embedded.start_local_ray(data_dir / "head", num_cpus=0, object_store_mb=200)
    workers = [embedded.start_local_ray_node(head, data_dir, num_cpus=1) for _ in range(2)]
    yield Nodes(head, workers)
    for node in workers:
        embedded.stop(node)
    embedded.stop(head)


@pytest.fixture(scope="module")
def s3(moto_server: MotoServer) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        aws_access_key_id=moto_server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=moto_server.env["AWS_SECRET_ACCESS_KEY"],
        region_name=moto_server.env["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=BUCKET)
    return client


def run_env(nodes: Nodes, mlflow_server: str, tmp_path: Path, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLPLANE_RAY_ADDRESS": nodes.head,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_server,
        "MLPLANE_CHECKPOINT_STORAGE": f"s3://{BUCKET}/{prefix}",
        "MLPLANE_DATA_DIR": str(tmp_path),
        "COLUMNS": "120",
    }


def manifest(tmp_path: Path, doc: dict[str, Any], moto_server: MotoServer) -> Path:
    """`doc` with the S3 endpoint and credentials in its runtime env (Ray Train writes there)."""
    runtime_env = doc["spec"].setdefault("runtimeEnv", {})
    runtime_env["envVars"] = {**runtime_env.get("envVars", {}), **moto_server.env}
    path = tmp_path / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def printed_status(output: str) -> dict[str, Any]:
    printed = re.search(r"^status:$", output, re.MULTILINE)
    assert printed, output[-3000:]
    return yaml.safe_load(output[printed.start() :])["status"]


def actors(head: str, **equal: str) -> list[dict[str, Any]]:
    """The cluster's actors (alive and dead) whose fields equal `equal`, from Ray's state API."""
    query = "detail=1&limit=10000"
    for key, value in equal.items():
        query += f"&filter_keys={key}&filter_predicates=%3D&filter_values={value}"
    with urllib.request.urlopen(f"{head}/api/v0/actors?{query}", timeout=10) as response:
        return json.load(response)["data"]["result"]["result"]


def train_workers(head: str, **equal: str) -> list[dict[str, Any]]:
    """Ray Train's worker actors."""
    return actors(head, class_name="RayTrainWorker", **equal)


def epochs_logged(tracking_uri: str, run_id: str) -> list[int]:
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "epoch")
    return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


def test_two_workers_train_on_two_nodes(
    nodes: Nodes, mlflow_server: str, moto_server: MotoServer, s3: Any, tmp_path: Path
) -> None:
    doc = yaml.safe_load((REPO / "examples" / "trainingjob-torch.yaml").read_text())
    before = {actor["actor_id"] for actor in train_workers(nodes.head)}
    result = subprocess.run(
        [MLPLANE, "run", str(manifest(tmp_path, doc, moto_server))],
        env=run_env(nodes, mlflow_server, tmp_path, "spread"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert printed_status(result.stdout)["phase"] == "Succeeded"
    workers = [a for a in train_workers(nodes.head) if a["actor_id"] not in before]
    assert sorted(a["node_id"] for a in workers) == sorted(nodes.workers)
    assert checkpoints(s3, "spread") > 0


def test_a_sweep_runs_its_trials_on_both_nodes(
    nodes: Nodes, mlflow_server: str, moto_server: MotoServer, s3: Any, tmp_path: Path
) -> None:
    doc = yaml.safe_load((REPO / "examples" / "tuningsweep-xgboost.yaml").read_text())
    doc["spec"]["trials"] = {"max": 4, "parallel": 2}
    doc["spec"]["template"]["runtimeEnv"] = {"envVars": moto_server.env}
    before = {actor["actor_id"] for actor in actors(nodes.head)}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [MLPLANE, "run", str(path)],
        env=run_env(nodes, mlflow_server, tmp_path, "sweep"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = printed_status(result.stdout)
    counts = status["trials"]
    assert status["phase"] == "Succeeded"
    assert (counts["completed"] + counts["pruned"], counts["failed"]) == (4, 0)
    # The head has no CPUs: the trials' actors (Tune reuses one for several trials) ran on the
    # worker nodes, two at a time, so on both of them.
    trials = [
        a for a in actors(nodes.head, class_name="ImplicitFunc") if a["actor_id"] not in before
    ]
    assert {a["node_id"] for a in trials} == set(nodes.workers)
    assert checkpoints(s3, "sweep") > 0


def test_a_lost_node_is_survived_by_resuming_on_the_other(
    nodes: Nodes, mlflow_server: str, moto_server: MotoServer, s3: Any, tmp_path: Path
) -> None:
    """Last in the module: it leaves the cluster one worker node short."""
    epochs = 30
    doc = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "wine-resumes"},
        "spec": {
            "framework": "torch",
            "dataset": {"uri": "sklearn://wine", "label": "target"},
            "hyperparameters": {"epochs": epochs, "lr": 0.01},
            "resources": {"workers": 1, "perWorker": {"cpu": 1}},
            "checkpoint": {"every": 1, "keep": 100},
            "retries": 1,
            "tracking": {"experiment": "lost-node"},
        },
    }
    path = manifest(tmp_path, doc, moto_server)
    before = {actor["actor_id"] for actor in train_workers(nodes.head)}
    process = subprocess.Popen(
        [MLPLANE, "run", str(path)],
        env=run_env(nodes, mlflow_server, tmp_path, "lost-node"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # A few checkpoints on S3, then the node under the worker goes, all its processes at once.
        deadline = time.monotonic() + 300
        while checkpoints(s3, "lost-node") < 3:
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoints on S3 after 300 s"
            time.sleep(0.2)
        alive = [a for a in train_workers(nodes.head, state="ALIVE") if a["actor_id"] not in before]
        assert len(alive) == 1
        lost = alive[0]["node_id"]
        embedded.kill(lost)
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    status = printed_status(output)
    assert status["phase"] == "Succeeded", output[-3000:]
    assert status["attempts"] == 2
    # Attempt 1's worker was on the lost node, attempt 2's on the other one.
    workers = [a["node_id"] for a in train_workers(nodes.head) if a["actor_id"] not in before]
    assert sorted(workers) == sorted(nodes.workers)
    # One MLflow run across both attempts; its epochs count on from the checkpoint on S3, on
    # the other node: had the retry started over, epoch 1 would come twice.
    assert epochs_logged(mlflow_server, status["mlflow"]["runId"]) == list(range(1, epochs + 1))


def checkpoints(s3: Any, prefix: str) -> int:
    """Checkpoint directories on S3 under the checkpoint storage `prefix`."""
    found = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            match = re.search(r"/(checkpoint_[^/]+)/", item["Key"])
            if match:
                found.add(item["Key"][: match.end()])
    return len(found)
