"""Metrics, gates, the runner's contract helpers and the packaged model (no Ray cluster)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xgboost
from ray.train import WorkerGroupError

from mlplane.crds.trainingjob import ResourceRequest, Split, TrainingJobSpec
from mlplane.operator.lifecycle import pack
from mlplane.training.__main__ import decode
from mlplane.training.datasets import split_table
from mlplane.training.evaluation import (
    Gate,
    classification_metrics,
    evaluate_gates,
    held_out_metrics,
    overfit_gap,
    regression_metrics,
)
from mlplane.training.packaging import TabularModel
from mlplane.training.preprocessing import prepare
from mlplane.training.runner import RunContext, error_line, scaling_config, spec_hash
from mlplane.training.worker import planned_epochs, resolve


def test_binary_classification_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    metrics = classification_metrics(y, proba)
    assert metrics["accuracy"] == 0.75
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["roc_auc"] == 1.0
    assert metrics["pr_auc"] == 1.0
    assert metrics["logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])), rel=1e-6)


def test_multiclass_metrics_use_macro_f1_and_one_vs_rest_auc() -> None:
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    metrics = classification_metrics(y, proba)
    assert metrics["accuracy"] == 0.75
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert 0 < metrics["roc_auc"] <= 1
    assert set(metrics) == {"accuracy", "f1", "roc_auc", "pr_auc", "logloss"}


def test_auc_is_left_out_when_a_class_is_missing() -> None:
    metrics = classification_metrics(np.array([0, 0]), np.array([[0.7, 0.3], [0.6, 0.4]]))
    assert "roc_auc" not in metrics and "pr_auc" not in metrics
    assert metrics["accuracy"] == 1.0


def test_regression_metrics() -> None:
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert metrics["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["r2"] == pytest.approx(1 - 4 / 2)


def test_held_out_metrics_are_prefixed_and_empty_without_rows() -> None:
    metrics = held_out_metrics("regression", np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert set(metrics) == {"test_rmse", "test_mae", "test_r2"}
    assert held_out_metrics("regression", np.array([]), np.array([])) == {}


def test_overfit_gap_is_train_minus_validation() -> None:
    assert overfit_gap({"train_loss": 0.1, "val_loss": 0.3}, "loss") == pytest.approx(-0.2)
    assert overfit_gap({"train_loss": 0.1}, "loss") is None


@pytest.mark.parametrize(
    ("condition", "op", "threshold"),
    [(">= 0.97", ">=", 0.97), ("<0.5", "<", 0.5), ("== 1", "==", 1.0), (" > -2e-3 ", ">", -0.002)],
)
def test_gate_parsing(condition: str, op: str, threshold: float) -> None:
    gate = Gate.parse("roc_auc", condition)
    assert (gate.op, gate.threshold) == (op, threshold)


def test_gate_parsing_rejects_non_comparisons() -> None:
    with pytest.raises(ValueError, match=r"gates\.roc_auc"):
        Gate.parse("roc_auc", "at least 0.9")


def test_gates_verdicts_name_every_failing_gate() -> None:
    test = {"test_roc_auc": 0.95, "test_accuracy": 0.91, "test_logloss": 0.3}
    assert evaluate_gates({}, test) == "none"
    assert evaluate_gates({"accuracy": ">= 0.9", "logloss": "< 0.5"}, test) == "passed"
    assert (
        evaluate_gates({"roc_auc": ">= 0.97", "accuracy": ">= 0.9", "logloss": "<= 0.2"}, test)
        == "failed: logloss 0.3 > 0.2; roc_auc 0.95 < 0.97"
    )
    assert evaluate_gates({"r2": "> 0"}, test) == "failed: r2 not measured"


def test_context_and_spec_travel_as_base64url_compressed_json() -> None:
    context = {
        "namespace": "team-a",
        "name": "churn",
        "uid": "u-1",
        "attempt": 2,
        "mlflowTrackingUri": "http://127.0.0.1:5000",
        "storagePath": "/data/checkpoints",
        "experiment": "churn",
    }
    encoded = pack(context).rstrip("=")
    parsed = RunContext.from_wire(decode(encoded))
    assert (parsed.attempt, parsed.storage_path, parsed.experiment) == (
        2,
        "/data/checkpoints",
        "churn",
    )


def test_spec_hash_is_stable_and_sensitive() -> None:
    spec = {"framework": "xgboost", "dataset": {"uri": "sklearn://iris", "label": "target"}}
    first = spec_hash(TrainingJobSpec.model_validate(spec))
    assert first == spec_hash(TrainingJobSpec.model_validate(json.loads(json.dumps(spec))))
    spec["hyperparameters"] = {"eta": 0.2}
    assert spec_hash(TrainingJobSpec.model_validate(spec)) != first


def test_resources_map_onto_ray_scaling_config() -> None:
    resources = ResourceRequest.model_validate(
        {"workers": 4, "perWorker": {"cpu": "500m", "memory": "2Gi", "gpu": 1}}
    )
    scaling = scaling_config(resources)
    assert scaling.num_workers == 4
    assert scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 0.5, "GPU": 1.0, "memory": 2 * 1024**3}
    cpu_only = scaling_config(ResourceRequest())
    assert not cpu_only.use_gpu
    assert cpu_only.resources_per_worker == {"CPU": 1.0}


def test_planned_epochs_per_framework() -> None:
    assert planned_epochs("xgboost", {"num_boost_round": 60}) == 60
    assert planned_epochs("xgboost", {}) == 100
    assert planned_epochs("torch", {"epochs": "7"}) == 7


def test_entrypoints_resolve_or_name_the_field() -> None:
    assert resolve("json:dumps") is json.dumps
    with pytest.raises(ValueError, match=r"model\.entrypoint: json has no function 'nope'"):
        resolve("json:nope")


def test_error_line_unwraps_ray_train_worker_failures() -> None:
    cause = RuntimeError("injected failure after epoch 3\nmore detail")
    wrapped = WorkerGroupError("worker 0 failed", {1: ValueError("late"), 0: cause})
    assert error_line(wrapped) == "RuntimeError: injected failure after epoch 3"
    assert error_line(KeyError("label")) == "KeyError: 'label'"
    assert error_line(RuntimeError()) == "RuntimeError"


def test_packaged_model_maps_raw_rows_to_labels_and_probabilities() -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=300), "colour": rng.choice(["a", "b"], 300)})
    table["label"] = np.where(table["x"] > 0, "high", "low")
    splits = split_table(table, "label", Split(), "classification")
    prepared = prepare(splits, ["x", "colour"], "label", "classification")
    booster = xgboost.train(
        {"objective": "binary:logistic"},
        xgboost.DMatrix(prepared.data.x_train, label=prepared.data.y_train),
        num_boost_round=5,
    )
    model = TabularModel(
        "xgboost",
        booster,
        prepared.preprocessor,
        ["x", "colour"],
        "classification",
        prepared.classes,
    )
    out = model.predict(None, pd.DataFrame({"x": [2.0, -2.0], "colour": ["a", "zzz"]}))
    assert out["prediction"].tolist() == ["high", "low"]
    assert list(out.columns) == ["prediction", "proba_high", "proba_low"]
    assert np.allclose(out["proba_high"] + out["proba_low"], 1.0)
