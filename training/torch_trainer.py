"""`framework: torch`: a tabular MLP trained data-parallel (DDP) through Ray Train's TorchTrainer.

Hyperparameters: `lr` (1e-3), `epochs` (20), `batch_size` (64), `weight_decay` (0), `seed` (0).
Model params: `hidden` (layer widths, [64, 32]) and `dropout` (0). Each epoch reports `train_loss`,
`val_loss` and `train_accuracy`/`val_accuracy` (classification) or `train_rmse`/`val_rmse`
(regression), all measured at the end of the epoch in eval mode on the whole split, so train and
validation are directly comparable for the overfitting gap.

The checkpointed `model.pt` is the whole module (`torch.save(module)`): the contract custom torch
code follows too, so the runner evaluates and packages built-in and custom models the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train.torch
import torch
from torch import nn

from mlplane.training.checkpoints import TORCH_MODEL_FILE, load_checkpoint_model
from mlplane.training.epochs import (
    EarlyStopping,
    checkpoint_due,
    in_tune_trial,
    report_epoch,
    restore,
    shard,
)
from mlplane.training.worker import PreparedData, planned_epochs

OPTIMIZER_FILE = "optimizer.pt"


class MLP(nn.Module):
    """Linear → ReLU → Dropout blocks, then a linear head.

    Classification returns logits (one per class). Regression returns values in the label's own
    units: the network learns the standardised target and `shift`/`scale` (buffers, saved with the
    module) undo the standardisation.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: list[int],
        dropout: float = 0.0,
        shift: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.register_buffer("shift", torch.tensor(shift))
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if out.shape[-1] == 1:  # regression: one value per row, in the label's units
            return out.squeeze(-1) * self.scale + self.shift
        return out


def load_model(directory: Path) -> tuple[nn.Module, dict[str, Any] | None]:
    """The checkpointed module, and the optimizer state when the checkpoint has one."""
    module = load_checkpoint_model("torch", directory)
    optimizer_path = directory / OPTIMIZER_FILE
    optimizer = torch.load(optimizer_path, map_location="cpu") if optimizer_path.exists() else None
    return module, optimizer


def _loss(
    module: MLP, out: torch.Tensor, target: torch.Tensor, classification: bool
) -> torch.Tensor:
    if classification:
        return nn.functional.cross_entropy(out, target)
    return nn.functional.mse_loss(out / module.scale, target / module.scale)


def _measure(
    module: MLP, x: torch.Tensor, y: torch.Tensor, classification: bool, split: str
) -> dict[str, float]:
    module.eval()
    with torch.no_grad():
        out = module(x)
        metrics = {f"{split}_loss": float(_loss(module, out, y, classification))}
        if classification:
            metrics[f"{split}_accuracy"] = float((out.argmax(dim=-1) == y).float().mean())
        else:
            metrics[f"{split}_rmse"] = float(torch.sqrt(torch.mean((out - y) ** 2)))
    return metrics


def _new_model(data: PreparedData, params: dict[str, Any]) -> MLP:
    classification = data.task == "classification"
    return MLP(
        in_features=data.x_train.shape[1],
        out_features=data.num_classes if classification else 1,
        hidden=[int(h) for h in params.get("hidden", [64, 32])],
        dropout=float(params.get("dropout", 0.0)),
        shift=0.0 if classification else float(data.y_train.mean()),
        scale=1.0 if classification else float(data.y_train.std() or 1.0),
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train for `epochs` epochs (minus those a restored checkpoint already did)."""
    data: PreparedData = config["data"]
    hp = config["hyperparameters"]
    epochs, batch_size, seed = (
        planned_epochs("torch", hp),
        int(hp.get("batch_size", 64)),
        int(hp.get("seed", 0)),
    )
    classification = data.task == "classification"
    torch.manual_seed(seed)
    state, restored = restore(load_model)
    module: MLP = restored[0] if restored else _new_model(data, config["model_params"])
    early = EarlyStopping(config["early_stopping"], state)
    if state.epoch >= epochs or early.ran_out:
        return  # the restored checkpoint is already the final model
    if in_tune_trial():  # the trial is the only worker: no DDP
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model: nn.Module = module.to(device)
    else:
        model = ray.train.torch.prepare_model(module)  # device placement and DDP
        device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(hp.get("lr", 1e-3)),
        weight_decay=float(hp.get("weight_decay", 0.0)),
    )
    if restored and restored[1]:
        optimizer.load_state_dict(restored[1])
    label_type = torch.int64 if classification else torch.float32
    # Copies: arrays from the object store are read-only, which torch does not support.
    x_train = torch.tensor(data.x_train, device=device)
    y_train = torch.tensor(data.y_train, dtype=label_type, device=device)
    x_val = torch.tensor(data.x_val, device=device)
    y_val = torch.tensor(data.y_val, dtype=label_type, device=device)
    # The train metrics (and so the overfitting gap) come from as many training rows as the
    # validation split has, the same rows every epoch: a pass over every training row cost more
    # than the epoch's training itself.
    sample = torch.Generator().manual_seed(seed)
    measured = torch.randperm(len(y_train), generator=sample)[: len(y_val) or len(y_train)]
    x_measured, y_measured = x_train[measured], y_train[measured]

    for epoch in range(state.epoch + 1, epochs + 1):
        model.train()
        # The same permutation on every worker (seeded by epoch), each taking its own share.
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed + epoch))
        for batch in order[shard(len(order))].split(batch_size):
            batch = batch.to(device)
            optimizer.zero_grad()
            _loss(module, model(x_train[batch]), y_train[batch], classification).backward()
            optimizer.step()
        metrics = {
            **_measure(module, x_measured, y_measured, classification, "train"),
            **_measure(module, x_val, y_val, classification, "val"),
        }
        stop = early.should_stop(epoch, metrics)

        def save(directory: Path) -> None:
            torch.save(module, directory / TORCH_MODEL_FILE)
            torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)

        report_epoch(
            epoch,
            metrics,
            state,
            checkpoint_now=checkpoint_due(
                epoch, config["checkpoint_every"], stop or epoch == epochs
            ),
            save_model=save,
            attempt=config["attempt"],
        )
        if stop:
            break
