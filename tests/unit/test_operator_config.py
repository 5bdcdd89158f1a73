"""The operator's configuration as a platform team writes it: mistakes are refused at start,
naming the setting."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from mlplane.operator.cli import app
from mlplane.operator.config import OperatorConfig


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"backend": "kuberay"}, "checkpoint_storage: unset; the kuberay backend's Ray pods"),
        (
            {"backend": "kuberay", "checkpoint_storage": "/mnt/checkpoints"},
            "checkpoint_storage: /mnt/checkpoints; the kuberay backend's Ray pods mount no volume",
        ),
        (
            {"ray_address": "http://ray-head.ray.svc:8265"},
            "checkpoint_storage: unset, but the Ray cluster at http://ray-head.ray.svc:8265 is "
            "not on this machine",
        ),
        ({"ray_address": "10.0.0.7:8265"}, "is not on this machine"),
    ],
)
def test_checkpoints_must_be_where_every_ray_node_sees_them(
    settings: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        OperatorConfig(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the embedded default: Ray beside the operator
        {"ray_address": "http://127.0.0.1:8265"},
        {"ray_address": "localhost:8265"},
        {"ray_address": "http://ray-head:8265", "checkpoint_storage": "/mnt/shared/ckpt"},
        {"backend": "kuberay", "checkpoint_storage": "s3://bucket/checkpoints"},
    ],
)
def test_shared_or_local_storage_where_it_is_seen(settings: dict[str, str]) -> None:
    OperatorConfig(**settings)


def test_the_environment_and_the_file_are_judged_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"checkpoint_storage": "s3://bucket/checkpoints"}))
    monkeypatch.setenv("MLPLANE_BACKEND", "kuberay")
    loaded = OperatorConfig.load(config)
    assert (loaded.backend, loaded.checkpoint_storage) == ("kuberay", "s3://bucket/checkpoints")


def test_the_operator_refuses_to_start_with_the_setting_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"backend": "kuberay"}))
    monkeypatch.delenv("MLPLANE_CHECKPOINT_STORAGE", raising=False)
    result = CliRunner().invoke(app, ["operator", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.startswith(f"{config}: checkpoint_storage: unset; the kuberay backend")
