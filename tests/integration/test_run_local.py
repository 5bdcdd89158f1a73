"""`make demo` and `mlplane run`: the README's demo, on the embedded default (own Ray, MLflow).

The TrainingJob example registers churn-model@candidate in the embedded MLflow under the data
dir; the ModelDeployment example then serves that model from the same data dir, as a user does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlplane.operator import embedded

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).parents[2]
MLPLANE = str(Path(sys.executable).parent / "mlplane")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlplane-run")


@pytest.fixture(scope="module")
def env(data_dir: Path) -> dict[str, str]:
    """The embedded default: no Ray or MLflow configured, everything under the data dir."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLPLANE_RAY_ADDRESS", "MLPLANE_MLFLOW_TRACKING_URI")
    }
    return {
        **inherited,
        "MLPLANE_DATA_DIR": str(data_dir),
        "MLPLANE_SERVE_HTTP_PORT": str(embedded.free_port()),
        "COLUMNS": "120",
    }


def assert_nothing_left(data_dir: Path) -> None:
    """The embedded services share the run's fate: no process of them (their state is under
    the data dir) outlives it."""
    leftover = subprocess.run(
        ["pgrep", "-af", str(data_dir)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout == "", leftover.stdout


def printed_status(output: str) -> dict:
    """The status YAML `mlplane run` prints last."""
    printed = re.search(r"^status:$", output, re.MULTILINE)
    assert printed, output[-3000:]
    return yaml.safe_load(output[printed.start() :])["status"]


def test_make_demo_validates_the_examples_then_trains_and_prints_the_status(
    env: dict[str, str], data_dir: Path
) -> None:
    """The README's first command, `make demo` (its setup is done: the suite runs in that venv):
    `mlplane validate examples/`, then `mlplane run examples/trainingjob-xgboost.yaml`."""
    result = subprocess.run(
        ["make", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mlplane validate examples/" in result.stdout  # make echoes each step it runs
    status = printed_status(result.stdout)
    before_status = result.stdout[: result.stdout.rindex("\nstatus:")]
    # The progress bar: the job, its epochs done of planned, the headline validation metric.
    assert re.search(r"churn-xgb.*epoch\s+\d+/\d+.*val_auc=0\.\d{4}", before_status), before_status
    assert status["phase"] == "Succeeded"
    assert status["metrics"]["test_roc_auc"] >= 0.97
    assert status["model"]["uri"].startswith("models:/churn-model/")
    assert_nothing_left(data_dir)


def test_mlplane_run_serves_the_trained_model_until_ctrl_c(
    env: dict[str, str], data_dir: Path
) -> None:
    """Serves models:/churn-model@candidate, prints the URL, a curl command and its answer; Ctrl-C
    removes the application and stops everything."""
    process = subprocess.Popen(
        [MLPLANE, "run", "examples/modeldeployment-ray.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout
    lines: list[str] = []
    deadline = time.monotonic() + 420
    try:
        for line in process.stdout:
            lines.append(line)
            if line.lstrip().startswith("→") or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "Available" in output, output[-3000:]
        assert re.search(r"serving at http://127\.0\.0\.1:\d+/churn", output), output[-3000:]
        assert "curl -s -X POST http://127.0.0.1:" in output
        answer = lines[-1]
        assert answer.lstrip().startswith("→ 200"), output[-3000:]
        assert '"predictions"' in answer and "proba_" in answer
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-3000:]
    assert "Interrupted" in rest
    assert printed_status(rest)["phase"] == "Available"
    assert_nothing_left(data_dir)
