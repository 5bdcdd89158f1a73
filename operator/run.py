"""`mlplane run FILE`: the same spec, the same reconciler and status, without Kubernetes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from mlplane.crds.trainingjob import TrainingJob
from mlplane.operator.config import OperatorConfig
from mlplane.operator.runtime import Runtime
from mlplane.operator.status import TERMINAL_PHASES

POLL_SECONDS = 1.0


def run_training_job(
    job: TrainingJob, runtime: Runtime, console: Console, poll_seconds: float = POLL_SECONDS
) -> TrainingJob:
    """Reconcile until the job ends, showing progress; the finished job carries its status."""
    job = job.model_copy(deep=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch"),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metric]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(job.metadata.name, total=None, metric="")
        while True:
            step = runtime.training.reconcile(job)
            job.status = step.status
            for event in step.events:
                colour = "yellow" if event.type == "Warning" else "cyan"
                progress.console.print(f"[{colour}]{event.reason}[/]: {event.message}")
            status = step.status
            if status.progress:
                progress.update(
                    bar,
                    total=status.progress.of or None,
                    completed=status.progress.epoch,
                    metric=_headline(status.metrics),
                )
            if status.phase in TERMINAL_PHASES:
                break
            time.sleep(poll_seconds)
    return job


def _headline(metrics: dict[str, float]) -> str:
    shown = [k for k in ("val_auc", "val_accuracy", "val_logloss", "val_loss") if k in metrics]
    return " ".join(f"{k}={metrics[k]:.4f}" for k in shown[:2])


def run_file(path: Path, config: OperatorConfig, console: Console) -> TrainingJob:
    doc = yaml.safe_load(path.read_text())
    doc.setdefault("metadata", {}).update(
        namespace=doc["metadata"].get("namespace", "local"), uid=str(uuid.uuid4()), generation=1
    )
    job = TrainingJob.model_validate(doc)
    console.print(f"starting the embedded runtime under {config.data_dir} …")
    runtime = Runtime.start(config)
    return run_training_job(job, runtime, console)


def status_yaml(job: TrainingJob) -> str:
    status = job.status.to_dict() if job.status else {}
    return yaml.safe_dump({"status": status}, sort_keys=False)
