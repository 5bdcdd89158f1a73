"""The development commands README.md and CONTRIBUTING.md document, run as a contributor runs
them (the suite's own venv is the one `make setup` made)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_unit_runs_the_unit_tests_that_need_no_service() -> None:
    """`make unit`: the unit tests that start no server and build no tool pass; the others (the
    ones using MLflow, helm and the like) are left out, not failed or skipped."""
    result = subprocess.run(["make", "unit"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = re.search(r"(\d+) passed, (\d+) deselected", result.stdout)
    assert counts, result.stdout[-3000:]
    passed, deselected = int(counts[1]), int(counts[2])
    assert passed > 300 and deselected > 50, counts[0]
    assert " skipped" not in result.stdout.splitlines()[-1], result.stdout[-500:]
