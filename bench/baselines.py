"""The two baselines mlplane's training is measured against, written the way users write them.

    python bench/baselines.py ray-train SPEC.yaml   # a plain Ray Train script (run as a Ray job)
    python bench/baselines.py single SPEC.yaml      # a plain single-process script

Both read the hyperparameters, split, resources, early stopping and checkpoint interval from the
same TrainingJob YAML mlplane runs, and train the same model on the same data, so the only
difference left is what mlplane adds. Nothing here imports mlplane. The last line printed is
`BENCH_RESULT {json}` with the test metrics.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xgboost
import yaml
from sklearn import datasets
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

Arrays = dict[str, np.ndarray]


def load(spec: dict[str, Any]) -> Arrays:
    """Train/validation/test arrays: stratified, seeded, scaled on the training split only."""
    dataset = spec["dataset"]
    uri, label = dataset["uri"], dataset["label"]
    if uri.startswith("sklearn://"):
        loader = getattr(datasets, f"load_{uri.removeprefix('sklearn://')}")
        frame = loader(as_frame=True).frame
    else:
        frame = pd.read_parquet(uri.removeprefix("file://"))
    x = frame.drop(columns=[label]).to_numpy(np.float32)
    y = frame[label].to_numpy()
    split = dataset.get("split", {})
    seed, test, validation = split.get("seed", 0), split["test"], split["validation"]
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=validation / (1 - test), stratify=y_rest, random_state=seed
    )
    scaler = StandardScaler().fit(x_train)
    return {
        "x_train": scaler.transform(x_train).astype(np.float32),
        "x_val": scaler.transform(x_val).astype(np.float32),
        "x_test": scaler.transform(x_test).astype(np.float32),
        "y_train": y_train,
        "y_val": y_val,
        "y_test": y_test,
    }


def xgboost_params(spec: dict[str, Any], classes: int) -> tuple[dict[str, Any], int]:
    hyperparameters = dict(spec["hyperparameters"])
    rounds = int(hyperparameters.pop("num_boost_round", 100))
    if classes <= 2:
        task = {"objective": "binary:logistic", "eval_metric": ["logloss", "auc"]}
    else:
        task = {"objective": "multi:softprob", "num_class": classes, "eval_metric": ["mlogloss"]}
    return {**task, **hyperparameters}, rounds


def xgboost_early_stopping(spec: dict[str, Any]) -> list[xgboost.callback.TrainingCallback]:
    early = spec.get("earlyStopping")
    if not early:
        return []
    metric = early["metric"].removeprefix("val_")
    return [
        xgboost.callback.EarlyStopping(
            rounds=early["patience"],
            metric_name=metric,
            data_name="val",
            maximize=early["mode"] == "max",
            save_best=True,
        )
    ]


class MLP(nn.Module):
    def __init__(self, inputs: int, outputs: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(inputs, size), nn.ReLU(), nn.Dropout(dropout)]
            inputs = size
        self.net = nn.Sequential(*layers, nn.Linear(inputs, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def new_mlp(spec: dict[str, Any], data: Arrays, classes: int) -> MLP:
    params = spec.get("model", {}).get("params", {})
    return MLP(data["x_train"].shape[1], classes, params["hidden"], params.get("dropout", 0))


EpochDone = Callable[[int, float, nn.Module, bool], None]


def torch_epochs(
    spec: dict[str, Any],
    data: Arrays,
    module: nn.Module,
    rank: int = 0,
    world: int = 1,
    prepare: Callable[[nn.Module], nn.Module] = lambda module: module,
    epoch_done: EpochDone | None = None,
) -> None:
    """Mini-batch AdamW with early stopping on the validation loss; `epoch_done` per epoch."""
    hp = spec["hyperparameters"]
    epochs, batch_size = int(hp.get("epochs", 20)), int(hp.get("batch_size", 64))
    torch.manual_seed(int(hp.get("seed", 0)))
    model = prepare(module)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(hp.get("lr", 1e-3)),
        weight_decay=float(hp.get("weight_decay", 0)),
    )
    x_train, y_train = torch.tensor(data["x_train"]), torch.tensor(data["y_train"])
    x_val, y_val = torch.tensor(data["x_val"]), torch.tensor(data["y_val"])
    early = spec.get("earlyStopping") or {}
    best, best_epoch = float("inf"), 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y_train))
        usable = len(order) - len(order) % world
        for batch in order[rank:usable:world].split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        module.eval()
        with torch.no_grad():
            val_loss = float(nn.functional.cross_entropy(module(x_val), y_val))
        if val_loss < best:
            best, best_epoch = val_loss, epoch
        stop = bool(early) and epoch - best_epoch >= early["patience"]
        if epoch_done is not None:
            epoch_done(epoch, val_loss, module, stop or epoch == epochs)
        if stop:
            break


def test_metrics(data: Arrays, scores: np.ndarray) -> dict[str, float]:
    y = data["y_test"]
    metrics = {"accuracy": float(accuracy_score(y, scores.argmax(axis=1)))}
    if scores.shape[1] == 2:
        metrics["roc_auc"] = float(roc_auc_score(y, scores[:, 1]))
    return metrics


def single(spec: dict[str, Any]) -> dict[str, float]:
    """One process, the same threads the TrainingJob's workers have in total."""
    data = load(spec)
    resources = spec["resources"]
    threads = int(resources["workers"]) * int(resources["perWorker"]["cpu"])
    classes = len(np.unique(data["y_train"]))
    if spec["framework"] == "xgboost":
        params, rounds = xgboost_params(spec, classes)
        dtrain = xgboost.DMatrix(data["x_train"], label=data["y_train"])
        dval = xgboost.DMatrix(data["x_val"], label=data["y_val"])
        booster = xgboost.train(
            {**params, "nthread": threads},
            dtrain,
            num_boost_round=rounds,
            evals=[(dtrain, "train"), (dval, "val")],
            callbacks=xgboost_early_stopping(spec),
            verbose_eval=False,
        )
        scores = booster.predict(xgboost.DMatrix(data["x_test"]))
        scores = np.column_stack([1 - scores, scores]) if scores.ndim == 1 else scores
        return test_metrics(data, scores)
    torch.set_num_threads(threads)
    module = new_mlp(spec, data, classes)
    torch_epochs(spec, data, module)
    module.eval()
    with torch.no_grad():
        scores = torch.softmax(module(torch.tensor(data["x_test"])), dim=1).numpy()
    return test_metrics(data, scores)


