"""`mlplane run`: the README's demo, on the embedded default (its own local Ray and MLflow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]


def test_mlplane_run_trains_the_example_and_prints_its_status(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLPLANE_RAY_ADDRESS", "MLPLANE_MLFLOW_TRACKING_URI")
    }
    env["MLPLANE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlplane"), "run", "examples/trainingjob-xgboost.yaml"],
        cwd=REPO,
        env={**env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epoch" in result.stdout  # the progress line
    assert "Succeeded" in result.stdout
    status = yaml.safe_load(result.stdout[result.stdout.index("status:") :])["status"]
    assert status["phase"] == "Succeeded"
    assert status["metrics"]["test_roc_auc"] >= 0.97
    assert status["model"]["uri"].startswith("models:/churn-model/")
    # The embedded services share the run's fate: its MLflow server (whose store is under the
    # data dir) is gone with it.
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout == "", leftover.stdout
