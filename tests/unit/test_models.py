"""The API models: examples round-trip, defaults fill in, rules reject what they should."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mlplane.crds import KINDS, ModelDeploymentSpec, TrainingJobSpec, TuningSweepSpec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trips(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    model = KINDS[doc["kind"]].resource
    parsed = model.model_validate(doc)
    again = model.model_validate(parsed.to_dict())
    assert again == parsed
    # What the user wrote survives: every key they set is in the wire form.
    assert _keys(doc["spec"]) <= _keys(parsed.to_dict()["spec"])


def _keys(node: object, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return set()
    keys = set()
    for key, value in node.items():
        keys.add(prefix + key)
        if key not in ("hyperparameters", "params"):
            keys |= _keys(value, prefix + key + ".")
    return keys


def test_defaults_are_what_the_docs_say() -> None:
    spec = TrainingJobSpec.model_validate(
        {"framework": "xgboost", "dataset": {"uri": "sklearn://iris", "label": "target"}}
    )
    assert spec.dataset.split.strategy == "stratified"
    assert (spec.dataset.split.validation, spec.dataset.split.test) == (0.2, 0.1)
    assert spec.resources.workers == 1
    assert spec.retries == 0
    assert spec.resources.gpus == 0


def test_gpus_multiply_workers() -> None:
    spec = TrainingJobSpec.model_validate(
        {
            "framework": "torch",
            "dataset": {"uri": "s3://b/k.parquet", "label": "y"},
            "resources": {
                "workers": 2,
                "perWorker": {"gpu": 4, "memory": "16Gi"},
                "nodePool": "a100",
            },
        }
    )
    assert spec.resources.gpus == 8


def _errors(model: type, data: dict) -> dict[str, str]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(data)
    return {".".join(map(str, e["loc"])): e["msg"] for e in raised.value.errors()}


BASE_JOB = {"framework": "xgboost", "dataset": {"uri": "sklearn://iris", "label": "target"}}


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"dataset": {"uri": "ftp://x/y", "label": "t"}}, "dataset.uri", "s3://"),
        ({"dataset": {"uri": "sklearn://mnist", "label": "t"}}, "dataset.uri", "breast_cancer"),
        (
            {
                "dataset": {
                    "uri": "sklearn://iris",
                    "label": "t",
                    "split": {"validation": 0.6, "test": 0.5},
                }
            },
            "dataset.split",
            "below 1",
        ),
        (
            {"dataset": {"uri": "sklearn://iris", "label": "t", "split": {"strategy": "time"}}},
            "dataset.split",
            "timeColumn",
        ),
        ({"model": {"entrypoint": "not an entrypoint"}}, "model.entrypoint", "pattern"),
        (
            {"resources": {"perWorker": {"memory": "lots"}}},
            "resources.perWorker.memory",
            "quantity",
        ),
        ({"gates": {"auc": "about 0.9"}}, "gates.auc", "comparison"),
        ({"tracking": {"alias": "champion"}}, "tracking", "registerAs"),
        ({"retries": 11}, "retries", "less than or equal"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
def test_training_job_rules(patch: dict, field: str, words: str) -> None:
    errors = _errors(TrainingJobSpec, {**BASE_JOB, **patch})
    assert field in errors, errors
    assert words in errors[field]


BASE_SWEEP = {
    "template": BASE_JOB,
    "objective": {"metric": "val_auc", "mode": "max"},
}


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ({"eta": {"uniform": {"low": 1, "high": 0.1}}}, "searchSpace.eta.uniform", "below high"),
        ({"eta": {"loguniform": {"low": 0, "high": 1}}}, "searchSpace.eta.loguniform", "low > 0"),
        ({"depth": {"choice": []}}, "searchSpace.depth.choice", "at least 1"),
        ({"depth": {}}, "searchSpace.depth", "exactly one"),
        (
            {"depth": {"choice": [1], "randint": {"low": 1, "high": 3}}},
            "searchSpace.depth",
            "exactly one",
        ),
    ],
)
def test_search_space_rules(space: dict, field: str, words: str) -> None:
    errors = _errors(TuningSweepSpec, {**BASE_SWEEP, "searchSpace": space})
    assert field in errors, errors
    assert words in errors[field]


def test_parallel_trials_within_max() -> None:
    errors = _errors(
        TuningSweepSpec,
        {
            **BASE_SWEEP,
            "searchSpace": {"eta": {"choice": [0.1]}},
            "trials": {"max": 2, "parallel": 3},
        },
    )
    assert "parallel (3) must not exceed max (2)" in errors["trials"]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"model": {}}, "model", "exactly one"),
        ({"model": {"uri": "http://x"}}, "model.uri", "pattern"),
        (
            {"model": {"uri": "models:/m/1"}, "ray": {"replicas": {"min": 3, "max": 2}}},
            "ray.replicas",
            "min (3)",
        ),
        (
            {
                "model": {"uri": "models:/m/1"},
                "canary": {"model": {"uri": "models:/m/2"}, "steps": [50, 10]},
            },
            "canary.steps",
            "ascending",
        ),
        (
            {
                "model": {"uri": "models:/m/1"},
                "canary": {"model": {"uri": "models:/m/2"}, "steps": [150]},
            },
            "canary.steps.0",
            "less than or equal to 100",
        ),
        ({"model": {"uri": "models:/m/1"}, "target": "sagemaker"}, "", "sagemaker section"),
    ],
)
def test_model_deployment_rules(spec: dict, field: str, words: str) -> None:
    errors = _errors(ModelDeploymentSpec, spec)
    assert field in errors, errors
    assert words in errors[field]
