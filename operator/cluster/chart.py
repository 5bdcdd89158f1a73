"""Render the Helm chart in helm/mlplane, and keep what is generated from it current.

Two things in the repository are copies: the chart's CRDs (from crds/, where the Pydantic models
generate them) and manifests/ (the chart's default install as plain YAML, for `kubectl apply -k`
and kustomize overlays). `python -m mlplane.operator.cluster.chart` (run by `make generate` and
`make manifests`) rewrites both; unit tests fail when either is stale.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from mlplane.operator.cluster.build import HELM, ensure_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mlplane"
CRDS = REPO / "crds"
MANIFESTS = REPO / "manifests"
RELEASE = "mlplane"
NAMESPACE = "mlplane-system"
HEADER = "# Generated from helm/mlplane (default values) by `make manifests`; do not edit.\n"
_SOURCE = re.compile(r"^---\n# Source: [^/]+/(?P<path>\S+)\n", re.MULTILINE)


class RenderError(RuntimeError):
    """helm refused the chart or the values; the message is helm's."""


def template(
    helm: Path,
    *args: str,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    chart: Path = CHART,
) -> str:
    """`helm template` of the chart with extra arguments (`-f values.yaml`, `--set k=v`)."""
    result = subprocess.run(
        [str(helm), "template", release, str(chart), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return result.stdout


def by_source(rendered: str) -> dict[str, str]:
    """helm's output split by the chart file each document came from, documents joined by `---`;
    files that rendered to nothing are left out."""
    starts = list(_SOURCE.finditer(rendered))
    files: dict[str, list[str]] = {}
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        end = following.start() if following else len(rendered)
        body = "\n".join(line.rstrip() for line in rendered[match.end() : end].splitlines())
        body = body.strip("\n")
        if body:
            files.setdefault(match["path"], []).append(body + "\n")
    return {path: "---\n".join(docs) for path, docs in files.items()}


def manifests(rendered: str) -> dict[str, str]:
    """The plain-YAML install: one file per chart file, plus a Namespace and two kustomizations.

    The CRDs are a kustomization of their own (crds/), applied first, as Helm installs its crds/
    before anything else: the peering object cannot be applied before its CRD is established,
    and `kubectl delete -k manifests` must never delete the CRDs and every resource with them.
    """
    files = {
        path.removeprefix("templates/"): HEADER + text for path, text in by_source(rendered).items()
    }
    files["namespace.yaml"] = (
        HEADER + f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
    )
    crds = sorted(p.removeprefix("crds/") for p in files if p.startswith("crds/"))
    others = sorted(p for p in files if not p.startswith("crds/") and p != "namespace.yaml")
    files["crds/kustomization.yaml"] = _kustomization(crds)
    files["kustomization.yaml"] = _kustomization(["namespace.yaml", *others])
    return files


def _kustomization(resources: list[str]) -> str:
    listed = "".join(f"  - {path}\n" for path in resources)
    return (
        HEADER
        + "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        + f"resources:\n{listed}"
    )


def chart_crds() -> dict[Path, str]:
    """What the chart's crds/ must hold for each generated CRD in crds/."""
    return {CHART / "crds" / p.name: p.read_text() for p in sorted(CRDS.glob("*.mlplane.dev.yaml"))}


def write(helm: Path) -> list[Path]:
    """Copy the CRDs into the chart, then render manifests/ afresh."""
    written = []
    for path, text in chart_crds().items():
        path.write_text(text)
        written.append(path)
    shutil.rmtree(MANIFESTS, ignore_errors=True)
    for name, text in manifests(template(helm, "--include-crds")).items():
        path = MANIFESTS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    helm, _ = ensure_tool(HELM)
    for path in write(helm):
        print(f"wrote {path.relative_to(REPO)}")
