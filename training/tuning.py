"""One attempt of a TuningSweep, as the Ray job's driver: a Ray Tune experiment over a TrainingJob.

`python -m mlplane.training tune …` loads and splits the data once, then runs one Tune experiment
under `storagePath/<uid>`: Optuna samples (`spec.algorithm` picks the sampler), ASHA prunes
(`spec.earlyStopping`), `trials.parallel` trials run at once. A trial is the TrainingJob's own
training loop with the sampled values filled in (`trial_spec`), run in-process in the trial's actor
(reused across trials), so a trial costs its training and not the start of a Ray Train worker
group; the loop reports each epoch, with checkpoints, to Tune.

`SweepTracker`, a Tune callback in this driver, mirrors every trial into a child MLflow run (tag
`mlflow.parentRunId`: params, per-epoch metrics, its end state) and keeps the parent run current
with what the operator shows: `trials_completed|running|failed|pruned`, `best_<objective>` and the
`mlplane.best_trial` tag. It is also the stopper that ends the experiment once more than
`trials.maxFailures` trials failed.

At the end the best completed trial's model is evaluated on the test split, gated, logged and,
with `promoteBest`, registered with its alias, by the same code as a TrainingJob's, on the parent
run. A second attempt (the Ray job was lost) restores the experiment: finished trials stay
finished, unfinished ones resume from their last checkpoint, one started after the experiment's
last snapshot is drawn anew (its child run deleted), and the registration happens once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import optuna
import ray
from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunTag
from ray import cloudpickle, tune
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from mlplane.crds.trainingjob import TrainingJobSpec
from mlplane.crds.tuningsweep import Dimension, Objective, TuningSweepSpec, trial_spec
from mlplane.training.epoch_logging import numeric
from mlplane.training.runner import (
    RunContext,
    TrainingData,
    error_line,
    evaluate_and_publish,
    lineage_tags,
    load_training_data,
    loop_config,
    run_attempt,
    spec_hash,
    training_params,
    worker_resources,
)
from mlplane.training.tags import (
    BEST_TRIAL_TAG,
    DATASET_HASH_TAG,
    ERROR_TAG,
    KIND_TAG,
    TRIAL_ID_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
    TRIALS_PLANNED_TAG,
)
from mlplane.training.tracking import experiment_id, params_of
from mlplane.training.worker import EPOCH_HYPERPARAMETER, PreparedData, call_loop, planned_epochs

PRUNED_KEY = "mlplane_pruned"
"""Set on the result at which ASHA stopped a trial; kept in Tune's state, so it survives restore."""
# The parent run's live counts are written at most this often (and on every trial state change).
PUBLISH_INTERVAL_SECONDS = 1.0


class TooManyTrialFailures(RuntimeError):
    """More trials failed than `trials.maxFailures` allows."""


class NoCompletedTrial(RuntimeError):
    """The sweep ended without a trial that ran to its end."""


# -- the search: Tune's search space, Optuna's sampler, ASHA ---------------------------------------


