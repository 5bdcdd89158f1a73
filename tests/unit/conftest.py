"""Fixtures the reconciler unit tests share."""

import pytest
from mlflow import MlflowClient

from mlplane.operator.tracking import Tracking


@pytest.fixture(scope="module")
def tracking(mlflow_server: str) -> Tracking:
    """The operator's side: it speaks MLflow's REST API to a tracking server."""
    return Tracking(mlflow_server)


@pytest.fixture(scope="module")
def writer(mlflow_server: str) -> MlflowClient:
    """The training side's client, to write what a runner would."""
    return MlflowClient(mlflow_server)
