"""A spec over a mebibyte reaches the runner through a real shell, as Ray starts a job.

Ray's job supervisor runs the entrypoint with `subprocess.Popen(entrypoint, shell=True)`: Linux
then refuses the exec with E2BIG if the entrypoint, or any word of it, is over 128 KiB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from wide_tables import feature_names

from mlplane.operator.lifecycle import pack, runner_entrypoint

pytestmark = pytest.mark.mlflow


def test_a_spec_over_a_mebibyte_is_parsed_by_the_runner_a_shell_starts(
    tmp_path: Path, mlflow_server: str
) -> None:
    missing = tmp_path / "wide.csv"
    spec = {
        "framework": "xgboost",
        "dataset": {"uri": missing.as_uri(), "label": "target", "features": feature_names()},
    }
    assert len(pack(spec)) > 128 * 1024  # inline, even compressed, it would not exec
    context = {
        "namespace": "tests",
        "name": "wide",
        "uid": str(uuid.uuid4()),
        "attempt": 1,
        "mlflowTrackingUri": mlflow_server,
        "storagePath": str(tmp_path / "checkpoints"),
        "experiment": "tests/wide",
    }
    entrypoint = runner_entrypoint("train", spec, context)
    # `python` is this environment's, as on a Ray node where mlplane is installed.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        entrypoint,
        shell=True,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The runner parsed the spec and got as far as reading the dataset it names.
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'"
    )
