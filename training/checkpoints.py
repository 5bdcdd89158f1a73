"""The model inside a Ray Train checkpoint: what the training loops write and resume from, and what
the runner loads to evaluate and package once training is done.

Apart from the packaging (which imports MLflow) because every Ray Train worker imports this: a
worker that imported MLflow would spend seconds of CPU on it while the worker group starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

XGBOOST_MODEL_FILE = "model.ubj"
TORCH_MODEL_FILE = "model.pt"


def load_checkpoint_model(framework: str, directory: Path) -> Any:
    """The model inside a checkpoint: an xgboost Booster (`model.ubj`) or a torch module
    (`model.pt`, saved whole with `torch.save(module)`)."""
    if framework == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(directory / XGBOOST_MODEL_FILE))
        return booster
    import torch

    module = torch.load(directory / TORCH_MODEL_FILE, weights_only=False, map_location="cpu")
    return module.eval()
