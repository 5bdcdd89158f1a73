"""Turn raw table columns into the numeric matrix models train on, fitted on the train split only.

The fitted ColumnTransformer travels inside the logged MLflow model, so a deployment receives raw
rows exactly like the dataset's and applies the very same imputation, scaling and encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, LabelEncoder, OneHotEncoder, StandardScaler

from mlplane.training.datasets import Splits, Task
from mlplane.training.worker import PreparedData


def _as_object(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as plain objects with NaN for missing, which SimpleImputer expects.

    pandas' string, category and boolean dtypes use pd.NA, which the imputer does not treat as a
    missing value.
    """
    converted = frame.astype(object)
    return converted.where(frame.notna(), np.nan)


def build_preprocessor(table: pd.DataFrame, features: list[str]) -> ColumnTransformer:
    """Numeric columns: median-impute then standardise; the others: mode-impute then one-hot."""
    numeric = [
        c
        for c in features
        if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
    ]
    categorical = [c for c in features if c not in numeric]
    numeric_steps: Pipeline = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    categorical_steps: Pipeline = make_pipeline(
        FunctionTransformer(_as_object, feature_names_out="one-to-one"),
        SimpleImputer(strategy="most_frequent"),
        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
    )
    return ColumnTransformer(
        [("numeric", numeric_steps, numeric), ("categorical", categorical_steps, categorical)],
        remainder="drop",
        sparse_threshold=0.0,
        verbose_feature_names_out=False,
    )


@dataclass(frozen=True)
class Prepared:
    """The training data plus what the runner needs afterwards to evaluate and package the model."""

    data: PreparedData
    preprocessor: ColumnTransformer
    classes: list[object]
    """Original label values, index = class index (empty for regression)."""
    y_test: np.ndarray
    """Encoded test labels; the test features go through the packaged model, raw."""


def prepare(splits: Splits, features: list[str], label: str, task: Task) -> Prepared:
    """Fit the preprocessor (and the label vocabulary) on train, transform every split."""
    preprocessor = build_preprocessor(splits.train, features)
    x_train = preprocessor.fit_transform(splits.train[features]).astype(np.float32)

    def transform(frame: pd.DataFrame) -> np.ndarray:
        return preprocessor.transform(frame[features]).astype(np.float32)

    classes: list[object] = []
    if task == "classification":
        # The vocabulary covers every split so a class absent from train still has an index.
        encoder = LabelEncoder().fit(
            pd.concat([splits.train[label], splits.validation[label], splits.test[label]])
        )
        classes = encoder.classes_.tolist()

        def encode(frame: pd.DataFrame) -> np.ndarray:
            return encoder.transform(frame[label]).astype(np.int64)
    else:

        def encode(frame: pd.DataFrame) -> np.ndarray:
            return frame[label].to_numpy(dtype=np.float32)

    data = PreparedData(
        x_train=x_train,
        y_train=encode(splits.train),
        x_val=transform(splits.validation),
        y_val=encode(splits.validation),
        feature_names=[str(n) for n in preprocessor.get_feature_names_out()],
        task=task,
        num_classes=len(classes),
    )
    return Prepared(
        data=data,
        preprocessor=preprocessor,
        classes=classes,
        y_test=encode(splits.test),
    )
