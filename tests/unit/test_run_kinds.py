"""`mlplane run` by kind: which model and view a manifest gets, and the sweep's trial table."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.crds.trainingjob import TrainingJob
from mlplane.crds.tuningsweep import BestTrial, TrialCounts, TuningSweep, TuningSweepStatus
from mlplane.operator.run import (
    KINDS,
    EpochBar,
    ServingView,
    TrialTable,
    _sample_session,
    load,
    trial_table,
)
from mlplane.operator.tracking import RunSnapshot

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_each_example_kind_loads_with_its_view() -> None:
    job, kind = load(EXAMPLES / "trainingjob-xgboost.yaml")
    assert isinstance(job, TrainingJob) and kind.view is EpochBar
    sweep, kind = load(EXAMPLES / "tuningsweep-xgboost.yaml")
    assert isinstance(sweep, TuningSweep) and kind.view is TrialTable
    assert sweep.metadata.namespace == "local" and sweep.metadata.uid
    deployment, kind = load(EXAMPLES / "modeldeployment-ray.yaml")
    assert isinstance(deployment, ModelDeployment) and kind.view is ServingView
    assert set(KINDS) == {"TrainingJob", "TuningSweep", "ModelDeployment"}


def test_runs_end_when_done_and_a_deployment_serves_until_stopped() -> None:
    job = KINDS["TrainingJob"]
    assert job.ended("Succeeded") and job.ended("Failed") and not job.ended("Running")
    assert job.succeeded("Succeeded") and not job.succeeded("Failed")
    serving = KINDS["ModelDeployment"]
    assert not serving.ended("Available") and serving.ended("Failed")
    assert serving.succeeded("Available") and not serving.succeeded("Failed")


def test_a_kind_it_cannot_run_is_refused_by_name(tmp_path: Path) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text(yaml.safe_dump({"kind": "Deployment", "metadata": {"name": "x"}}))
    handled = "TrainingJob, TuningSweep, ModelDeployment"
    with pytest.raises(ValueError, match=f"kind: mlplane run handles {handled}, not 'Deployment'"):
        load(manifest)


def trial(number: int, state: str | None, status: str, auc: float, epoch: int) -> RunSnapshot:
    tags = {"mlplane.trial_number": str(number)}
    if state:
        tags["mlplane.trial_state"] = state
    params = {"eta": str(0.123456 * (number + 1)), "max_depth": str(number + 2)}
    return RunSnapshot(f"r{number}", status, {"val_auc": auc, "epoch": epoch}, tags, params)


def test_the_trial_table_shows_params_metric_state_and_the_best() -> None:
    sweep, _ = load(EXAMPLES / "tuningsweep-xgboost.yaml")
    sweep.status = TuningSweepStatus(
        trials=TrialCounts(completed=1, running=1, pruned=1),
        best_trial=BestTrial(number=0, params={"eta": 0.123456}, metrics={"val_auc": 0.991}),
    )
    trials = [
        trial(2, None, "RUNNING", 0.97, 3),
        trial(0, "completed", "FINISHED", 0.991, 40),
        trial(1, "pruned", "KILLED", 0.95, 5),
    ]
    console = Console(width=160, record=True)
    console.print(trial_table(sweep, trials))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "state" in line)
    for column in ("eta", "max_depth", "subsample", "min_child_weight", "val_auc", "epochs"):
        assert column in header
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in rows] == ["completed", "pruned", "running"]
    assert "0.1235" in rows[0] and "0.9910" in rows[0] and rows[0].rstrip("│ ").endswith("40")
    assert "1 completed, 1 pruned, 0 failed, 1 running" in lines[-2]
    assert lines[-1] == "best: trial 0, val_auc=0.9910 (eta=0.1235)"


def test_the_trial_table_before_the_first_trial() -> None:
    sweep, _ = load(EXAMPLES / "tuningsweep-xgboost.yaml")
    console = Console(width=160, record=True)
    console.print(trial_table(sweep, []))
    assert "waiting for the first trial" in console.export_text()


def test_the_sample_request_waits_out_a_route_serve_has_not_learned_yet() -> None:
    """Right after Available, Serve's proxy may answer 404 or 503 for a moment; the answer
    `mlplane run` prints is the model's, not that."""
    answers = iter([(404, b"Path '/churn' not found."), (503, b"")])
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            status, text = next(answers, (200, b'{"predictions": [1]}'))
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Proxy) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/churn"
        answer = _sample_session().post(url, json={"instances": [[1.0]]}, timeout=10)
        server.shutdown()
    assert (answer.status_code, answer.json()) == (200, {"predictions": [1]})
    assert len(seen) == 3 and all('"instances"' in body for body in seen)
