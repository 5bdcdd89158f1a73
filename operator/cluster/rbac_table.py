"""The operator's RBAC in docs/security.md, as a table generated from the Helm chart.

The chart grants the operator's ServiceAccount a ClusterRole (and, in single-namespace mode, a Role
in each watched namespace) whose rules depend on the values. `rbac_table` renders the chart with
the real helm binary once per setting that changes them and lists each rule with the setting that
first grants it. `python -m mlplane.operator.cluster.rbac_table` (run by `make generate`) writes it
into docs/security.md between its markers; a unit test fails when it is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlplane.operator.cluster import chart
from mlplane.operator.cluster.build import HELM, ensure_tool

SECURITY_DOC = chart.REPO / "docs" / "security.md"
BEGIN = "<!-- rbac-table: generated from helm/mlplane by `make generate`; do not edit -->\n"
END = "<!-- end of rbac-table -->\n"

KUBERAY = ["operator.backend=kuberay", "operator.checkpointStorage=s3://bucket/checkpoints"]
DEFAULTS_OFF = ["operator.nodePoolStatus=false"]
"""Settings on by default that grant rules, turned off in every rendering so that the table names
the setting that grants their rules."""
SETTINGS: list[tuple[str, list[str]]] = [
    ("always", []),
    ("`operator.nodePoolStatus: true` (the default)", ["operator.nodePoolStatus=true"]),
    ("`operator.backend: kuberay`", KUBERAY),
    (
        "`operator.backend: kuberay` and `operator.kuberay.useKubernetesProxy: true`",
        [*KUBERAY, "operator.kuberay.useKubernetesProxy=true"],
    ),
    ("`rbac.readCredentialsSecrets: true`", ["rbac.readCredentialsSecrets=true"]),
]
"""Each setting that adds rules, in the order a rule is attributed: to the first that grants it."""

MODES: list[tuple[str, list[str]]] = [
    ("Cluster-wide (`watchNamespaces: []`, the default)", []),
    ("Single-namespace (`watchNamespaces: [team-a, ...]`)", ["watchNamespaces={team-a}"]),
]
WHERE = {"ClusterRole": "ClusterRole", "Role": "Role in each watched namespace"}
AGGREGATED = "rbac.authorization.k8s.io/aggregate-to-"
TENANTS_ONLY = "-nodepool-viewer"
"""The ClusterRole bound to rbac.nodePoolViewers: the tenants', not the operator's."""


def _granted(helm: Path, settings: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(where, rule) for every rule of the operator's ClusterRole and Roles under `settings`."""
    rendered = chart.template(helm, *(f"--set={setting}" for setting in settings))
    found = []
    for doc in yaml.safe_load_all(rendered):
        labels = doc["metadata"].get("labels", {}) if doc else {}
        if any(label.startswith(AGGREGATED) for label in labels):
            continue  # the tenants' rules, added to Kubernetes' own roles, not the operator's
        if doc and doc["metadata"]["name"].endswith(TENANTS_ONLY):
            continue
        if doc and doc["kind"] in WHERE:
            found += [(WHERE[doc["kind"]], rule) for rule in doc["rules"]]
    return found


def _cell(values: list[str]) -> str:
    return ", ".join(f"`{value}`" for value in values)


def rbac_table(helm: Path) -> str:
    """The Markdown tables, one per namespace mode, of what the operator may do and when."""
    sections = []
    for mode, mode_settings in MODES:
        rows = [
            "| granted by | API group | resources | verbs | only the object named | when |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        seen: set[str] = set()
        for when, settings in SETTINGS:
            for where, rule in _granted(helm, [*DEFAULTS_OFF, *mode_settings, *settings]):
                key = json.dumps([where, rule], sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                groups = [group or "core" for group in rule["apiGroups"]]
                names = _cell(rule.get("resourceNames", [])) or "any"
                cells = [where, _cell(groups), _cell(rule["resources"]), _cell(rule["verbs"])]
                rows.append("| " + " | ".join([*cells, names, when]) + " |")
        sections.append(f"#### {mode}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(sections)


def with_table(document: str, table: str) -> str:
    """`document` with what stands between its markers replaced by `table`."""
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    return document[:start] + "\n" + table + "\n" + document[end:]


if __name__ == "__main__":
    helm, _ = ensure_tool(HELM)
    SECURITY_DOC.write_text(with_table(SECURITY_DOC.read_text(), rbac_table(helm)))
    print(f"wrote {SECURITY_DOC.relative_to(chart.REPO)}")
