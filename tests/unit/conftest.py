"""Fixtures the unit tests share."""

from collections.abc import Callable
from typing import Any

import pytest
from mlflow import MlflowClient

from mlplane.operator.lifecycle import RunReconciler
from mlplane.operator.tracking import Tracking
from mlplane.training.tags import RUN_UID_TAG
from mlplane.training.tracking import experiment_id


@pytest.fixture(scope="module")
def tracking(mlflow_server: str) -> Tracking:
    """The operator's side: it speaks MLflow's REST API to a tracking server."""
    return Tracking(mlflow_server)


@pytest.fixture(scope="module")
def writer(mlflow_server: str) -> MlflowClient:
    """The training side's client, to write what a runner would."""
    return MlflowClient(mlflow_server)


@pytest.fixture(scope="module")
def runner_opens(writer: MlflowClient) -> Callable[[RunReconciler, Any], str]:
    """What a runner does as its first attempt starts: make the resource's run (returns its id)."""

    def opens(reconciler: RunReconciler, resource: Any) -> str:
        lookup = reconciler.run_lookup(resource)
        experiment = experiment_id(writer, lookup.experiment)
        name = resource.metadata.name
        run = writer.create_run(experiment, run_name=name, tags={RUN_UID_TAG: lookup.uid})
        return run.info.run_id

    return opens
