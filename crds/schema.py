"""Pydantic JSON Schema → Kubernetes structural openAPIV3Schema.

Pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3 subset: no
`$ref`, a `type` on every node (except int-or-string and preserve-unknown-fields nodes), no
`title`, no `additionalProperties: false`, no `anyOf [X, null]`, and boolean exclusive bounds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Keys the API server accepts on a structural schema node; the rest of what Pydantic emits goes.
_KEPT = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "default",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "anyOf",
    "nullable",
}
_KNOWN_FORMATS = {"date-time", "date", "int32", "int64", "float", "double", "byte", "uuid"}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of `model`, as the value of a CRD's `spec` or `status` property."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _inline(node, defs)
    # int-or-string keeps its anyOf branches; every other union is collapsed.
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        return _collapse_any_of(node, defs)
    return _clean(node, defs)


def _inline(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Replace a `$ref` with its definition; keys beside the ref (description, rules) win."""
    while "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings}
        if "x-kubernetes-validations" in target and "x-kubernetes-validations" in siblings:
            node["x-kubernetes-validations"] = (
                target["x-kubernetes-validations"] + siblings["x-kubernetes-validations"]
            )
    return node


def _collapse_any_of(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`X | None` becomes X (absent means unset); `int | float` becomes number."""
    branches = [_inline(b, defs) for b in node["anyOf"] if b.get("type") != "null"]
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    if len(branches) == 1:
        merged = {**branches[0], **outer}
        if outer.get("default") is None:
            merged.pop("default", None)
        return _convert(merged, defs)
    if {b.get("type") for b in branches} <= {"integer", "number"}:
        return _clean({**outer, "type": "number"}, defs)
    raise ValueError(f"cannot express this union in a structural schema: {node}")


def _clean(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
        elif key in _KEPT:
            out[key] = value
    if out.get("default", 0) is None:
        del out["default"]
    if "format" in out and out["format"] not in _KNOWN_FORMATS:
        del out["format"]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[bound.replace("exclusiveM", "m")] = out[bound]
            out[bound] = True
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if "properties" in out:
        out["properties"] = {k: _convert(v, defs) for k, v in out["properties"].items()}
        out["type"] = "object"
    additional = out.get("additionalProperties")
    if additional is False or (additional is not None and "properties" in out):
        del out["additionalProperties"]
    elif additional is True:
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(additional, dict):
        out["additionalProperties"] = _convert(additional, defs)
    if "items" in out:
        out["items"] = _convert(out["items"], defs)
    if "anyOf" in out:
        out["anyOf"] = [{"type": b["type"]} for b in out["anyOf"]]
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"
