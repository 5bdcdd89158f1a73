"""Load the training table and divide it into train, validation and test splits.

Everything here runs in the runner (the Ray job's driver), before any Ray Train worker starts, so
the same rows go to every attempt of a job: splits are seeded and the table's content hash is
logged, which is what makes a retry or a rerun comparable with the first run.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from mlplane.crds.trainingjob import Dataset, Split

Task = Literal["classification", "regression"]

# An integer label with at most this many distinct values is a class label under task: auto.
MAX_AUTO_CLASSES = 20


def load_table(uri: str) -> pd.DataFrame:
    """The dataset as one DataFrame: `sklearn://<name>`, `file://` or `s3://` CSV or Parquet."""
    scheme, _, rest = uri.partition("://")
    if scheme == "sklearn":
        return _load_sklearn(rest)
    if scheme == "file":
        path = Path(unquote(urlparse(uri).path))
        return _read_bytes(path.read_bytes(), path.name)
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return _read_bytes(_s3_bytes(bucket, key), key)
    raise ValueError(f"dataset.uri: unsupported scheme {scheme!r} (use sklearn://, file://, s3://)")


def _load_sklearn(name: str) -> pd.DataFrame:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}", None)
    if loader is None:
        raise ValueError(f"dataset.uri: scikit-learn has no dataset {name!r}")
    return loader(as_frame=True).frame


def _s3_bytes(bucket: str, key: str) -> bytes:
    """The object's bytes through boto3, which honours AWS_ENDPOINT_URL (moto, MinIO)."""
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _read_bytes(data: bytes, name: str) -> pd.DataFrame:
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(io.BytesIO(data))
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(io.BytesIO(data), compression="infer" if name.endswith(".gz") else None)
    raise ValueError(f"dataset.uri: {name!r} is neither .csv nor .parquet")


def content_hash(table: pd.DataFrame) -> str:
    """A SHA-256 of the table's values and column names, whatever file format carried them."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, table.columns)).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def feature_columns(table: pd.DataFrame, dataset: Dataset) -> list[str]:
    """`dataset.features`, or every column but the label and the split's time/group column."""
    if dataset.features:
        missing = [c for c in [*dataset.features, dataset.label] if c not in table.columns]
        if missing:
            raise ValueError(f"dataset.features: no column(s) {missing} in {dataset.uri}")
        return list(dataset.features)
    if dataset.label not in table.columns:
        raise ValueError(f"dataset.label: no column {dataset.label!r} in {dataset.uri}")
    excluded = {dataset.label, dataset.split.time_column, dataset.split.group_column}
    return [c for c in table.columns if c not in excluded]


def resolve_task(labels: pd.Series, declared: str) -> Task:
    """`model.task`, or under `auto`: strings, booleans and small integer ranges mean classes."""
    if declared in ("classification", "regression"):
        return declared  # type: ignore[return-value]
    if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        return "classification"
    if pd.api.types.is_integer_dtype(labels) and labels.nunique() <= MAX_AUTO_CLASSES:
        return "classification"
    return "regression"


@dataclass(frozen=True)
class Splits:
    """Row-disjoint train, validation and test tables (all columns kept)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def split_table(table: pd.DataFrame, label: str, split: Split, task: Task) -> Splits:
    """Divide the rows: the test split first, then validation from what remains.

    stratified keeps the class ratios (random for regression), time puts the latest rows in test
    and the next latest in validation, group keeps every group inside one split.
    """
    if split.strategy == "time":
        return _split_by_time(table, split)
    if split.strategy == "group":
        return _split_by_group(table, split)
    stratify = split.strategy == "stratified" and task == "classification"
    rest, test = _take(table, split.test, split.seed, table[label] if stratify else None)
    share = split.validation / (1 - split.test)
    train, validation = _take(rest, share, split.seed, rest[label] if stratify else None)
    return Splits(train, validation, test)


def _take(
    table: pd.DataFrame, share: float, seed: int, stratify: pd.Series | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, taken) with `share` of the rows taken; nothing taken for a share of 0."""
    if share <= 0:
        return table, table.iloc[:0]
    rest, taken = train_test_split(table, test_size=share, random_state=seed, stratify=stratify)
    return rest, taken


def _split_by_time(table: pd.DataFrame, split: Split) -> Splits:
    ordered = table.sort_values(split.time_column, kind="stable")
    n = len(ordered)
    n_test = round(n * split.test)
    n_val = round(n * split.validation)
    train_end = n - n_test - n_val
    return Splits(
        ordered.iloc[:train_end], ordered.iloc[train_end : n - n_test], ordered.iloc[n - n_test :]
    )


def _split_by_group(table: pd.DataFrame, split: Split) -> Splits:
    groups = table[split.group_column]
    rest, test = _take_groups(table, groups, split.test, split.seed)
    share = split.validation / (1 - split.test)
    train, validation = _take_groups(rest, rest[split.group_column], share, split.seed)
    return Splits(train, validation, test)


def _take_groups(
    table: pd.DataFrame, groups: pd.Series, share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if share <= 0:
        return table, table.iloc[:0]
    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    rest_rows, taken_rows = next(splitter.split(np.zeros(len(table)), groups=groups))
    return table.iloc[rest_rows], table.iloc[taken_rows]
