"""`framework: xgboost`: gradient-boosted trees through Ray Train's XGBoostTrainer.

One boosting round is one epoch: every round evaluates on the train and validation splits and
reports `train_<metric>`/`val_<metric>` (xgboost's own metric names: logloss, auc, mlogloss,
merror, rmse, mae). Ray's XGBoost backend wraps this loop in xgboost's collective context, so with
several workers each trains on its shard and the histograms are all-reduced.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import xgboost

from mlplane.training.checkpoints import XGBOOST_MODEL_FILE, load_checkpoint_model
from mlplane.training.epochs import (
    EarlyStopping,
    LoopState,
    checkpoint_due,
    report_epoch,
    restore,
    shard,
)
from mlplane.training.worker import PreparedData, planned_epochs


def objective(data: PreparedData) -> dict[str, Any]:
    """The objective and evaluation metrics the task calls for (hyperparameters may override)."""
    if data.task == "regression":
        return {"objective": "reg:squarederror", "eval_metric": ["rmse", "mae"]}
    if data.num_classes <= 2:
        return {"objective": "binary:logistic", "eval_metric": ["logloss", "auc"]}
    return {
        "objective": "multi:softprob",
        "num_class": data.num_classes,
        "eval_metric": ["mlogloss", "merror"],
    }


def primary_metric(data: PreparedData) -> str:
    """The metric the overfitting gap is measured on, unless earlyStopping names another."""
    metric = objective(data)["eval_metric"][0]
    return str(metric)


class _EpochReporter(xgboost.callback.TrainingCallback):
    """Reports each round to Ray Train, checkpoints, and stops early (spec.earlyStopping)."""

    def __init__(self, config: dict[str, Any], state: LoopState, rounds: int) -> None:
        super().__init__()
        self.config = config
        self.state = state
        self.rounds = rounds
        self.early = EarlyStopping(config["early_stopping"], state)

    def after_iteration(self, model: xgboost.Booster, epoch: int, evals_log: dict) -> bool:
        done = model.num_boosted_rounds()  # counts rounds restored from a checkpoint too
        metrics = {
            f"{split}_{name}": float(values[-1])
            for split, by_metric in evals_log.items()
            for name, values in by_metric.items()
        }
        stop = self.early.should_stop(done, metrics)
        last = stop or done >= self.rounds

        def save(directory: Path) -> None:
            model.save_model(str(directory / XGBOOST_MODEL_FILE))

        report_epoch(
            done,
            metrics,
            self.state,
            checkpoint_now=checkpoint_due(done, self.config["checkpoint_every"], last),
            save_model=save,
            attempt=self.config["attempt"],
        )
        return stop


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Boost `num_boost_round` rounds (minus those a restored checkpoint already holds)."""
    data: PreparedData = config["data"]
    hyperparameters = dict(config["hyperparameters"])
    rounds = planned_epochs("xgboost", hyperparameters)
    hyperparameters.pop("num_boost_round", None)
    params = {**objective(data), **hyperparameters}
    train_rows, val_rows = shard(len(data.y_train)), shard(len(data.y_val))
    dtrain = xgboost.DMatrix(data.x_train[train_rows], label=data.y_train[train_rows])
    dval = xgboost.DMatrix(data.x_val[val_rows], label=data.y_val[val_rows])
    state, booster = restore(partial(load_checkpoint_model, "xgboost"))
    reporter = _EpochReporter(config, state, rounds)
    if state.epoch >= rounds or reporter.early.ran_out:
        return  # the restored checkpoint is already the final model
    xgboost.train(
        params,
        dtrain,
        num_boost_round=rounds - state.epoch,
        evals=[(dtrain, "train"), (dval, "val")],
        xgb_model=booster,
        callbacks=[reporter],
        verbose_eval=False,
    )
