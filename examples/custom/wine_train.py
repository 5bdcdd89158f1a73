"""Your own training function for a TrainingJob (`model.entrypoint` in trainingjob-custom.yaml).

mlplane loads and splits the dataset, fits the preprocessing (impute, scale, one-hot) on the train
split, and then Ray Train calls this function on every worker with a `config` dict:

    config["hyperparameters"]   spec.hyperparameters, as written (here: epochs, lr)
    config["model_params"]      spec.model.params
    config["data"]              the prepared splits: float32 matrices x_train, x_val; labels
                                y_train, y_val (class indices 0..k-1, or floats for regression);
                                feature_names, task ("classification" | "regression"), num_classes
    config["early_stopping"]    spec.earlyStopping as {"metric", "mode", "patience"}, or None
    config["checkpoint_every"]  spec.checkpoint.every
    config["attempt"]           1, then 2 on the first retry, ...

The test split is not in `config`: mlplane keeps it to evaluate your model afterwards.

What the function must do in return:

1. Once per epoch, call `ray.train.report(metrics, checkpoint=...)` on every worker. Put `epoch`
   (1-based) in the metrics, and name them `train_<m>` / `val_<m>`: mlplane copies every report
   into MLflow (step = epoch), so you write no MLflow code.
2. Now and then (every `checkpoint_every` epochs, and at the last one) report a checkpoint from
   rank 0: a directory holding `model.pt`, the whole module saved with `torch.save(model)`
   (`framework: torch`), or `model.ubj` from `booster.save_model` (`framework: xgboost`). The
   module takes the preprocessed float32 features and returns class logits (or one value per
   row for regression). mlplane evaluates the chosen checkpoint on the test split, checks the
   gates and logs it to MLflow (this file travels with the model).
3. On a retry, pick up where the failed attempt stopped: `ray.train.get_checkpoint()` returns
   the latest checkpoint reported by the earlier attempt, or None on a fresh start.

The job's `runtimeEnv` applies here: this directory is the working directory (`workingDir`),
and `envVars` are set, which the greeting below shows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn


class WineNet(nn.Module):
    """A small network: 13 wine measurements in, one logit per cultivar out."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    data = config["data"]
    hyperparameters = config["hyperparameters"]
    epochs = int(hyperparameters.get("epochs", 10))
    if ray.train.get_context().get_world_rank() == 0:
        print(os.environ.get("WINE_TRAIN_GREETING", "no greeting set"))

    # Resume from the last checkpoint of an earlier attempt, if there is one.
    model = WineNet(data.x_train.shape[1], data.num_classes)
    first_epoch = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / "model.pt", weights_only=False)
            model.load_state_dict(saved.state_dict())
            first_epoch = int((Path(directory) / "epoch.txt").read_text()) + 1

    # Ray Train wraps the model for DistributedDataParallel when there are several workers.
    model = ray.train.torch.prepare_model(model)
    network = model.module if hasattr(model, "module") else model  # the plain module, to save
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hyperparameters.get("lr", 0.01)))
    x_train, y_train = torch.tensor(data.x_train), torch.tensor(data.y_train)
    x_val, y_val = torch.tensor(data.x_val), torch.tensor(data.y_val)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(first_epoch, epochs + 1):
        # The table is tiny: one full-batch step per epoch is plenty.
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x_train), y_train)
        loss.backward()
        optimizer.step()

        network.eval()
        with torch.no_grad():
            val_logits = network(x_val)
            metrics = {
                "epoch": epoch,
                "train_loss": float(loss),
                "val_loss": float(loss_fn(val_logits, y_val)),
                "val_accuracy": float((val_logits.argmax(dim=1) == y_val).float().mean()),
            }

        due = epoch % config["checkpoint_every"] == 0 or epoch == epochs
        if due and ray.train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(network, Path(directory) / "model.pt")
                (Path(directory) / "epoch.txt").write_text(str(epoch))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)
