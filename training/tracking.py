"""MLflow bookkeeping: one run per TrainingJob across attempts, its tags, and per-epoch metrics.

The operator may create the run before the first attempt starts (to show its link at once); the
runner finds it by the `mlplane.uid` tag, or creates it, and every attempt resumes the same run,
so the metric history of a retried job continues where the failed attempt left off.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from ray.train import Checkpoint, UserCallback

log = logging.getLogger(__name__)

UID_TAG = "mlplane.uid"
ERROR_TAG = "mlplane.error"


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
        [experiment_], filter_string=f"tags.`{UID_TAG}` = '{uid}'", max_results=1
    )
    if existing:
        run_id = existing[0].info.run_id
        if ERROR_TAG in existing[0].data.tags:  # the failed attempt's; this one starts clean
            client.delete_tag(run_id, ERROR_TAG)
    else:
        run_id = client.create_run(experiment_, run_name=name, tags={UID_TAG: uid}).info.run_id
    mlflow.start_run(run_id=run_id)
    return run_id


def params_of(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow params (strings of at most 6000 characters) from a flat dict."""
    return {f"{prefix}{key}": str(value)[:6000] for key, value in values.items()}


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The real-valued entries of a report: what MLflow can take as metrics."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


def log_epoch(tracking_uri: str, run_id: str, values: Mapping[str, float], step: int) -> None:
    """One report's metrics at `step`; a lost curve point is logged, never raised."""
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, step) for key, value in sorted(values.items())]
    try:
        MlflowClient(tracking_uri).log_batch(run_id, metrics=batch)
    except MlflowException as error:
        log.warning("could not log epoch %s to MLflow: %s", step, error)


class EpochLogger(UserCallback):
    """Copies each `ray.train.report` of rank 0 into the MLflow run, at step = `epoch`.

    It runs in Ray Train's controller, so custom training functions get MLflow logging without
    any MLflow code of their own. A report without `epoch` is logged at its report number.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.reports = 0

    def after_report(
        self,
        run_context: Any,
        metrics: list[dict[str, Any]],
        checkpoint: Checkpoint | None,
    ) -> None:
        self.reports += 1
        values = numeric(metrics[0] if metrics else {})
        log_epoch(self.tracking_uri, self.run_id, values, int(values.get("epoch", self.reports)))
