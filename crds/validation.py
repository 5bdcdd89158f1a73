"""Check manifests against the models and report each problem with the path of the field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlplane.crds.base import API_VERSION
from mlplane.crds.definitions import KINDS


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one object, located the way `kubectl` users read it."""

    source: str
    object: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.object}: {self.field}: {self.message}"


def field_path(loc: Iterable[int | str]) -> str:
    """('spec', 'canary', 'steps', 1) → 'spec.canary.steps[1]'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_object(doc: Any, source: str = "<input>") -> tuple[Any, list[Problem]]:
    """The resource model of one manifest, or None and every problem with it."""
    if not isinstance(doc, dict):
        return None, [Problem(source, "?", "(document)", "is not a mapping")]
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?")
    label = f"{kind or '?'}/{name}"
    if doc.get("apiVersion") != API_VERSION:
        return None, [Problem(source, label, "apiVersion", f"must be {API_VERSION}")]
    if kind not in KINDS:
        known = ", ".join(KINDS)
        return None, [Problem(source, label, "kind", f"unknown kind {kind!r}; known: {known}")]
    try:
        return KINDS[kind].resource.model_validate(doc), []
    except ValidationError as error:
        return None, [
            Problem(source, label, field_path(e["loc"]), e["msg"].removeprefix("Value error, "))
            for e in error.errors()
        ]


def validate_object(doc: Any, source: str = "<input>") -> list[Problem]:
    """Every problem with one manifest; an empty list means the API server should accept it."""
    return parse_object(doc, source)[1]


def manifest_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The YAML files named, and those inside the directories named, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path


def validate_files(paths: Iterable[Path]) -> list[Problem]:
    problems: list[Problem] = []
    for path in manifest_files(paths):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as error:
            problems.append(Problem(str(path), "?", "(file)", str(error).replace("\n", " ")))
            continue
        for doc in docs:
            problems.extend(validate_object(doc, str(path)))
    return problems
