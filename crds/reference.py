"""The API reference (docs/api.md), written from the same schemas the CRDs carry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from mlplane.crds.definitions import KINDS, Kind
from mlplane.crds.schema import structural_schema


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity"
    if "enum" in node:
        return " \\| ".join(str(v) for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    return kind


def _rows(node: dict[str, Any], path: str) -> Iterator[tuple[str, str, str, str]]:
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}"
        default = json.dumps(child["default"]) if "default" in child else ""
        if name in required:
            default = "required"
        description = child.get("description", "").replace("|", "\\|").replace("\n", " ")
        yield f"`{child_path}`", f"`{_type(child)}`", default, description
        target = child.get("items", child) if child.get("type") == "array" else child
        if "additionalProperties" in target:
            target = target["additionalProperties"]
        yield from _rows(target, child_path + ("[]" if target is not child else ""))


def _table(kind: Kind, part: str) -> str:
    schema = structural_schema(kind.spec if part == "spec" else kind.status)
    lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(schema, part)]
    return "\n".join(lines)


def api_reference() -> str:
    sections = [
        "# API reference",
        "",
        "Generated from the Pydantic models in `crds/` by `make generate`; do not edit by hand.",
        "Group `mlplane.dev`, version `v1alpha1`.",
        "`kubectl explain <kind>.spec` shows the same text.",
    ]
    for kind in KINDS.values():
        sections += [
            "",
            f"## {kind.kind} (`{kind.short_name}`)",
            "",
            kind.description,
            "",
            "### spec",
            "",
            _table(kind, "spec"),
            "",
            "### status",
            "",
            _table(kind, "status"),
        ]
    return "\n".join(sections) + "\n"
