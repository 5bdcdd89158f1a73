"""The pure parts of a TuningSweep's runner: the search space in Tune's and Optuna's terms, the
sampler and scheduler a spec asks for, sampled values on the template, and how trials are judged."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from mlplane.crds.tuningsweep import Objective, TuningSweepSpec, trial_spec
from mlplane.crds.validation import validate_object
from mlplane.training.runner import RunContext
from mlplane.training.tuning import (
    PRUNED_KEY,
    SweepTracker,
    TrialView,
    best_trial,
    counts,
    epoch_budget,
    param_space,
    planned_trials,
    reported,
    sampler,
    scheduler,
    trial_state,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "tuningsweep-xgboost.yaml"


def example_doc() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def sweep(**changes: Any) -> TuningSweepSpec:
    spec = example_doc()["spec"]
    spec.update(changes)
    return TuningSweepSpec.model_validate(spec)


def test_search_space_becomes_tune_and_optuna_distributions() -> None:
    space = param_space(sweep().search_space)
    eta, depth, subsample, weight = (
        space[k] for k in ("eta", "max_depth", "subsample", "min_child_weight")
    )
    assert isinstance(eta, Float) and isinstance(eta.get_sampler(), LogUniform)
    assert (eta.lower, eta.upper) == (0.01, 0.5)
    assert isinstance(depth, Integer) and (depth.lower, depth.upper) == (2, 8)
    assert isinstance(subsample, Float) and (subsample.lower, subsample.upper) == (0.5, 1.0)
    assert isinstance(weight, Categorical) and weight.categories == [1, 3, 5]
    # What Optuna then samples from: randint's high is excluded, as in the spec's description.
    optuna_space = OptunaSearch.convert_search_space(space)
    assert optuna_space["eta"] == optuna.distributions.FloatDistribution(0.01, 0.5, log=True)
    assert optuna_space["max_depth"] == optuna.distributions.IntDistribution(2, 7)


@pytest.mark.parametrize(
    ("algorithm", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
    ],
)
def test_each_algorithm_is_its_optuna_sampler(algorithm: str, kind: type) -> None:
    assert isinstance(sampler(sweep(algorithm=algorithm)), kind)


def test_tpe_explores_a_third_of_a_small_budget_before_modelling() -> None:
    spec = sweep(trials={"max": 12, "parallel": 2})
    assert sampler(spec)._n_startup_trials == 4
    assert sampler(sweep(trials={"max": 300, "parallel": 2}))._n_startup_trials == 10


def test_grid_enumerates_discrete_dimensions_and_caps_the_trials() -> None:
    spec = sweep(
        algorithm="grid",
        searchSpace={
            "max_depth": {"randint": {"low": 2, "high": 5}},
            "eta": {"choice": [0.1, 0.3]},
        },
        trials={"max": 50, "parallel": 2},
    )
    grid = sampler(spec)
    assert isinstance(grid, optuna.samplers.GridSampler)
    assert grid._search_space == {"eta": [0.1, 0.3], "max_depth": [2, 3, 4]}
    assert planned_trials(spec) == 6  # 3 depths x 2 rates, not trials.max
    assert planned_trials(sweep()) == 12


def test_asha_runs_on_epochs_up_to_the_longest_possible_trial() -> None:
    asha = scheduler(sweep())
    assert isinstance(asha, tune.schedulers.ASHAScheduler)
    assert (asha._time_attr, asha._max_t, asha._reduction_factor) == ("epoch", 40, 3)
    searched = sweep(searchSpace={"num_boost_round": {"choice": [20, 60]}})
    assert epoch_budget(searched) == 60
    assert (
        epoch_budget(sweep(searchSpace={"num_boost_round": {"randint": {"low": 10, "high": 80}}}))
        == 79
    )
    assert scheduler(sweep(earlyStopping={"algorithm": "none"})) is None


def test_sampled_values_fill_in_the_template() -> None:
    template = sweep().template
    torch_template = template.model_copy(update={"framework": "torch"})
    spec = trial_spec(
        torch_template,
        {
            "lr": 0.01,
            "hyperparameters.batch_size": 32,
            "model.params.dropout": 0.25,
            "checkpoint.keep": 3,
        },
    )
    assert spec.hyperparameters == {"num_boost_round": 40, "lr": 0.01, "batch_size": 32}
    assert spec.model.params == {"dropout": 0.25}
    assert spec.checkpoint.keep == 3
    assert torch_template.hyperparameters == {"num_boost_round": 40}  # the template is untouched


def test_a_sampled_value_the_template_cannot_take_names_the_field() -> None:
    template = sweep().template
    with pytest.raises(ValueError, match=r"^checkpoint.every: Input should be greater than"):
        trial_spec(template, {"checkpoint.every": 0})
    with pytest.raises(ValueError, match=r"^dataset.label is not a mapping"):
        trial_spec(template, {"dataset.label.x": 1})


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"eta": {"uniform": {"low": 0.5, "high": 0.1}}}, "spec.searchSpace.eta.uniform", "below"),
        ({"eta": {"loguniform": {"low": 0, "high": 1}}}, "spec.searchSpace.eta.loguniform", "> 0"),
        (
            {"min_child_weight": {"choice": []}},
            "spec.searchSpace.min_child_weight.choice",
            "least 1",
        ),
        ({"depth": {"randint": {"low": 1.5, "high": 4}}}, "spec.searchSpace.depth", "whole-number"),
        (
            {"model.colour": {"choice": [1]}},
            "spec.searchSpace",
            "model.colour: the template cannot",
        ),
        (
            {"checkpoint.every": {"randint": {"low": 0, "high": 3}}},
            "spec.searchSpace",
            "checkpoint.every",
        ),
    ],
)
def test_invalid_search_spaces_are_rejected_with_the_field_named(
    change: dict[str, Any], field: str, words: str
) -> None:
    doc = example_doc()
    doc["spec"]["searchSpace"].update(change)
    problems = {p.field: p.message for p in validate_object(doc)}
    assert field in problems, problems
    assert words in problems[field]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"algorithm": "grid"}, "searchSpace.eta: algorithm grid needs choice or randint"),
        ({"template": {"model": {"entrypoint": "pkg.mod:fn"}}}, "template.model.entrypoint:"),
        ({"template": {"resources": {"workers": 2}}}, "template.resources.workers:"),
    ],
)
def test_sweeps_a_trial_cannot_run_are_rejected(change: dict[str, Any], words: str) -> None:
    doc = example_doc()
    for key, value in change.items():
        if isinstance(value, dict):
            for sub, patch in value.items():
                doc["spec"][key][sub] = patch
        else:
            doc["spec"][key] = value
    messages = [p.message for p in validate_object(doc)]
    assert any(words in m for m in messages), messages


def test_trial_states_tell_pruned_from_completed() -> None:
    assert trial_state("TERMINATED", {"epoch": 5, PRUNED_KEY: True}) == "pruned"
    assert trial_state("TERMINATED", {"epoch": 40}) == "completed"
    assert trial_state("TERMINATED", {"trial_id": "a", "done": True}) == "stopped"
    assert trial_state("ERROR", {}) == "failed"
    assert trial_state("RUNNING", {}) == "running"
    assert trial_state("PENDING", {}) == "pending"


def view(number: int, state: str, auc: float | None) -> TrialView:
    metrics = {"val_auc": auc} if auc is not None else {}
    return TrialView(number, f"t{number}", state, {"eta": 0.1 * number}, metrics)


def test_the_best_trial_is_the_best_completed_one() -> None:
    views = [
        view(0, "completed", 0.95),
        view(1, "pruned", 0.99),  # ahead when stopped, but its model is unfinished
        view(2, "completed", 0.97),
        view(3, "completed", 0.97),
        view(4, "failed", None),
        view(5, "running", 0.999),
    ]
    assert best_trial(views, Objective(metric="val_auc", mode="max")).number == 2  # earliest tie
    assert best_trial(views, Objective(metric="val_auc", mode="min")).number == 0
    assert best_trial(views[4:], Objective(metric="val_auc", mode="max")) is None
    assert counts(views) == {"completed": 3, "running": 1, "failed": 1, "pruned": 1}


def test_reported_metrics_leave_out_tunes_bookkeeping() -> None:
    result = {
        "val_auc": 0.98,
        "epoch": 7,
        "training_iteration": 7,
        "time_this_iter_s": 0.1,
        "timestamp": 1700000000,
        "done": True,
        PRUNED_KEY: True,
        "trial_id": "abc",
        "config": {"eta": 0.1},
    }
    assert reported(result) == {"val_auc": 0.98, "epoch": 7.0}


def test_the_tracker_pickles_without_its_client_and_stops_after_too_many_failures() -> None:
    spec = sweep(trials={"max": 12, "parallel": 2, "maxFailures": 1})
    context = RunContext("ns", "churn-sweep", "uid", 1, "http://127.0.0.1:9", "/tmp", "exp")
    tracker = SweepTracker(spec, context, "parent")
    assert tracker.client is not None
    tracker.failed.add("a")
    assert not tracker.stop_all()
    restored = pickle.loads(pickle.dumps(tracker))  # as Tune stores it with the experiment
    assert restored._client is None and restored.parent_run_id == "parent"
    restored.failed.add("b")
    assert restored.stop_all()
    assert not tracker("a", {"val_auc": 0.9})  # single trials are never stopped by it


@dataclass
class TuneTrial:
    """What the tracker reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)


