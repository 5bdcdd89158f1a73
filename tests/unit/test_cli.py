"""`mlplane validate` and `mlplane crds` as a user runs them."""

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mlplane.operator.cli import app

REPO = Path(__file__).parents[2]
runner = CliRunner()


def test_examples_are_valid() -> None:
    result = runner.invoke(app, ["validate", str(REPO / "examples")])
    assert result.exit_code == 0, result.output
    assert "file(s) valid" in result.output


def test_every_mistake_is_reported_with_its_field() -> None:
    bad = REPO / "tests" / "unit" / "data" / "invalid.yaml"
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    expected = {
        "TrainingJob/broken: spec.framework:": "'xgboost' or 'torch'",
        "TrainingJob/broken: spec.dataset.label:": "Field required",
        "TrainingJob/broken: spec.resources.workers:": "greater than or equal to 1",
        "TrainingJob/broken: spec.retries:": "valid integer",
        "ModelDeployment/broken-canary: spec.canary.steps[1]:": "less than or equal to 100",
    }
    for where, what in expected.items():
        matching = [line for line in lines if f"{bad}: {where}" in line]
        assert matching and what in matching[0], (where, result.output)
    assert len(lines) == len(expected), result.output


def test_half_a_cpu_as_a_float_is_explained(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "examples" / "modeldeployment-ray.yaml").read_text())
    doc["spec"]["ray"]["perReplica"]["cpu"] = 0.5
    path = tmp_path / "float-cpu.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert (
        "spec.ray.perReplica.cpu: 0.5 must be an integer or a string such as 500m" in result.output
    )


def test_wrong_api_version_and_unknown_kind(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(
        "apiVersion: mlplane.dev/v1\nkind: TrainingJob\nmetadata: {name: a}\n---\n"
        "apiVersion: mlplane.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: b}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "TrainingJob/a: apiVersion: must be mlplane.dev/v1alpha1" in result.output
    assert "Pipeline/b: kind: unknown kind 'Pipeline'" in result.output


def test_missing_file_fails() -> None:
    result = runner.invoke(app, ["validate", "no-such-file.yaml"])
    assert result.exit_code == 1


def test_crds_command_prints_installable_yaml() -> None:
    result = runner.invoke(app, ["crds"])
    assert result.exit_code == 0
    docs = list(yaml.safe_load_all(result.output))
    assert {d["metadata"]["name"] for d in docs} == {
        "trainingjobs.mlplane.dev",
        "tuningsweeps.mlplane.dev",
        "modeldeployments.mlplane.dev",
        "gpuquotas.mlplane.dev",
        "nodepools.mlplane.dev",
    }
    scopes = {d["spec"]["names"]["kind"]: d["spec"]["scope"] for d in docs}
    assert scopes.pop("NodePool") == "Cluster"
    assert set(scopes.values()) == {"Namespaced"}


def test_console_script_is_installed() -> None:
    mlplane = Path(sys.executable).parent / "mlplane"
    result = subprocess.run(
        [mlplane, "validate", "examples"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_operator_folder_does_not_shadow_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.itemgetter)"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "<class 'operator.itemgetter'>"
    assert not (REPO / "operator" / "__init__.py").exists()
