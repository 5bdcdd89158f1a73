"""Request validation against a model's input signature, before anything reaches the model.

MLflow's own schema enforcement raises deep inside `predict`, with messages about dtypes; a client
deserves a 4xx that names the feature and the row. Everything here is pure (no Ray) so each rule is
unit-tested directly.

Accepted bodies (the MLflow scoring protocol, plus the KServe v1 shape):
`{"instances": [{feature: value, ...}, ...]}`, `{"dataframe_records": [...]}` (same), and
`{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`.

A null or NaN is allowed only in a column the signature marks optional (`required=False`).
Every number must fit its column's type (a JSON `1e400` parses as infinity, and a 4000-digit
integer fits no dtype): without a signature, a float must be finite and an integer must fit in 64
bits.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

NUMERIC_DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}
OTHER_DTYPES = {"boolean": "bool", "string": "object", "binary": "object", "datetime": "object"}
_FLOAT_MAX = {"double": float(np.finfo(np.float64).max), "float": float(np.finfo(np.float32).max)}
_INT64_MIN, _INT64_END = -(2**63), 2**63
_MAX_NAMES_SHOWN = 10


class RequestError(ValueError):
    """The request cannot be served as sent; the message says why and is safe to return."""

    status = 400
    """The HTTP status that answers it (a 4xx: the client's fault, never the model's)."""


@dataclass(frozen=True)
class Feature:
    """One input column of a model signature."""

    name: str
    type: str
    """An MLflow DataType name: double, float, long, integer, boolean, string, binary, datetime."""
    required: bool = True


def features_from_schema(schema: Any) -> list[Feature] | None:
    """The named columns of an MLflow input `Schema`; None when there is nothing to check by name.

    Tensor-based and unnamed schemas are left to MLflow's own enforcement.
    """
    if schema is None or getattr(schema, "is_tensor_spec", lambda: True)():
        return None
    if not schema.has_input_names():
        return None
    features = []
    for column in schema.inputs:
        type_name = getattr(column.type, "name", None)
        if type_name not in NUMERIC_DTYPES and type_name not in OTHER_DTYPES:
            return None  # arrays, objects, maps: leave to MLflow
        features.append(Feature(column.name, type_name, bool(getattr(column, "required", True))))
    return features


def parse_rows(body: Any, max_rows: int) -> list[dict[str, Any]]:
    """The request's rows as dicts; the shape, emptiness and the row limit are checked here."""
    if not isinstance(body, dict):
        raise RequestError('body must be a JSON object such as {"instances": [{"feature": value}]}')
    keys = [k for k in ("instances", "dataframe_records", "dataframe_split") if k in body]
    if len(keys) != 1:
        raise RequestError(
            "body must have exactly one of instances, dataframe_records, dataframe_split; "
            f"got keys: {', '.join(sorted(map(str, body))) or 'none'}"
        )
    key = keys[0]
    payload = body[key]
    if key == "dataframe_split":
        rows = _split_rows(payload)
    else:
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            raise RequestError(f"{key} must be a list of objects, one per row")
        rows = payload
    if not rows:
        raise RequestError(f"{key} has no rows")
    if len(rows) > max_rows:
        raise RequestError(
            f"batch of {len(rows)} rows exceeds maxBatchSize {max_rows}; split the request"
        )
    return rows