def ray_train(spec: dict[str, Any]) -> dict[str, float]:
    """Ray Train's XGBoostTrainer or TorchTrainer, checkpointing as often as the spec asks."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig

    data = load(spec)
    classes = len(np.unique(data["y_train"]))
    resources = spec["resources"]
    scaling = ScalingConfig(
        num_workers=int(resources["workers"]),
        resources_per_worker={"CPU": float(resources["perWorker"]["cpu"])},
    )
    every = int(spec.get("checkpoint", {}).get("every", 1))
    storage = tempfile.mkdtemp(prefix="bench-ray-train-")
    run_config = RunConfig(storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=2))
    data_ref = ray.put(data)

    if spec["framework"] == "xgboost":
        from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

        def xgboost_loop(config: dict[str, Any]) -> None:
            arrays: Arrays = ray.get(config["data"])
            context = ray.train.get_context()
            rank, world = context.get_world_rank(), context.get_world_size()
            params, rounds = xgboost_params(spec, classes)
            train_rows = slice(rank, None, world)
            dtrain = xgboost.DMatrix(arrays["x_train"][train_rows], arrays["y_train"][train_rows])
            dval = xgboost.DMatrix(arrays["x_val"], label=arrays["y_val"])
            xgboost.train(
                params,
                dtrain,
                num_boost_round=rounds,
                evals=[(dtrain, "train"), (dval, "val")],
                callbacks=[*xgboost_early_stopping(spec), RayTrainReportCallback(frequency=every)],
                verbose_eval=False,
            )

        result = XGBoostTrainer(
            xgboost_loop,
            train_loop_config={"data": data_ref},
            scaling_config=scaling,
            run_config=run_config,
        ).fit()
        booster = RayTrainReportCallback.get_model(result.checkpoint)
        scores = booster.predict(xgboost.DMatrix(data["x_test"]))
        scores = np.column_stack([1 - scores, scores]) if scores.ndim == 1 else scores
        return test_metrics(data, scores)

    def torch_loop(config: dict[str, Any]) -> None:
        arrays: Arrays = ray.get(config["data"])
        context = ray.train.get_context()
        module = new_mlp(spec, arrays, classes)

        def epoch_done(epoch: int, val_loss: float, trained: nn.Module, last: bool) -> None:
            metrics = {"epoch": epoch, "val_loss": val_loss}
            if context.get_world_rank() == 0 and (last or epoch % every == 0):
                with tempfile.TemporaryDirectory() as directory:
                    torch.save(trained.state_dict(), Path(directory) / "model.pt")
                    checkpoint = ray.train.Checkpoint.from_directory(directory)
                    ray.train.report(metrics, checkpoint=checkpoint)
            else:
                ray.train.report(metrics)

        rank, world = context.get_world_rank(), context.get_world_size()
        torch_epochs(spec, arrays, module, rank, world, ray.train.torch.prepare_model, epoch_done)

    result = ray.train.torch.TorchTrainer(
        torch_loop,
        train_loop_config={"data": data_ref},
        scaling_config=scaling,
        run_config=run_config,
    ).fit()
    module = new_mlp(spec, data, classes)
    with result.checkpoint.as_directory() as directory:
        module.load_state_dict(torch.load(Path(directory) / "model.pt"))
    module.eval()
    with torch.no_grad():
        scores = torch.softmax(module(torch.tensor(data["x_test"])), dim=1).numpy()
    return test_metrics(data, scores)


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    spec = yaml.safe_load(path.read_text())["spec"]
    metrics = {"single": single, "ray-train": ray_train}[mode](spec)
    print("BENCH_RESULT " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
