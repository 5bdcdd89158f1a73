"""What every Ray Train worker runs first: fetch the prepared data, then call the training loop.

The loop is named as `package.module:function`, the same for the built-in loops and for a user's
`spec.model.entrypoint`, so custom code receives exactly the config the built-in loops do:

- `hyperparameters`: `spec.hyperparameters` as written;
- `model_params`: `spec.model.params`;
- `data`: a `PreparedData` — float32 `x_train`/`x_val`, labels `y_train`/`y_val` (class
  indices 0..k-1 or float values), `feature_names`, `task`, `num_classes`;
- `early_stopping`: `{"metric", "mode", "patience"}` or None;
- `checkpoint_every`: report a checkpoint every N epochs;
- `attempt`: 1 for the first attempt, 2 for the first retry, and so on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:
    import numpy as np

    from mlplane.training.datasets import Task


@dataclass(frozen=True)
class PreparedData:
    """What a training function gets: model-ready float32 matrices and encoded labels.

    Defined here, with the loops, and not with the preprocessing that makes it: unpickling it on a
    worker then imports no pandas or scikit-learn.

    Labels are class indices 0..k-1 (int64) for classification, float32 values for regression.
    The test split is not here: it stays with the runner for the final, untouched evaluation.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    feature_names: list[str]
    task: Task
    num_classes: int
    """Number of classes (0 for regression)."""


# What `epochs` means per framework: the hyperparameter that counts them, and its default.
EPOCH_HYPERPARAMETER = {"xgboost": ("num_boost_round", 100), "torch": ("epochs", 20)}

BUILT_IN_LOOPS = {
    "xgboost": "mlplane.training.xgboost_trainer:train_loop_per_worker",
    "torch": "mlplane.training.torch_trainer:train_loop_per_worker",
}


def planned_epochs(framework: str, hyperparameters: dict[str, Any]) -> int:
    """Epochs (boosting rounds for xgboost) the job is set to run, custom code included."""
    key, default = EPOCH_HYPERPARAMETER[framework]
    return int(hyperparameters.get(key, default))


def resolve(entrypoint: str) -> Callable[[dict[str, Any]], Any]:
    """Import `package.module:function` (the job's working_dir is on sys.path)."""
    module_name, _, function_name = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"model.entrypoint: {module_name} has no function {function_name!r}")
    return function


def run_loop(config: dict[str, Any]) -> None:
    """The function handed to Ray Train: `config["data"]` arrives as an object-store reference.

    The data goes through the object store once rather than pickled into every worker's config,
    and workers on the same node share it without copies.
    """
    data: PreparedData = ray.get(config["data"])
    call_loop({**config, "data": data})


def call_loop(config: dict[str, Any]) -> None:
    """Call `config["entrypoint"]` with the rest of the config (the data already in hand)."""
    loop = resolve(config["entrypoint"])
    loop({k: v for k, v in config.items() if k != "entrypoint"})