def _split_rows(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, dict) or "columns" not in payload or "data" not in payload:
        raise RequestError("dataframe_split must be an object with columns and data")
    columns, data = payload["columns"], payload["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError("dataframe_split.columns must be a list of feature names")
    if not isinstance(data, list):
        raise RequestError("dataframe_split.data must be a list of rows")
    rows = []
    for index, values in enumerate(data):
        if not isinstance(values, list) or len(values) != len(columns):
            raise RequestError(
                f"dataframe_split.data[{index}] must be a list of {len(columns)} values"
            )
        rows.append(dict(zip(columns, values, strict=True)))
    return rows


def to_frame(rows: list[dict[str, Any]], features: list[Feature] | None) -> pd.DataFrame:
    """A DataFrame in the signature's column order and dtypes, or RequestError naming the fault."""
    if features is None:
        for index, row in enumerate(rows):
            for name, value in row.items():
                _check_numbers(value, f"{_where(index, rows)}feature {name!r}")
        return pd.DataFrame.from_records(rows)
    names = [f.name for f in features]
    known = set(names)
    required = {f.name for f in features if f.required}
    for index, row in enumerate(rows):
        present = set(row)
        missing = [n for n in names if n in required and n not in present]
        if missing:
            raise RequestError(f"{_where(index, rows)}missing feature(s) {_names(missing)}")
        extra = sorted(present - known)
        if extra:
            raise RequestError(
                f"{_where(index, rows)}unknown feature(s) {_names(extra)}; "
                f"the model takes {_names(names)}"
            )
        for feature in features:
            if feature.name in row:
                _check_value(feature, row[feature.name], index, rows)
    # One typed array per column: a per-column `astype` of a finished frame costs ten times more,
    # and this runs for every request.
    return pd.DataFrame({f.name: _column(f, [row.get(f.name) for row in rows]) for f in features})


def _column(feature: Feature, values: list[Any]) -> np.ndarray | pd.Series:
    dtype = _dtype(feature)
    if dtype == "object":  # a bare object array would be inferred as pandas' string dtype
        return pd.Series([math.nan if v is None else v for v in values], dtype=dtype)
    return np.array(values, dtype=dtype)


def _dtype(feature: Feature) -> str:
    dtype = NUMERIC_DTYPES.get(feature.type) or OTHER_DTYPES[feature.type]
    if not feature.required and dtype.startswith("int"):
        return "float64"  # an optional integer column may hold NaN
    if not feature.required and dtype == "bool":
        return "object"
    return dtype


def _check_value(feature: Feature, value: Any, index: int, rows: list[dict[str, Any]]) -> None:
    where = f"{_where(index, rows)}feature {feature.name!r}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if feature.required:
            shown = "null" if value is None else "NaN"
            raise RequestError(f"{where} is {shown} but the model requires a value")
        return
    kind = feature.type
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"{where} must be a number, got {_shown(value)}")
        # Compared, not converted: float() of a 400-digit integer raises OverflowError.
        if not -_FLOAT_MAX[kind] <= value <= _FLOAT_MAX[kind]:
            raise RequestError(f"{where} is out of range for a {kind}: {_shown(value)}")
    elif kind in ("long", "integer"):
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise RequestError(f"{where} must be an integer, got {_shown(value)}")
        bits = 63 if kind == "long" else 31
        if not -(2**bits) <= value < 2**bits:
            raise RequestError(f"{where} is out of range for a {kind}: {_shown(value)}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise RequestError(f"{where} must be true or false, got {_shown(value)}")
    elif kind == "string":
        if not isinstance(value, str):
            raise RequestError(f"{where} must be a string, got {_shown(value)}")
    elif kind == "binary":
        _check_base64(value, where)
    elif kind == "datetime":
        _check_datetime(value, where)


def _check_numbers(value: Any, where: str) -> None:
    """Without a signature: every number, nested ones included, fits a float64 or an int64."""
    if isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _check_numbers(item, where)
    elif isinstance(value, float) and math.isinf(value):
        raise RequestError(f"{where} is out of range for a 64-bit float: {value}")
    elif isinstance(value, int) and not _INT64_MIN <= value < _INT64_END:
        raise RequestError(f"{where} is out of range for a 64-bit integer: {_shown(value)}")


def _check_base64(value: Any, where: str) -> None:
    try:
        base64.b64decode(value, validate=True)
    except (TypeError, binascii.Error):
        raise RequestError(f"{where} must be base64-encoded bytes, got {_shown(value)}") from None


def _check_datetime(value: Any, where: str) -> None:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise RequestError(f"{where} must be an ISO 8601 date-time, got {_shown(value)}") from None


def _where(index: int, rows: list[dict[str, Any]]) -> str:
    return f"row {index}: " if len(rows) > 1 else ""


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"
