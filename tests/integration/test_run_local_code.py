"""`mlplane run` on the user's own machine ships their local code, as the operator never does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_run_local import printed_status

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]


def test_mlplane_run_trains_with_the_local_working_dir_the_example_names(
    ray_cluster: str, mlflow_server: str, tmp_path: Path
) -> None:
    example = yaml.safe_load((REPO / "examples" / "trainingjob-custom.yaml").read_text())
    assert example["spec"]["runtimeEnv"]["workingDir"] == "examples/custom"  # a local path
    env = {
        **os.environ,
        "MLPLANE_RAY_ADDRESS": ray_cluster,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_server,
        "MLPLANE_DATA_DIR": str(tmp_path),
    }
    mlplane = str(Path(sys.executable).parent / "mlplane")
    result = subprocess.run(
        [mlplane, "run", "examples/trainingjob-custom.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = printed_status(result.stdout)
    assert status["phase"] == "Succeeded"
    assert status["metrics"]["test_accuracy"] > 0.5  # the user's function trained the model
