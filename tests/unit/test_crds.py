"""The generated CRDs: current, structural, described, and carrying their CEL rules."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlplane.crds import KINDS, crd
from mlplane.crds.base import QUANTITY_PATTERN
from mlplane.crds.generate import crd_file, crd_yaml
from mlplane.crds.reference import api_reference

REPO = Path(__file__).parents[2]
CRDS = {name: crd(kind) for name, kind in KINDS.items()}


@pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.kind)
def test_committed_crd_is_current(kind) -> None:
    assert crd_file(kind).read_text() == crd_yaml(kind), "stale: run `make generate`"


def test_committed_api_reference_is_current() -> None:
    assert (REPO / "docs" / "api.md").read_text() == api_reference(), "stale: run `make generate`"


def _nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    for path, node in _nodes(_schema(kind), kind):
        assert "$ref" not in node and "allOf" not in node and "title" not in node, path
        untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert "type" in node or untyped_ok, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_is_described(kind: str) -> None:
    schema = _schema(kind)
    for part in ("spec", "status"):
        for path, node in _nodes(schema["properties"][part], part):
            if path.endswith(("[]", "{}")):
                continue  # list items and map values are described by their field
            assert node.get("description"), f"{kind} {path} has no description"


def _unbounded(node: dict[str, Any]) -> str | None:
    """What a hostile spec could blow up in this node, if anything."""
    if node.get("x-kubernetes-int-or-string"):
        return None if "maxLength" in node and "x-kubernetes-validations" in node else "quantity"
    kind = node.get("type")
    if kind in ("integer", "number") and "enum" not in node:
        return None if "minimum" in node and "maximum" in node else "number without min and max"
    if kind == "string" and not {"enum", "maxLength"} & node.keys():
        return None if node.get("format") == "date-time" else "string without maxLength"
    if kind == "array" and "maxItems" not in node:
        return "list without maxItems"
    if kind == "object" and "properties" not in node and "maxProperties" not in node:
        return "map without maxProperties"
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_every_number_string_list_and_map_in_a_spec_is_bounded(kind: str) -> None:
    """No spec value can overflow the operator's arithmetic or grow without limit (1e308
    replicas, a 1 MiB label); free-form content is bounded by the models' validators."""
    spec = _schema(kind)["properties"]["spec"]
    unbounded = {path: why for path, node in _nodes(spec, "spec") if (why := _unbounded(node))}
    assert unbounded == {}


def _rules(kind: str) -> dict[str, str]:
    """Every CEL rule in a schema, keyed by rule, valued by the field path it sits on."""
    return {
        rule["rule"]: path
        for path, node in _nodes(_schema(kind), kind)
        for rule in node.get("x-kubernetes-validations", [])
    }


def test_cel_cross_field_rules_are_present() -> None:
    job, sweep, mdep = _rules("TrainingJob"), _rules("TuningSweep"), _rules("ModelDeployment")
    assert job["self.validation + self.test < 1.0"] == "TrainingJob.spec.dataset.split"
    assert job["self.matches('^(s3|file|sklearn)://.+')"] == "TrainingJob.spec.dataset.uri"
    assert mdep["self.min <= self.max"] == "ModelDeployment.spec.ray.replicas"
    assert mdep["self.isSorted()"] == "ModelDeployment.spec.canary.steps"
    assert sweep["self.low < self.high"].startswith("TuningSweep.spec.searchSpace{}")
    assert sweep["self.parallel <= self.max"] == "TuningSweep.spec.trials"


def test_running_work_is_immutable_but_deadlines_are_not() -> None:
    job = _rules("TrainingJob")
    frozen = {rule.split("(")[1].split(")")[0] for rule in job if "oldSelf" in rule}
    assert {"self.framework", "self.dataset", "self.resources", "self.hyperparameters"} <= frozen
    assert "self.activeDeadlineSeconds" not in frozen and "self.retries" not in frozen


def test_canary_steps_are_percentages() -> None:
    steps = _schema("ModelDeployment")["properties"]["spec"]["properties"]["canary"]["properties"][
        "steps"
    ]
    assert steps["items"] == {"type": "integer", "minimum": 1, "maximum": 100}


@pytest.mark.parametrize(
    ("kind", "short"),
    [("TrainingJob", "tj"), ("TuningSweep", "sweep"), ("ModelDeployment", "mdep")],
)
def test_names_columns_and_status_subresource(kind: str, short: str) -> None:
    spec = CRDS[kind]["spec"]
    assert spec["names"]["shortNames"] == [short]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age"
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_quantities_are_int_or_string_with_the_kubernetes_pattern() -> None:
    cpu = _schema("TrainingJob")["properties"]["spec"]["properties"]["resources"]["properties"][
        "perWorker"
    ]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True
    assert cpu["pattern"] == QUANTITY_PATTERN


def test_crds_print_as_one_document_per_kind(tmp_path: Path) -> None:
    from mlplane.crds.generate import all_crds_yaml

    docs = list(yaml.safe_load_all(all_crds_yaml()))
    assert [d["spec"]["names"]["kind"] for d in docs] == list(KINDS)
