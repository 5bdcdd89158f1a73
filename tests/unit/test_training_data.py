"""Datasets, splits and preprocessing of the training runner (no Ray, no MLflow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplane.crds.trainingjob import Dataset, Split
from mlplane.training.datasets import (
    Splits,
    content_hash,
    feature_columns,
    load_table,
    resolve_task,
    split_table,
)
from mlplane.training.preprocessing import prepare


@pytest.fixture
def table() -> pd.DataFrame:
    """200 rows: numeric and categorical features with gaps, a day column, groups, two classes."""
    rng = np.random.default_rng(3)
    n = 200
    return pd.DataFrame(
        {
            "amount": np.where(rng.random(n) < 0.1, np.nan, rng.normal(100, 20, n)),
            "plan": rng.choice(["basic", "pro", None], size=n, p=[0.6, 0.3, 0.1]),
            "day": pd.date_range("2024-01-01", periods=n, freq="D")[rng.permutation(n)],
            "customer": rng.integers(0, 40, n),
            "churned": np.where(rng.random(n) < 0.25, 1, 0),
        }
    )


@pytest.mark.parametrize(
    ("name", "label", "rows"),
    [
        ("breast_cancer", "target", 569),
        ("digits", "target", 1797),
        ("wine", "target", 178),
        ("iris", "target", 150),
        ("diabetes", "target", 442),
    ],
)
def test_sklearn_datasets_load_as_frames(name: str, label: str, rows: int) -> None:
    frame = load_table(f"sklearn://{name}")
    assert len(frame) == rows
    assert label in frame.columns


def test_file_csv_and_parquet_load_the_same_table(table: pd.DataFrame, tmp_path: Path) -> None:
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet")
    from_csv = load_table(f"file://{tmp_path / 't.csv'}")
    from_parquet = load_table(f"file://{tmp_path / 't.parquet'}")
    assert list(from_csv.columns) == list(table.columns) == list(from_parquet.columns)
    assert len(from_csv) == len(from_parquet) == 200
    assert from_parquet["amount"].isna().sum() == table["amount"].isna().sum()


def test_unknown_file_format_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ValueError, match=r"dataset.uri: .*neither .csv nor .parquet"):
        load_table(f"file://{tmp_path / 't.json'}")


def test_content_hash_follows_values_not_format(table: pd.DataFrame) -> None:
    same = content_hash(table.copy())
    assert same == content_hash(table)
    changed = table.copy()
    changed.loc[0, "customer"] += 1
    assert content_hash(changed) != same


def test_features_default_to_all_but_label_and_split_columns(table: pd.DataFrame) -> None:
    dataset = Dataset(
        uri="file:///t.csv",
        label="churned",
        split=Split(strategy="group", group_column="customer"),
    )
    assert feature_columns(table, dataset) == ["amount", "plan", "day"]
    with pytest.raises(ValueError, match=r"dataset\.features"):
        feature_columns(table, Dataset(uri="file:///t.csv", label="churned", features=["nope"]))


@pytest.mark.parametrize(
    ("labels", "declared", "task"),
    [
        (pd.Series([0, 1, 1, 0]), "auto", "classification"),
        (pd.Series(["yes", "no"]), "auto", "classification"),
        (pd.Series([0.5, 1.5, 2.25]), "auto", "regression"),
        (pd.Series(range(100)), "auto", "regression"),
        (pd.Series([0, 1, 1, 0]), "regression", "regression"),
    ],
)
def test_task_resolution(labels: pd.Series, declared: str, task: str) -> None:
    assert resolve_task(labels, declared) == task


def test_stratified_split_keeps_class_ratios(table: pd.DataFrame) -> None:
    split = Split(validation=0.2, test=0.2, strategy="stratified", seed=1)
    splits = split_table(table, "churned", split, "classification")
    overall = table["churned"].mean()
    for part in (splits.train, splits.validation, splits.test):
        assert part["churned"].mean() == pytest.approx(overall, abs=0.03)
    assert (len(splits.test), len(splits.validation)) == (40, 40)
    assert _disjoint_and_complete(table, splits)


def test_random_split_is_seeded(table: pd.DataFrame) -> None:
    split = Split(strategy="random", seed=9)
    first = split_table(table, "churned", split, "classification")
    again = split_table(table, "churned", split, "classification")
    other = split_table(table, "churned", Split(strategy="random", seed=10), "classification")
    assert list(first.test.index) == list(again.test.index)
    assert list(first.test.index) != list(other.test.index)
    assert _disjoint_and_complete(table, first)


def test_time_split_puts_the_latest_rows_in_test(table: pd.DataFrame) -> None:
    split = Split(validation=0.2, test=0.1, strategy="time", time_column="day")
    splits = split_table(table, "churned", split, "classification")
    assert len(splits.test) == 20
    assert splits.test["day"].min() > splits.validation["day"].max()
    assert splits.validation["day"].min() > splits.train["day"].max()
    assert _disjoint_and_complete(table, splits)


def test_group_split_keeps_each_group_in_one_split(table: pd.DataFrame) -> None:
    split = Split(validation=0.2, test=0.2, strategy="group", group_column="customer", seed=4)
    splits = split_table(table, "churned", split, "classification")
    groups = [set(p["customer"]) for p in (splits.train, splits.validation, splits.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert all(groups)
    assert _disjoint_and_complete(table, splits)


def test_validation_share_must_be_positive() -> None:
    # The validation split drives early stopping, checkpoint ranking and the overfitting gap.
    with pytest.raises(ValueError, match="greater than 0"):
        Split(validation=0, test=0.2)


def _disjoint_and_complete(table: pd.DataFrame, splits: Splits) -> bool:
    parts = [splits.train, splits.validation, splits.test]
    indices = [i for p in parts for i in p.index]
    return len(indices) == len(set(indices)) == len(table)


def test_preprocessing_is_fitted_on_train_only(table: pd.DataFrame) -> None:
    splits = split_table(table, "churned", Split(seed=2), "classification")
    features = ["amount", "plan"]
    prepared = prepare(splits, features, "churned", "classification")
    numeric = prepared.preprocessor.named_transformers_["numeric"]
    imputer, scaler = numeric.named_steps["simpleimputer"], numeric.named_steps["standardscaler"]
    train_amounts = splits.train["amount"]
    assert imputer.statistics_[0] == pytest.approx(train_amounts.median())
    assert scaler.mean_[0] == pytest.approx(train_amounts.fillna(train_amounts.median()).mean())
    assert scaler.mean_[0] != pytest.approx(table["amount"].fillna(table["amount"].median()).mean())
    # Scaled train has mean 0; validation, transformed with train's statistics, need not.
    assert prepared.data.x_train[:, 0].mean() == pytest.approx(0, abs=1e-5)
    assert prepared.data.feature_names == ["amount", "plan_basic", "plan_pro"]
    assert prepared.data.x_train.dtype == np.float32
    assert not np.isnan(prepared.data.x_val).any()


def test_labels_are_encoded_as_class_indices(table: pd.DataFrame) -> None:
    table = table.assign(churned=table["churned"].map({0: "stay", 1: "leave"}))
    splits = split_table(table, "churned", Split(), "classification")
    prepared = prepare(splits, ["amount"], "churned", "classification")
    assert prepared.classes == ["leave", "stay"]
    assert prepared.data.num_classes == 2
    assert set(prepared.data.y_train) == {0, 1}
    assert prepared.data.y_train.dtype == np.int64
    assert len(prepared.y_test) == len(splits.test)


def test_unseen_category_at_serving_time_is_ignored(table: pd.DataFrame) -> None:
    splits = split_table(table, "churned", Split(), "classification")
    prepared = prepare(splits, ["amount", "plan"], "churned", "classification")
    row = pd.DataFrame({"amount": [None], "plan": ["enterprise"]})
    assert prepared.preprocessor.transform(row).tolist() == [[pytest.approx(0, abs=0.1), 0, 0]]
