"""`mlplane run FILE`: the same spec, the same reconciler and status, without Kubernetes.

Each kind `mlplane run` knows is one entry in `KINDS`: its API model, which of the runtime's
reconcilers drives it, the live view that shows it while it runs (an epoch bar for a TrainingJob,
a table of trials for a TuningSweep, the URL and a sample request for a ModelDeployment) and when
the run is over. Adding a kind is adding an entry.

A run ends when its resource is done; a ModelDeployment serves until Ctrl-C (or until it fails).
Ctrl-C deletes what the run started, as `kubectl delete` would: a Ray job is stopped, a Serve
application removed, even on a Ray cluster that outlives the run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import requests
import yaml
from requests.adapters import HTTPAdapter
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from urllib3.util.retry import Retry

from mlplane.crds.modeldeployment import ModelDeployment, ModelDeploymentStatus
from mlplane.crds.trainingjob import TrainingJob
from mlplane.crds.tuningsweep import TuningSweep
from mlplane.operator.config import OperatorConfig
from mlplane.operator.runtime import Runtime
from mlplane.operator.status import TERMINAL_PHASES, Event
from mlplane.operator.tracking import RunSnapshot
from mlplane.training.tags import TRIAL_NUMBER_TAG, TRIAL_STATE_TAG

POLL_SECONDS = 1.0


class View(Protocol):
    """What the terminal shows while one resource runs."""

    def __enter__(self) -> View: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def event(self, event: Event) -> None: ...

    def update(self, resource: Any) -> None: ...


@dataclass(frozen=True)
class Kind:
    """How `mlplane run` handles one kind."""

    model: type[TrainingJob] | type[TuningSweep] | type[ModelDeployment]
    reconciler: Callable[[Runtime], Any]
    """The runtime's reconciler for this kind."""
    view: Callable[[Any, Runtime, Console], View]
    """The live view of a resource of this kind."""
    ended: Callable[[str | None], bool] = lambda phase: phase in TERMINAL_PHASES
    """Whether the run is over at this phase."""
    succeeded: Callable[[str | None], bool] = lambda phase: phase == "Succeeded"
    """Whether a run that stopped at this phase went well (the exit status)."""


def run_resource(
    resource: Any, kind: Kind, runtime: Runtime, view: View, poll_seconds: float = POLL_SECONDS
) -> Any:
    """Reconcile until the resource ends or Ctrl-C, showing it; the copy returned has its status.

    On Ctrl-C what the run started is deleted through the reconciler, as the operator does for a
    deleted resource.
    """
    resource = resource.model_copy(deep=True)
    reconciler = kind.reconciler(runtime)
    with view:
        try:
            while True:
                step = reconciler.reconcile(resource)
                resource.status = step.status
                for event in step.events:
                    view.event(event)
                view.update(resource)
                if kind.ended(step.status.phase):
                    return resource
                time.sleep(poll_seconds)
        except KeyboardInterrupt:
            view.event(Event("Normal", "Interrupted", "deleting what this run started"))
            reconciler.delete(resource)
            return resource


def _event_text(event: Event) -> str:
    colour = "yellow" if event.type == "Warning" else "cyan"
    return f"[{colour}]{event.reason}[/]: {event.message}"


class EpochBar:
    """A TrainingJob: one progress bar over its epochs, with the headline validation metrics."""

    def __init__(self, job: TrainingJob, runtime: Runtime, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch"),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metric]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.bar = self.progress.add_task(job.metadata.name, total=None, metric="")

    def __enter__(self) -> EpochBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, event: Event) -> None:
        self.progress.console.print(_event_text(event))

    def update(self, job: TrainingJob) -> None:
        status = job.status
        if status and status.progress:
            self.progress.update(
                self.bar,
                total=status.progress.of or None,
                completed=status.progress.epoch,
                metric=_headline(status.metrics),
            )


def _headline(metrics: dict[str, float]) -> str:
    shown = [k for k in ("val_auc", "val_accuracy", "val_logloss", "val_loss") if k in metrics]
    return " ".join(f"{k}={metrics[k]:.4f}" for k in shown[:2])


class TrialTable:
    """A TuningSweep: a live table of its trials (read from their MLflow runs) and the best."""

    def __init__(self, sweep: TuningSweep, runtime: Runtime, console: Console) -> None:
        self.tracking = runtime.tracking
        self.live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> TrialTable:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()
        self.live.console.line()  # what follows (the status) starts on a line of its own

    def event(self, event: Event) -> None:
        self.live.console.print(_event_text(event))

    def update(self, sweep: TuningSweep) -> None:
        ref = sweep.status.mlflow if sweep.status else None
        trials = self.tracking.children(ref) if ref else []
        self.live.update(trial_table(sweep, trials), refresh=True)


def _number(value: object) -> str:
    if isinstance(value, float) or (isinstance(value, str) and _is_float(value)):
        return f"{float(value):.4g}"
    return str(value)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "." in text or "e" in text.lower()


