"""The MLflow model a TrainingJob produces: preprocessing plus booster or network, as one pyfunc.

A ModelDeployment serves raw rows (the dataset's feature columns, as in the signature); this
wrapper applies the fitted ColumnTransformer, runs the model and maps class indices back to the
original labels. The runner evaluates the test split through this very object, so the metrics and
gates describe exactly what gets registered.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel
from sklearn.compose import ColumnTransformer


class TabularModel(PythonModel):
    """Raw feature rows in; `prediction` (and `proba_<class>` per class) out."""

    def __init__(
        self,
        framework: str,
        model: Any,
        preprocessor: ColumnTransformer,
        features: list[str],
        task: str,
        classes: list[Any],
    ) -> None:
        self.framework = framework
        self.model = model
        self.preprocessor = preprocessor
        self.features = features
        self.task = task
        self.classes = classes

    def scores(self, rows: pd.DataFrame) -> np.ndarray:
        """Class probabilities (one column per class) or regression values."""
        x = self.preprocessor.transform(rows[self.features]).astype(np.float32)
        if self.framework == "xgboost":
            import xgboost

            predicted = self.model.predict(xgboost.DMatrix(x))
            if self.task == "classification" and predicted.ndim == 1:
                return np.column_stack([1 - predicted, predicted])
            return predicted
        import torch

        with torch.no_grad():
            out = self.model(torch.as_tensor(x))
            if self.task == "classification":
                return torch.softmax(out, dim=-1).numpy()
            return out.reshape(len(x)).numpy()

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """MLflow's entry point: a DataFrame of raw rows to a DataFrame of predictions."""
        rows = model_input
        scores = self.scores(rows)
        if self.task != "classification":
            return pd.DataFrame({"prediction": scores})
        labels = np.asarray(self.classes, dtype=object)[scores.argmax(axis=1)]
        out = pd.DataFrame({"prediction": labels.tolist()}, index=rows.index)
        for index, label in enumerate(self.classes):
            out[f"proba_{label}"] = scores[:, index]
        return out


def _requirements(framework: str) -> list[str]:
    """Pinned requirements of the packaged model (given, so MLflow need not infer them slowly)."""
    names = ["mlflow", "cloudpickle", "numpy", "pandas", "scikit-learn", framework]
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def log_model(model: TabularModel, example: pd.DataFrame, code_paths: list[str]) -> ModelInfo:
    """Log the pyfunc under the active run as `model`, with its signature and an input example."""
    example = example[model.features].head(5)
    signature = infer_signature(example, model.predict(None, example))
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=model,
        signature=signature,
        input_example=example,
        pip_requirements=_requirements(model.framework),
        code_paths=code_paths or None,
    )
