"""The README's "On a local cluster" commands, run as written (tests/e2e runs the rest)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).parents[2]


def readme_block(heading: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, f"no sh block under {heading}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_local_cluster_quick_start(
    kubeconfig: Path, ray_cluster: str, mlflow_server: str, tmp_path: Path
) -> None:
    commands = readme_block("On a local cluster")
    watch_log = tmp_path / "watch.log"
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for command in commands:
        if command.startswith("kubectl get tj -w"):
            # A watch never ends by itself: keep what it shows while the job runs.
            command = f"{command} > {watch_log} &"
        script.append(command)
    # Clean up as a user would, while the operator still runs to release its finalizer.
    script.append("kubectl delete tj/churn-xgb --wait --timeout=60s")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        # `mlplane cluster up` finds the session's control plane already running.
        "MLPLANE_CLUSTER_DIR": str(kubeconfig.parent),
        "MLPLANE_RAY_ADDRESS": ray_cluster,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_server,
        "MLPLANE_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "condition met" in result.stdout
    watched = watch_log.read_text()
    assert "Running" in watched and "Succeeded" in watched, watched
    assert "test_roc_auc=" in watched
