"""`make image`: the mlplane image the kuberay backend's Ray pods run, as an OCI archive.

The archive is unpacked as a container runtime does (umoci, into an OCI runtime bundle) and run by
runc with the command form KubeRay gives every Ray container (`/bin/bash -c -- "…"`), as the
image's own user. Inside, `mlplane run` starts its own Ray head and MLflow and trains the README's
xgboost example: Ray, mlplane and the locked dependencies are all the image's, not this machine's.

The image is built once per machine and content (`mlplane.operator.cluster.image`); a cold build
takes minutes, hence the long timeout.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from service_fixtures import unavailable

from mlplane.operator.backends.kuberay import RAY_GID, RAY_UID
from mlplane.operator.cluster import image
from mlplane.operator.cluster.build import BuildError

REPO = Path(__file__).parents[2]
EXAMPLE = "trainingjob-xgboost.yaml"

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def archive() -> Path:
    """`dist/mlplane-<version>-oci.tar`, as `make image` writes it."""
    try:
        image.install_host_tools(print)
        built = image.ensure_image()
    except BuildError as error:
        unavailable("the mlplane image could not be built", error)
    return image.write_dist(built)


@pytest.fixture
def bundle(archive: Path, tmp_path: Path) -> Iterator[Path]:
    """The archive as an OCI runtime bundle: the layers unpacked into `rootfs/` and the
    `config.json` umoci derives from the image's config (user, environment, working directory).
    Removed afterwards: it is gigabytes, and pytest keeps its last temporary directories."""
    layout = tmp_path / "oci"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(layout)], check=True)
    unpacked = tmp_path / "bundle"
    unpacked.mkdir()
    reference = f"{layout}:mlplane:{image.version()}"
    rootfs = str(unpacked / "rootfs")
    for command in (
        ["nice", "-n10", "umoci", "raw", "unpack", "--image", reference, rootfs],
        [
            "umoci",
            "raw",
            "runtime-config",
            "--image",
            reference,
            "--rootfs",
            rootfs,
            str(unpacked / "config.json"),
        ],
    ):
        subprocess.run(command, check=True, capture_output=True)
    yield unpacked
    shutil.rmtree(tmp_path)


def run_in_container(bundle: Path, script: str) -> subprocess.CompletedProcess[str]:
    """runc runs `script` as KubeRay runs a Ray container's command, with the image's user,
    environment and working directory; the repository's examples are mounted read-only."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    process = config["process"]
    # This sandbox refuses to set rlimits; the image's own config sets none.
    process.pop("rlimits", None)
    process["terminal"] = False
    process["args"] = ["/bin/bash", "-c", "--", script]
    config["mounts"].append(
        {
            "destination": "/examples",
            "type": "bind",
            "source": str(REPO / "examples"),
            "options": ["rbind", "ro"],
        }
    )
    config_path.write_text(json.dumps(config))
    container = f"mlplane-image-test-{uuid.uuid4().hex[:8]}"
    try:
        return subprocess.run(
            ["runc", "run", "--bundle", str(bundle), container],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)


def test_the_image_trains_the_xgboost_example_as_its_non_root_user(
    archive: Path, bundle: Path
) -> None:
    assert archive == REPO / "dist" / f"mlplane-{image.version()}-oci.tar"
    result = run_in_container(
        bundle,
        "id -u; id -g; echo $HOME; command -v python ray mlplane; "
        "python -c 'import mlplane.training; print(mlplane.training.__file__)'; "
        f"mlplane run /examples/{EXAMPLE}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    uid, gid, home, python, ray, mlplane, package = result.stdout.splitlines()[:7]
    assert (int(uid), int(gid)) == (RAY_UID, RAY_GID)
    assert home == "/home/ray"
    assert [python, ray, mlplane] == [
        f"{image.VENV}/bin/{name}" for name in ("python", "ray", "mlplane")
    ]
    # The installed wheel, not a checkout: the repository is not in the container.
    assert package.startswith(f"{image.VENV}/lib/python3.11/site-packages/mlplane/")
    printed = re.search(r"^status:$", result.stdout, re.MULTILINE)
    assert printed, output[-4000:]
    status = yaml.safe_load(result.stdout[printed.start() :])["status"]
    assert status["phase"] == "Succeeded"
    assert status["metrics"]["test_roc_auc"] >= 0.97
    assert status["model"]["uri"].startswith("models:/churn-model/")