def test_a_trial_finished_before_the_interruption_is_not_ended_again(
    tmp_path: Path,
) -> None:
    """Tune snapshots the experiment every second; a trial that completes after the snapshot is
    replayed from its final checkpoint on restore. Its MLflow run keeps its first end."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    context = RunContext("ns", "churn-sweep", "uid", 1, uri, str(tmp_path), "exp")
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("exp")).info.run_id
    tracker = SweepTracker(sweep(), context, parent)
    trial = TuneTrial("t0", {"eta": 0.1, "max_depth": 3, "subsample": 0.8, "min_child_weight": 1})
    snapshot = pickle.dumps(tracker)
    tracker.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        trial.last_result = {"val_auc": 0.9 + epoch / 100, "epoch": epoch}
        tracker.on_trial_result(0, [trial], trial, dict(trial.last_result))
    trial.status = "TERMINATED"
    tracker.on_trial_complete(0, [trial], trial)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("exp").experiment_id], "tags.`mlplane.trial_id` = 't0'"
    )
    assert run.info.status == "FINISHED" and run.data.tags["mlplane.trial_state"] == "completed"

    restored = pickle.loads(snapshot)
    trial.status = "RUNNING"
    restored.on_trial_start(0, [trial], trial)
    restored.on_trial_result(0, [trial], trial, {"val_auc": 0.92, "epoch": 2})
    trial.status = "TERMINATED"
    restored.on_trial_complete(0, [trial], trial)

    again = client.get_run(run.info.run_id)
    assert (again.info.status, again.info.end_time) == ("FINISHED", run.info.end_time)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2]


def test_a_trial_started_after_the_last_snapshot_is_not_counted_after_a_restore(
    tmp_path: Path,
) -> None:
    """A trial that started after Tune's last snapshot is unknown to the restored experiment,
    which draws another in its place: the first one's child run goes, so the sweep's children
    stay its trials (none beyond trials.max)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    context = RunContext("ns", "churn-sweep", "uid", 1, uri, str(tmp_path), "exp")
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("exp")).info.run_id
    tracker = SweepTracker(sweep(), context, parent)
    params = {"eta": 0.1, "max_depth": 3, "subsample": 0.8, "min_child_weight": 1}
    kept, forgotten = TuneTrial("t0", params), TuneTrial("t1", params)
    tracker.on_step_begin(0, [kept])
    tracker.on_trial_start(0, [kept], kept)
    snapshot = pickle.dumps(tracker)  # Tune's last snapshot: it knows t0 only
    tracker.on_step_begin(1, [kept, forgotten])
    tracker.on_trial_start(1, [kept, forgotten], forgotten)

    def children() -> list[str]:
        runs = client.search_runs(
            [client.get_experiment_by_name("exp").experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent}'",
        )
        return sorted(run.data.tags["mlplane.trial_id"] for run in runs)

    assert children() == ["t0", "t1"]  # a step that is not the attempt's first deletes nothing
    restored = pickle.loads(snapshot)
    restored.on_step_begin(0, [kept])
    assert children() == ["t0"]
