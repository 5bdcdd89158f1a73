"""Write the generated files: the CRD YAML beside the models and docs/api.md.

`make generate` runs this; `tests/unit/test_crds.py` fails when the committed files are stale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mlplane.crds.definitions import KINDS, Kind, crd
from mlplane.crds.reference import api_reference

CRD_DIR = Path(__file__).parent
HEADER = "# Generated from the Pydantic models in crds/ by `make generate`; do not edit.\n"


def crd_file(kind: Kind) -> Path:
    return CRD_DIR / f"{kind.crd_name}.yaml"


def crd_yaml(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def all_crds_yaml() -> str:
    return "---\n".join(crd_yaml(kind) for kind in KINDS.values())


def write(repo: Path) -> list[Path]:
    written = []
    for kind in KINDS.values():
        crd_file(kind).write_text(crd_yaml(kind))
        written.append(crd_file(kind))
    api = repo / "docs" / "api.md"
    api.write_text(api_reference())
    written.append(api)
    return written


if __name__ == "__main__":
    for path in write(CRD_DIR.parent):
        print(f"wrote {path}")
