"""Which SageMaker containers a packaged MLflow model can be served by."""

from pathlib import Path

import pytest
import yaml

from mlplane.operator.backends.sagemaker_package import serving_layouts
from mlplane.operator.modeldeployment import ModelNotFound


def mlflow_model(path: Path, flavors: dict) -> Path:
    path.mkdir()
    (path / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors}))
    (path / "model.json").write_text("{}")
    return path


def test_an_xgboost_1_booster_also_gets_the_file_the_xgboost_container_loads(
    tmp_path: Path,
) -> None:
    xgb = {"data": "model.json", "model_format": "json", "xgb_version": "1.7.6"}
    model = mlflow_model(tmp_path / "m", {"python_function": {}, "xgboost": xgb})
    assert serving_layouts(model) == {"python_function", "xgboost"}
    assert (model / "xgboost-model").read_text() == "{}"


@pytest.mark.parametrize(
    "xgb",
    [
        {"data": "model.json", "model_format": "json", "xgb_version": "3.2.0"},  # too new
        {"data": "model.json", "model_format": "ubj", "xgb_version": "1.7.6"},  # unloadable
    ],
)
def test_other_models_are_served_by_mlflows_pyfunc_container(tmp_path: Path, xgb: dict) -> None:
    model = mlflow_model(tmp_path / "m", {"python_function": {}, "xgboost": xgb})
    assert serving_layouts(model) == {"python_function"}
    assert not (model / "xgboost-model").exists()


def test_a_directory_without_mlmodel_is_no_model(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelNotFound, match="not an MLflow model"):
        serving_layouts(tmp_path / "m")