def param_space(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """`spec.searchSpace` as Tune distributions, keyed as written (dotted paths included)."""
    converted: dict[str, Any] = {}
    for key, dimension in space.items():
        if dimension.choice is not None:
            converted[key] = tune.choice(list(dimension.choice))
        elif dimension.randint:
            converted[key] = tune.randint(int(dimension.randint.low), int(dimension.randint.high))
        elif dimension.loguniform:
            converted[key] = tune.loguniform(dimension.loguniform.low, dimension.loguniform.high)
        else:
            assert dimension.uniform
            converted[key] = tune.uniform(dimension.uniform.low, dimension.uniform.high)
    return converted


def grid(space: Mapping[str, Dimension]) -> dict[str, list[Any]]:
    """Every value of each (discrete) dimension, for algorithm grid."""
    return {
        key: list(d.choice) if d.choice is not None else list(range(*_int_bounds(d)))
        for key, d in space.items()
    }


def _int_bounds(dimension: Dimension) -> tuple[int, int]:
    assert dimension.randint
    return int(dimension.randint.low), int(dimension.randint.high)


def planned_trials(spec: TuningSweepSpec) -> int:
    """`trials.max`, or fewer when a grid has fewer points."""
    if spec.algorithm != "grid":
        return spec.trials.max
    points = 1
    for values in grid(spec.search_space).values():
        points *= len(values)
    return min(spec.trials.max, points)


def startup_trials(max_trials: int) -> int:
    """Random trials before TPE models the results: a third of the budget, at most Optuna's 10."""
    return max(2, min(10, max_trials // 3))


def sampler(spec: TuningSweepSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `spec.algorithm` names."""
    if spec.algorithm == "grid":
        return optuna.samplers.GridSampler(grid(spec.search_space), seed=seed)
    if spec.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=startup_trials(spec.trials.max), seed=seed)


def epoch_budget(spec: TuningSweepSpec) -> int:
    """The most epochs any trial can plan (the epoch hyperparameter may itself be searched)."""
    framework = spec.template.framework
    key, _ = EPOCH_HYPERPARAMETER[framework]
    budget = planned_epochs(framework, spec.template.hyperparameters)
    for name in (key, f"hyperparameters.{key}"):
        dimension = spec.search_space.get(name)
        if dimension is None:
            continue
        if dimension.choice is not None:
            budget = max(budget, *(int(float(v)) for v in dimension.choice))
        elif dimension.randint:
            budget = max(budget, _int_bounds(dimension)[1] - 1)
        else:
            bounds = dimension.uniform or dimension.loguniform
            assert bounds
            budget = max(budget, int(bounds.high))
    return budget


def scheduler(spec: TuningSweepSpec) -> ASHAScheduler | None:
    """ASHA on the `epoch` each report carries, or None to run every trial to its end."""
    early = spec.early_stopping
    if early.algorithm == "none":
        return None
    return ASHAScheduler(
        time_attr="epoch",
        max_t=max(epoch_budget(spec), early.grace_period),
        grace_period=early.grace_period,
        reduction_factor=early.reduction_factor,
    )


# -- trials ---------------------------------------------------------------------------------------


def run_trial(
    config: dict[str, Any], template: TrainingJobSpec, data: PreparedData, attempt: int
) -> None:
    """One trial: the TrainingJob's training loop on the template with the sampled values."""
    spec = trial_spec(template, config)
    call_loop(loop_config(spec, data, attempt))


def _trial_dirname(trial: Trial) -> str:
    return f"trial-{trial.trial_id}"


def _trial_error(trial: Trial) -> str | None:
    """`ExcType: message` of a failed trial, from the file Tune has just written beside the
    driver (its copy in the experiment's storage comes later)."""
    path = trial.pickled_error_file
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as file:
        return error_line(cloudpickle.load(file))


@dataclass(frozen=True)
class TrialView:
    """One trial as the sweep reports it."""

    number: int
    """0-based, in order of creation."""
    trial_id: str
    state: str
    """pending, running, completed, pruned or failed."""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def trial_state(status: str, last_result: Mapping[str, Any]) -> str:
    """Tune's trial status, with TERMINATED told apart: pruned by ASHA, ran to its end, or
    stopped before its first report (the sweep ended early, after too many failures)."""
    if status == Trial.ERROR:
        return "failed"
    if status == Trial.TERMINATED:
        if not reported(last_result):
            return "stopped"
        return "pruned" if last_result.get(PRUNED_KEY) else "completed"
    if status == Trial.RUNNING:
        return "running"
    return "pending"


def reported(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics the training loop reported, without Tune's bookkeeping."""
    return numeric(
        {
            k: v
            for k, v in result.items()
            if k not in AUTO_RESULT_KEYS and k not in ("done", PRUNED_KEY)
        }
    )


def plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled values as JSON-ready Python scalars (samplers may hand out numpy types)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}


def trial_views(
    trials: Sequence[Trial], states: Mapping[str, str] | None = None
) -> list[TrialView]:
    """Every trial as reported; `states` overrides those Tune has not updated yet in a hook."""
    return [
        TrialView(
            number=number,
            trial_id=trial.trial_id,
            state=(states or {}).get(trial.trial_id)
            or trial_state(trial.status, trial.last_result or {}),
            params=plain(trial.config),
            metrics=reported(trial.last_result or {}),
        )
        for number, trial in enumerate(trials)
    ]


def counts(views: Iterable[TrialView]) -> dict[str, int]:
    """Trials per state, as the parent run's `trials_<state>` metrics."""
    states = [v.state for v in views]
    return {state: states.count(state) for state in ("completed", "running", "failed", "pruned")}


def best_trial(views: Iterable[TrialView], objective: Objective) -> TrialView | None:
    """The completed trial with the best final objective (pruned trials hold unfinished models);
    the earliest wins a tie."""
    done = [v for v in views if v.state == "completed" and objective.metric in v.metrics]
    if not done:
        return None
    sign = 1 if objective.mode == "max" else -1
    return max(done, key=lambda v: (sign * v.metrics[objective.metric], -v.number))


class SweepTracker(tune.Callback, tune.Stopper):
    """Mirrors the trials into MLflow and stops the experiment after too many failures.

    Tune pickles it with the experiment, so a restored experiment gets it back: its state is
    rebuilt from Tune's trials and MLflow, never kept only in memory.
    """

    def __init__(self, spec: TuningSweepSpec, context: RunContext, parent_run_id: str) -> None:
        self.spec = spec
        self.tracking_uri = context.mlflow_tracking_uri
        self.experiment = context.experiment
        self.name = context.name
        self.parent_run_id = parent_run_id
        self.failed: set[str] = set()
        self._runs: dict[str, str] = {}
        self._finished: set[str] = set()
        self._client: MlflowClient | None = None
        self._published = 0.0
        self._stepped = False

    def __getstate__(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "_client": None,
            "_runs": {},
            "_finished": set(),
            "_published": 0.0,
            "_stepped": False,
        }

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # -- Tune callback hooks

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self._stepped:  # before the search adds a trial: `trials` are the restored ones
            self._stepped = True
            self._delete_forgotten_children({trial.trial_id for trial in trials})

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        run_id = self._child(trial, trials.index(trial))
        if trial.trial_id not in self._finished:
            self.client.update_run(run_id, status="RUNNING")
        self._publish(trials, {trial.trial_id: "running"}, force=True)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        metrics = reported(result)
        epoch = int(metrics.get("epoch", result.get("training_iteration", 0)))
        if result.get("done") and epoch < self._planned_epochs(trial):
            result[PRUNED_KEY] = True  # stopped by the scheduler before its last epoch
        run_id = self._child(trial, trials.index(trial))
        if trial.trial_id not in self._finished:
            now = int(time.time() * 1000)
            batch = [Metric(key, value, now, epoch) for key, value in sorted(metrics.items())]
            self.client.log_batch(run_id, metrics=batch)
        self._publish(trials)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        state = trial_state(Trial.TERMINATED, trial.last_result or {})
        # A trial stopped before it started gets no run of its own.
        if state != "stopped" or trial.trial_id in self._runs or self._find(trial.trial_id):
            self._end_child(trial, trials, state, "FINISHED" if state == "completed" else "KILLED")
        self._publish(trials, {trial.trial_id: state}, force=True)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.failed.add(trial.trial_id)
        error = _trial_error(trial)
        tags = {ERROR_TAG: error} if error else {}
        self._end_child(trial, trials, "failed", "FAILED", tags)
        self._publish(trials, {trial.trial_id: "failed"}, force=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._publish(trials, force=True)

    # -- Tune stopper

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return len(self.failed) > self.spec.trials.max_failures

    # -- MLflow

    def _planned_epochs(self, trial: Trial) -> int:
        spec = trial_spec(self.spec.template, trial.config)
        return planned_epochs(spec.framework, spec.hyperparameters)

    def _child(self, trial: Trial, number: int) -> str:
        """The trial's child run: found again after a restore, else created.

        A trial can finish in MLflow after Tune's last snapshot of the experiment; a restore then
        replays its end from the final checkpoint. Such a run is marked finished and left as
        the first attempt ended it.
        """
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self._find_run(trial.trial_id)
        if found is not None:
            run_id = found.info.run_id
            if _completed(found):
                self._finished.add(trial.trial_id)
        else:
            run = self.client.create_run(
                experiment_id(self.client, self.experiment),
                run_name=f"{self.name}-{number}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    TRIAL_ID_TAG: trial.trial_id,
                    TRIAL_NUMBER_TAG: str(number),
                    KIND_TAG: "TuningSweepTrial",
                },
            )
            run_id = run.info.run_id
            params = [mlflow.entities.Param(k, v) for k, v in params_of(trial.config).items()]
            self.client.log_batch(run_id, params=params)
        self._runs[trial.trial_id] = run_id
        return run_id

    def _delete_forgotten_children(self, known: set[str]) -> None:
        """Delete the child runs of trials the experiment does not know: an earlier attempt
        started them after Tune's last snapshot of the experiment, so they never continue and
        the search draws others in their place. Kept, they would count as trials beyond
        trials.max; deleted, MLflow can still restore them."""
        children = self.client.search_runs(
            [experiment_id(self.client, self.experiment)],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=50_000,  # MLflow's most
        )
        for child in children:
            if child.data.tags.get(TRIAL_ID_TAG) not in known:
                self.client.delete_run(child.info.run_id)

    def _find(self, trial_id: str) -> str | None:
        found = self._find_run(trial_id)
        return found.info.run_id if found else None

    def _find_run(self, trial_id: str) -> Run | None:
        found = self.client.search_runs(
            [experiment_id(self.client, self.experiment)],
            filter_string=(
                f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' "
                f"and tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
            ),
            max_results=1,
        )
        return found[0] if found else None

    def _end_child(
        self,
        trial: Trial,
        trials: list[Trial],
        state: str,
        status: str,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        run_id = self._child(trial, trials.index(trial))
        if trial.trial_id in self._finished:
            return
        all_tags = {TRIAL_STATE_TAG: state, **(tags or {})}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
        self.client.set_terminated(run_id, status)

    def _publish(
        self, trials: list[Trial], states: Mapping[str, str] | None = None, force: bool = False
    ) -> None:
        """The parent run's trial counts and best trial (at most once a second between events)."""
        if not force and time.monotonic() - self._published < PUBLISH_INTERVAL_SECONDS:
            return
        self._published = time.monotonic()
        views = trial_views(trials, states)
        self.failed |= {v.trial_id for v in views if v.state == "failed"}  # restored ones too
        now = int(time.time() * 1000)
        metrics = [Metric(f"trials_{s}", n, now, 0) for s, n in counts(views).items()]
        tags = []
        objective = self.spec.objective
        best = best_trial(views, objective)
        if best:
            metrics.append(
                Metric(f"best_{objective.metric}", best.metrics[objective.metric], now, 0)
            )
            tags.append(RunTag(BEST_TRIAL_TAG, json.dumps(self._best_record(best))))
        self.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)

    def _best_record(self, best: TrialView) -> dict[str, Any]:
        return {
            "number": best.number,
            "params": best.params,
            "metrics": best.metrics,
            "runId": self._runs.get(best.trial_id) or self._find(best.trial_id),
        }


def _completed(run: Run) -> bool:
    """Whether the child run records a trial that ran to its end."""
    return run.info.status == "FINISHED" and run.data.tags.get(TRIAL_STATE_TAG) == "completed"


# -- the experiment -------------------------------------------------------------------------------


def build_tuner(
    spec: TuningSweepSpec,
    data: PreparedData,
    storage_path: str,
    name: str,
    *,
    attempt: int = 1,
    callbacks: Sequence[tune.Callback] = (),
    stop: tune.Stopper | None = None,
    seed: int | None = None,
) -> tune.Tuner:
    """The sweep's Tune experiment at `storage_path/name`: restored when an earlier attempt left
    one there (finished trials are kept, unfinished ones resume), else new."""
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, template=spec.template, data=data, attempt=attempt),
        worker_resources(spec.template.resources.per_worker),
    )
    path = f"{storage_path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    objective = spec.objective
    early = spec.template.early_stopping
    return tune.Tuner(
        trainable,
        param_space=param_space(spec.search_space),
        tune_config=tune.TuneConfig(
            metric=objective.metric,
            mode=objective.mode,
            search_alg=OptunaSearch(sampler=sampler(spec, seed)),
            scheduler=scheduler(spec),
            num_samples=planned_trials(spec),
            max_concurrent_trials=spec.trials.parallel,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=list(callbacks),
            stop=stop,
            failure_config=tune.FailureConfig(max_failures=0),
            # Each trial keeps its checkpoints as a TrainingJob would: the best by the template's
            # early-stopping metric, else the latest.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.template.checkpoint.keep,
                checkpoint_score_attribute=early.metric if early else None,
                checkpoint_score_order=early.mode if early else "max",
            ),
            verbose=1,
        ),
    )


def tune_sweep(spec: TuningSweepSpec, context: RunContext) -> None:
    """Run one attempt of a TuningSweep."""
    run_attempt(context, lambda client, run_id: _tune(spec, context, client, run_id))


def _tune(spec: TuningSweepSpec, context: RunContext, client: MlflowClient, run_id: str) -> None:
    template = spec.template
    mlflow.set_tags(
        lineage_tags("TuningSweep", spec_hash(spec), context, template)
        | {TRIALS_PLANNED_TAG: str(planned_trials(spec))}
    )
    data = load_training_data(template)
    mlflow.set_tag(DATASET_HASH_TAG, data.dataset_hash)
    mlflow.log_params(_sweep_params(spec, data))

    # Tune saves the experiment's state this often: what a restarted attempt resumes from.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    ray.init()
    tracker = SweepTracker(spec, context, run_id)
    tuner = build_tuner(
        spec,
        data.prepared.data,
        context.storage_path,
        context.uid,
        attempt=context.attempt,
        callbacks=[tracker],
        stop=tracker,
    )
    results = tuner.fit()
    _publish_best(spec, results, data, client)


def _result_view(number: int, result: tune.Result) -> TrialView:
    metrics = result.metrics or {}
    return TrialView(
        number=number,
        trial_id=str(metrics.get("trial_id", number)),
        state="failed" if result.error else trial_state(Trial.TERMINATED, metrics),
        params=plain(result.config or {}),
        metrics=reported(metrics),
    )


def _publish_best(
    spec: TuningSweepSpec, results: tune.ResultGrid, data: TrainingData, client: MlflowClient
) -> None:
    """Fail on too many failed trials; else evaluate, gate and promote the best trial's model."""
    views = [_result_view(number, result) for number, result in enumerate(results)]
    failed = [v for v in views if v.state == "failed"]
    allowed = spec.trials.max_failures
    if len(failed) > allowed:
        first = results[failed[0].number].error
        raise TooManyTrialFailures(
            f"{len(failed)} trials failed (maxFailures {allowed}); "
            f"first, trial {failed[0].number}: {error_line(first) if first else 'unknown error'}"
        )
    best = best_trial(views, spec.objective)
    if best is None:
        raise NoCompletedTrial(
            f"none of {len(views)} trials ran to its end with {spec.objective.metric!r} reported"
        )
    promotion = spec.promote_best
    chosen = trial_spec(spec.template, best.params)
    chosen.tracking.register_as = promotion.register_as if promotion else None
    chosen.tracking.alias = promotion.alias if promotion else None
    evaluate_and_publish(chosen, results[best.number], data, client)


def _sweep_params(spec: TuningSweepSpec, data: TrainingData) -> dict[str, str]:
    search = {k: v.to_dict() for k, v in spec.search_space.items()}
    return {
        **training_params(spec.template, data.prepared.data.task),
        **params_of(
            {
                "algorithm": spec.algorithm,
                "objective": f"{spec.objective.mode} {spec.objective.metric}",
                "early_stopping": spec.early_stopping.to_dict(),
                "trials_max": spec.trials.max,
                "trials_parallel": spec.trials.parallel,
                "trials_max_failures": spec.trials.max_failures,
                "search_space": json.dumps(search, sort_keys=True),
            },
            prefix="sweep_",
        ),
    }
