"""Fixtures the reconciler unit tests share."""

import pytest

from mlplane.operator.tracking import Tracking


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Tracking:
    # One database per module: creating one runs MLflow's migrations, which takes seconds.
    return Tracking(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
