"""MLflow bookkeeping: one run per TrainingJob across attempts and its tags.

The runner makes the run when the first attempt starts, tagged with the resource's UID (by which
the operator finds it); every later attempt finds it by that tag and resumes the same run,
so the metric history of a retried job continues where the failed attempt left off.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlplane.training.tags import ERROR_TAG, RUN_UID_TAG


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's ID, creating it if needed (another process may create it meanwhile)."""
    found = client.get_experiment_by_name(name)
    if found:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if not found:
            raise
        return str(found.experiment_id)


def open_run(client: MlflowClient, experiment: str, uid: str, name: str) -> str:
    """Start (or resume) the job's single run as the active MLflow run; return its ID."""
    experiment_ = experiment_id(client, experiment)
    existing = client.search_runs(
        [experiment_], filter_string=f"tags.`{RUN_UID_TAG}` = '{uid}'", max_results=1
    )
    if existing:
        run_id = existing[0].info.run_id
        if ERROR_TAG in existing[0].data.tags:  # the failed attempt's; this one starts clean
            client.delete_tag(run_id, ERROR_TAG)
    else:
        run_id = client.create_run(experiment_, run_name=name, tags={RUN_UID_TAG: uid}).info.run_id
    mlflow.start_run(run_id=run_id)
    return run_id


def params_of(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow params (strings of at most 6000 characters) from a flat dict."""
    return {f"{prefix}{key}": str(value)[:6000] for key, value in values.items()}
