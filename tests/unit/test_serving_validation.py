"""Request validation against the model signature: every fault is a RequestError naming it."""

import math

import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.types import ColSpec, DataType, Schema

from mlplane.serving.validation import (
    Feature,
    RequestError,
    features_from_schema,
    parse_rows,
    to_frame,
)

FEATURES = [
    Feature("age", "long"),
    Feature("income", "double"),
    Feature("member", "boolean"),
    Feature("plan", "string"),
    Feature("score", "double", required=False),
]
ROW = {"age": 41, "income": 5200.5, "member": True, "plan": "gold", "score": 0.3}


def rejected(rows: list[dict], match: str) -> None:
    with pytest.raises(RequestError, match=match):
        to_frame(rows, FEATURES)


def test_a_valid_row_becomes_a_typed_frame_in_signature_order() -> None:
    frame = to_frame([{**ROW, "age": 41.0}, dict(reversed(list(ROW.items())))], FEATURES)
    assert list(frame.columns) == ["age", "income", "member", "plan", "score"]
    assert str(frame["age"].dtype) == "int64"
    assert str(frame["income"].dtype) == "float64"
    assert frame["member"].tolist() == [True, True]
    # Strings stay Python objects, as MLflow's schema enforcement expects, not pandas' str dtype.
    assert frame["plan"].dtype == object
    assert frame["plan"].tolist() == ["gold", "gold"]


def test_optional_feature_may_be_missing_null_or_nan() -> None:
    rows = [{k: v for k, v in ROW.items() if k != "score"}, {**ROW, "score": None}]
    rows.append({**ROW, "score": float("nan")})
    frame = to_frame(rows, FEATURES)
    assert all(math.isnan(v) for v in frame["score"])


def test_missing_and_unknown_features_are_named() -> None:
    rejected([{k: v for k, v in ROW.items() if k != "income"}], r"missing feature\(s\) 'income'")
    rejected([{**ROW, "colour": "red"}], r"unknown feature\(s\) 'colour'; the model takes 'age'")


@pytest.mark.parametrize(
    ("feature", "value", "match"),
    [
        ("age", "41", r"feature 'age' must be an integer, got str '41'"),
        ("age", 41.5, r"feature 'age' must be an integer"),
        ("age", True, r"feature 'age' must be an integer, got bool"),
        ("age", 2**70, r"feature 'age' is out of range for a long"),
        ("income", "lots", r"feature 'income' must be a number, got str 'lots'"),
        ("income", float("inf"), r"feature 'income' is out of range for a double: float inf"),
        ("income", 10**400, r"feature 'income' is out of range for a double: int 1000"),
        ("income", None, r"feature 'income' is null but the model requires a value"),
        ("income", float("nan"), r"feature 'income' is NaN but the model requires a value"),
        ("member", 1, r"feature 'member' must be true or false, got int 1"),
        ("plan", 3, r"feature 'plan' must be a string, got int 3"),
    ],
)
def test_wrong_types_and_missing_values_name_the_feature(feature, value, match) -> None:
    rejected([{**ROW, feature: value}], match)


def test_a_float_column_refuses_what_overflows_a_float32() -> None:
    narrow = [Feature("ratio", "float")]
    assert to_frame([{"ratio": 3.0e38}], narrow)["ratio"].tolist() == [pytest.approx(3.0e38)]
    with pytest.raises(RequestError, match=r"'ratio' is out of range for a float: float 1e\+39"):
        to_frame([{"ratio": 1e39}], narrow)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (float("inf"), r"row 1: feature 'x' is out of range for a 64-bit float: inf"),
        ([1.0, [2.0, float("-inf")]], r"feature 'x' is out of range for a 64-bit float: -inf"),
        ({"nested": 2**64}, r"feature 'x' is out of range for a 64-bit integer: int 1844"),
    ],
)
def test_without_a_signature_numbers_must_fit_64_bits(value: object, match: str) -> None:
    assert to_frame([{"x": 2**63 - 1}, {"x": [1.5, -(2**63)]}], None)["x"].tolist()[0] == 2**63 - 1
    with pytest.raises(RequestError, match=match):
        to_frame([{"x": 1}, {"x": value}], None)


def test_the_failing_row_is_named_in_a_batch() -> None:
    rejected([ROW, ROW, {**ROW, "plan": None}], r"row 2: feature 'plan' is null")


def test_body_shapes_and_the_row_limit() -> None:
    assert parse_rows({"instances": [ROW]}, 4) == [ROW]
    assert parse_rows({"dataframe_records": [ROW]}, 4) == [ROW]
    split = {"columns": ["age", "plan"], "data": [[1, "a"], [2, "b"]]}
    assert parse_rows({"dataframe_split": split}, 4) == [
        {"age": 1, "plan": "a"},
        {"age": 2, "plan": "b"},
    ]
    with pytest.raises(RequestError, match="batch of 5 rows exceeds maxBatchSize 4"):
        parse_rows({"instances": [ROW] * 5}, 4)
    with pytest.raises(RequestError, match="instances has no rows"):
        parse_rows({"instances": []}, 4)
    with pytest.raises(RequestError, match="exactly one of instances"):
        parse_rows({"rows": [ROW]}, 4)
    with pytest.raises(RequestError, match="must be a JSON object"):
        parse_rows([ROW], 4)
    with pytest.raises(RequestError, match=r"dataframe_split.data\[1\] must be a list of 2"):
        parse_rows({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3]]}}, 4)


def test_features_come_from_an_mlflow_signature() -> None:
    frame = pd.DataFrame({"x": [1.0], "n": [1], "s": ["a"]})
    signature = infer_signature(frame, [0])
    assert features_from_schema(signature.inputs) == [
        Feature("x", "double"),
        Feature("n", "long"),
        Feature("s", "string"),
    ]
    optional = Schema([ColSpec(DataType.double, "x", required=False)])
    assert features_from_schema(optional) == [Feature("x", "double", required=False)]
    assert features_from_schema(None) is None
    assert features_from_schema(Schema([ColSpec(DataType.double)])) is None  # unnamed


def test_without_a_signature_rows_pass_through() -> None:
    assert to_frame([{"a": 1}], None).to_dict(orient="records") == [{"a": 1}]
