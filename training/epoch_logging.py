"""Each report's metrics into the MLflow run, at step = epoch: the learning curves of a job.

`EpochLogger` runs in Ray Train's controller, which unpickles it (and so imports this module)
before it starts the worker group. MLflow's client is therefore imported on the first report, not
here: importing it costs seconds of CPU that the starting workers would otherwise wait for.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping
from typing import Any

from ray.train import Checkpoint, UserCallback

log = logging.getLogger(__name__)


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The real-valued entries of a report: what MLflow can take as metrics."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


def log_epoch(tracking_uri: str, run_id: str, values: Mapping[str, float], step: int) -> None:
    """One report's metrics at `step`; a lost curve point is logged, never raised."""
    # Imported on first use: see the module's docstring.
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

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
