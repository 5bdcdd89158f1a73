"""The operator's MLflow REST calls against a real tracking server."""

import uuid

import pytest
from mlflow import MlflowClient

from mlplane.operator.mlflow_rest import MlflowError, MlflowRest
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelNotFound


def test_a_uri_that_is_not_a_tracking_server_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="mlflow_tracking_uri must be an MLflow tracking server"):
        MlflowRest("sqlite:///mlflow.db")


def test_experiments_are_found_by_name_and_runs_read_back(mlflow_server: str) -> None:
    rest, writer = MlflowRest(mlflow_server), MlflowClient(mlflow_server)
    name = f"rest-{uuid.uuid4()}"
    assert rest.experiment_id(name) is None
    made = writer.create_experiment(name)
    assert rest.experiment_id(name) == made
    run_id = writer.create_run(made, run_name="j1", tags={"mlplane.uid": "u1"}).info.run_id
    writer.log_metric(run_id, "val_auc", 0.5)
    (run,) = rest.search_runs([made], f"attributes.run_id = '{run_id}'", max_results=10)
    assert run["data"]["metrics"][0]["key"] == "val_auc"
    assert {"key": "mlplane.uid", "value": "u1"} in run["data"]["tags"]


def test_server_errors_keep_mlflows_code_and_a_missing_model_is_not_found(
    mlflow_server: str,
) -> None:
    with pytest.raises(MlflowError) as error:
        MlflowRest(mlflow_server).model_version("no-such-model", alias="champion")
    assert error.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(ModelNotFound, match="models:/no-such-model@champion"):
        MlflowModelResolver(mlflow_server).resolve("models:/no-such-model@champion")