def trial_table(sweep: TuningSweep, trials: Iterable[RunSnapshot]) -> Group:
    """The trials (one MLflow child run each): number, state, sampled params, objective, epochs;
    the best trial highlighted and summed up below."""
    status = sweep.status
    metric = sweep.spec.objective.metric
    params = list(sweep.spec.search_space)
    best = status.best_trial if status else None
    table = Table(title=f"{sweep.metadata.name}: trials", title_justify="left")
    for column in ("#", "state", *params, metric, "epochs"):
        table.add_column(column, justify="right" if column != "state" else "left")
    rows = sorted(trials, key=lambda t: int(t.tags.get(TRIAL_NUMBER_TAG, "0")))
    for trial in rows:
        number = trial.tags.get(TRIAL_NUMBER_TAG, "?")
        state = trial.tags.get(TRIAL_STATE_TAG) or trial.status.lower()
        value = trial.metrics.get(metric)
        epochs = trial.metrics.get("epoch")
        table.add_row(
            number,
            state,
            *(_number(trial.params.get(p, "")) for p in params),
            f"{value:.4f}" if value is not None else "",
            str(int(epochs)) if epochs is not None else "",
            style="bold green" if best and str(best.number) == number else None,
        )
    counts = status.trials if status else None
    summary = Text(
        f"{counts.completed} completed, {counts.pruned} pruned, {counts.failed} failed, "
        f"{counts.running} running"
        if counts
        else "waiting for the first trial"
    )
    if best and metric in best.metrics:
        sampled = ", ".join(f"{k}={_number(v)}" for k, v in best.params.items())
        summary.append(
            f"\nbest: trial {best.number}, {metric}={best.metrics[metric]:.4f} ({sampled})"
        )
    return Group(table, summary)


class ServingView:
    """A ModelDeployment: each phase it enters, then where it serves and a request to try."""

    def __init__(self, deployment: ModelDeployment, runtime: Runtime, console: Console) -> None:
        self.console = console
        self.tracking_uri = runtime.tracking.tracking_uri
        self.phase: str | None = None
        self.served_url: str | None = None

    def __enter__(self) -> ServingView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def event(self, event: Event) -> None:
        self.console.print(_event_text(event))

    def update(self, deployment: ModelDeployment) -> None:
        status = deployment.status or ModelDeploymentStatus()
        if status.phase != self.phase:
            self.phase = status.phase
            models = ", ".join(f"{t.uri} {t.percent}%" for t in status.traffic)
            self.console.print(f"[bold]{deployment.metadata.name}[/]: {status.phase} {models}")
        if status.phase == "Available" and status.url and status.url != self.served_url:
            self.served_url = status.url
            self._show_sample(status.url, status)

    def _show_sample(self, url: str, status: ModelDeploymentStatus) -> None:
        """The URL, a curl command built from the model's input example, and its answer."""
        self.console.print(f"serving at [bold]{url}[/] (Ctrl-C stops and removes it)")
        stable = next((t for t in status.traffic if t.role == "stable"), None)
        body = sample_request(self.tracking_uri, stable.uri) if stable else None
        if body is None:
            return
        payload = json.dumps(body)
        self.console.print("try:", markup=False)
        self.console.print(
            f"  curl -s -X POST {url} -H 'Content-Type: application/json' -d '{payload}'",
            markup=False,
            soft_wrap=True,
        )
        try:
            answer = _sample_session().post(url, json=body, timeout=30)
        except requests.RequestException as error:  # shown, not fatal: the app keeps serving
            self.console.print(f"  → {type(error).__name__}: {error}", markup=False)
            return
        self.console.print(f"  → {answer.status_code} {answer.text}", markup=False, soft_wrap=True)


def _sample_session() -> requests.Session:
    """Serve's HTTP proxy learns a route a moment after the application reports RUNNING: until
    then it answers 404 (no such route) or 503, which mean "not yet" for the sample request."""
    retry = Retry(
        total=6,
        backoff_factor=0.25,
        status_forcelist=(404, 503),
        allowed_methods=None,  # the POST is a prediction: safe to repeat
        raise_on_status=False,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def sample_request(tracking_uri: str, model_uri: str) -> dict[str, Any] | None:
    """`{"instances": [row]}` from the first row of the model's logged input example, if any."""
    import mlflow.models  # for deployments only: a training run never loads a model here
    import pandas

    mlflow.set_tracking_uri(tracking_uri)
    example = mlflow.models.Model.load(model_uri).load_input_example()
    if example is None or not len(example):
        return None
    # A DataFrame for the tabular models mlplane logs, whatever MLflow's annotation says.
    rows = json.loads(pandas.DataFrame(example).head(1).to_json(orient="records"))
    return {"instances": rows}


KINDS: dict[str, Kind] = {
    "TrainingJob": Kind(TrainingJob, lambda runtime: runtime.training, EpochBar),
    "TuningSweep": Kind(TuningSweep, lambda runtime: runtime.tuning, TrialTable),
    "ModelDeployment": Kind(
        ModelDeployment,
        lambda runtime: runtime.serving,
        ServingView,
        ended=lambda phase: phase == "Failed",
        succeeded=lambda phase: phase != "Failed",
    ),
}


def load(path: Path) -> tuple[Any, Kind]:
    """The manifest as its API model, with the metadata a local run needs, and its kind."""
    doc = yaml.safe_load(path.read_text())
    kind = KINDS.get(doc.get("kind", ""))
    if kind is None:
        raise ValueError(f"kind: mlplane run handles {', '.join(KINDS)}, not {doc.get('kind')!r}")
    doc.setdefault("metadata", {}).update(
        namespace=doc["metadata"].get("namespace", "local"), uid=str(uuid.uuid4()), generation=1
    )
    return kind.model.model_validate(doc), kind


def run_file(path: Path, config: OperatorConfig, console: Console) -> tuple[Any, Kind]:
    """Run the manifest to its end; the resource with its last status, and its kind."""
    resource, kind = load(path)
    console.print(f"starting the embedded runtime under {config.data_dir} …")
    runtime = Runtime.start(config)
    view = kind.view(resource, runtime, console)
    return run_resource(resource, kind, runtime, view), kind


def status_yaml(resource: Any) -> str:
    status = resource.status.to_dict() if resource.status else {}
    return yaml.safe_dump({"status": status}, sort_keys=False)
