"""Held-out metrics, the overfitting gap, and the gates that decide whether a model is registered.

Gate names are test metric names without the `test_` prefix (`roc_auc: ">= 0.97"` checks
`test_roc_auc`), the same strings `spec.gates` is validated against.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from mlplane.crds.trainingjob import GATE_PATTERN
from mlplane.training.datasets import Task

CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "pr_auc", "logloss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """accuracy, f1 (macro when multiclass), roc_auc (one-vs-rest), pr_auc, logloss.

    `proba` has one column per class. ROC-AUC and PR-AUC are left out when the split lacks a
    class, where they are undefined, rather than reported as a misleading number.
    """
    k = proba.shape[1]
    predicted = proba.argmax(axis=1)
    binary = k == 2
    result = {
        "accuracy": float(skm.accuracy_score(y_true, predicted)),
        "f1": float(
            skm.f1_score(
                y_true, predicted, average="binary" if binary else "macro", zero_division=0
            )
        ),
        "logloss": float(skm.log_loss(y_true, proba, labels=list(range(k)))),
    }
    if len(np.unique(y_true)) == k:
        if binary:
            result["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
            result["pr_auc"] = float(skm.average_precision_score(y_true, proba[:, 1]))
        else:
            one_hot = np.eye(k)[y_true]
            result["roc_auc"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr"))
            result["pr_auc"] = float(skm.average_precision_score(one_hot, proba, average="macro"))
    return result


def regression_metrics(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """rmse, mae and r2."""
    return {
        "rmse": float(math.sqrt(skm.mean_squared_error(y_true, predicted))),
        "mae": float(skm.mean_absolute_error(y_true, predicted)),
        "r2": float(skm.r2_score(y_true, predicted)),
    }


def held_out_metrics(task: Task, y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The task's metrics on the test split, named `test_<metric>`; none for an empty split."""
    if len(y_true) == 0:
        return {}
    computed = (
        classification_metrics(y_true, scores)
        if task == "classification"
        else regression_metrics(y_true, scores)
    )
    return {f"test_{name}": value for name, value in computed.items()}


def overfit_gap(epoch_metrics: Mapping[str, float], primary: str) -> float | None:
    """train_<primary> - val_<primary> at the chosen epoch, or None if either is missing."""
    train, val = epoch_metrics.get(f"train_{primary}"), epoch_metrics.get(f"val_{primary}")
    if train is None or val is None:
        return None
    return float(train) - float(val)


_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
# What to print when a gate does not hold: the relation that holds instead.
_NEGATION = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!="}


@dataclass(frozen=True)
class Gate:
    """One `metric: "<op> <threshold>"` condition from `spec.gates`."""

    metric: str
    op: str
    threshold: float
    written: str
    """The threshold as the user wrote it, for messages."""

    @classmethod
    def parse(cls, metric: str, condition: str) -> Gate:
        match = re.match(GATE_PATTERN, condition)
        if not match:
            raise ValueError(f"gates.{metric}: {condition!r} is not a comparison such as '>= 0.95'")
        return cls(metric, match.group(1), float(match.group(2)), match.group(2))

    def failure(self, test: Mapping[str, float]) -> str | None:
        """Why the gate does not hold on these test metrics, or None when it holds."""
        value = test.get(f"test_{self.metric}")
        if value is None:
            return f"{self.metric} not measured"
        if _OPERATORS[self.op](value, self.threshold):
            return None
        return f"{self.metric} {value:.4g} {_NEGATION[self.op]} {self.written}"


def evaluate_gates(gates: Mapping[str, str], test: Mapping[str, float]) -> str:
    """The `mlplane.gates` tag: `none`, `passed`, or `failed: <each failing gate>`."""
    if not gates:
        return "none"
    failures = [
        reason
        for name, condition in sorted(gates.items())
        if (reason := Gate.parse(name, condition).failure(test))
    ]
    return "failed: " + "; ".join(failures) if failures else "passed"
