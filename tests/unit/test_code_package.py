"""`mlplane package`'s archives and manifests, without S3: archives are unpacked by Ray's own code
for remote runtime_env archives, uploads are recorded."""

import os
import sys
from pathlib import Path

import pytest
import yaml
from ray._private.runtime_env.packaging import unzip_package
from typer.testing import CliRunner

from mlplane.crds.validation import validate_files
from mlplane.operator.cli import app
from mlplane.operator.code_package import (
    Destination,
    PackageError,
    Packager,
    archive,
    archive_key,
)

DESTINATION = Destination("code", "team-a/mlplane")


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A working dir with a training module, a helper package and a stale bytecode cache."""
    root = tmp_path / "src"
    (root / "helpers" / "__pycache__").mkdir(parents=True)
    (root / "train.py").write_text("def train_loop_per_worker(config):\n    return 'trained'\n")
    (root / "helpers" / "__init__.py").write_text("NAME = 'helpers'\n")
    (root / "helpers" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"stale")
    return root


def unpacked_by_ray(data: bytes, tmp_path: Path) -> Path:
    """Where Ray's fetch of a remote .zip (working_dir or py_modules) leaves its contents."""
    zipped = tmp_path / "fetched.zip"
    zipped.write_bytes(data)
    target = tmp_path / "unpacked"
    unzip_package(str(zipped), str(target), remove_top_level_directory=True, unlink_zip=True)
    return target


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_working_dir_unpacks_to_its_contents(code: Path, tmp_path: Path) -> None:
    unpacked = unpacked_by_ray(archive(code, as_module=False), tmp_path)
    assert files_under(unpacked) == {"train.py", "helpers/__init__.py"}  # no bytecode cache


def test_a_module_unpacks_to_a_directory_its_package_imports_from(
    code: Path, tmp_path: Path
) -> None:
    unpacked = unpacked_by_ray(archive(code / "helpers", as_module=True), tmp_path)
    assert files_under(unpacked) == {"helpers/__init__.py"}
    sys.path.insert(0, str(unpacked))  # Ray puts a py_modules directory on the path
    try:
        import helpers  # type: ignore[import-not-found]

        assert helpers.NAME == "helpers"
    finally:
        sys.path.remove(str(unpacked))
        sys.modules.pop("helpers", None)


def test_the_same_code_is_the_same_archive_and_changed_code_a_new_uri(code: Path) -> None:
    first = archive(code, as_module=False)
    os.utime(code / "train.py", (0, 0))  # a fresh checkout: new times, same code
    assert archive(code, as_module=False) == first
    (code / "train.py").write_text("def train_loop_per_worker(config):\n    return 'v2'\n")
    second = archive(code, as_module=False)
    # Ray nodes cache archives by URI: changed code must not reuse the old one.
    assert archive_key("p", code, second) != archive_key("p", code, first)
    assert archive_key("p", code, first).startswith("p/src-")


def manifests(working_dir: str, modules: list[str]) -> list[dict]:
    runtime_env = {"workingDir": working_dir, "pyModules": modules, "envVars": {"A": "1"}}
    job = {"kind": "TrainingJob", "metadata": {"name": "wine"}, "spec": {"runtimeEnv": runtime_env}}
    sweep = {
        "kind": "TuningSweep",
        "metadata": {"name": "wine-sweep"},
        "spec": {"template": {"runtimeEnv": {"workingDir": working_dir}}},
    }
    serving = {"kind": "ModelDeployment", "metadata": {"name": "wine"}, "spec": {}}
    return [job, sweep, serving]


def test_local_code_is_uploaded_and_named_by_its_uri(code: Path) -> None:
    uploads: dict[str, bytes] = {}
    packager = Packager(DESTINATION, uploads.__setitem__, code.parent)
    job, sweep, serving = packager.documents(
        manifests("src", ["src/helpers", "https://example.com/lib.zip"])
    )
    working_dir = job["spec"]["runtimeEnv"]["workingDir"]
    assert working_dir.startswith("s3://code/team-a/mlplane/src-") and working_dir.endswith(".zip")
    helpers, remote = job["spec"]["runtimeEnv"]["pyModules"]
    assert helpers.startswith("s3://code/team-a/mlplane/helpers-")
    assert remote == "https://example.com/lib.zip"  # remote already: left as written
    assert job["spec"]["runtimeEnv"]["envVars"] == {"A": "1"}
    assert sweep["spec"]["template"]["runtimeEnv"]["workingDir"] == working_dir  # once
    assert serving == {"kind": "ModelDeployment", "metadata": {"name": "wine"}, "spec": {}}
    assert sorted(f"s3://code/{key}" for key in uploads) == sorted({working_dir, helpers})


def test_a_missing_directory_is_named_by_its_field(code: Path) -> None:
    packager = Packager(DESTINATION, lambda key, data: None, code.parent)
    with pytest.raises(PackageError) as missing:
        packager.documents(manifests("src", ["src/nope"]))
    assert str(missing.value) == (
        "TrainingJob/wine: spec.runtimeEnv.pyModules[0]: 'src/nope' is not a directory"
    )


def test_the_packaged_example_is_still_a_valid_manifest(tmp_path: Path) -> None:
    repo = Path(__file__).parents[2]
    packager = Packager(DESTINATION, lambda key, data: None, repo)
    packaged = tmp_path / "packaged.yaml"
    packaged.write_text(packager.file(repo / "examples" / "trainingjob-custom.yaml"))
    assert validate_files([packaged]) == []
    spec = yaml.safe_load(packaged.read_text())["spec"]
    assert spec["runtimeEnv"]["workingDir"].startswith("s3://code/team-a/mlplane/custom-")


def test_only_an_s3_destination_is_taken(code: Path) -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["package", str(code / "train.py"), "--to", "https://example.com/code"]
    )
    assert result.exit_code == 2
    assert "--to" in result.output and "is not an s3://bucket/prefix URI" in result.output
