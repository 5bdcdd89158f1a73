"""Each report's metrics into the MLflow run, at step = epoch: the learning curves of a job.

`EpochLogger` runs in Ray Train's controller while the workers train, so it speaks MLflow's
documented REST API (`runs/log-batch`) instead of importing MLflow's client: that import costs
seconds of CPU, which on a small machine the training workers would lose. The tracking URI is
always a server here (the operator accepts no other, since training on Ray must reach it too).
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from collections.abc import Mapping
from typing import Any

import requests
from ray.train import Checkpoint, UserCallback

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 30.0


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The real-valued entries of a report: what MLflow can take as metrics."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


def _credentials() -> dict[str, Any]:
    """The request arguments for the credentials MLflow's client reads from the environment."""
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"headers": {"Authorization": f"Bearer {token}"}}
    if user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return {"auth": (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))}
    return {}


def log_epoch(tracking_uri: str, run_id: str, values: Mapping[str, float], step: int) -> None:
    """One report's metrics at `step`; a lost curve point is logged, never raised."""
    now = int(time.time() * 1000)
    metrics = [
        {"key": key, "value": value, "timestamp": now, "step": step}
        for key, value in sorted(values.items())
    ]
    try:
        response = requests.post(
            f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/runs/log-batch",
            json={"run_id": run_id, "metrics": metrics},
            timeout=TIMEOUT_SECONDS,
            **_credentials(),
        )
        response.raise_for_status()
    except requests.RequestException as error:
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
