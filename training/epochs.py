"""Per-epoch bookkeeping shared by the built-in training loops, running on Ray Train workers.

Each epoch ends in one `ray.train.report`: the metrics (with `epoch`, 1-based and continuing
across retries), and every `checkpoint.every` epochs a checkpoint holding the model plus a
`mlplane_state.json` with the epoch count and the early-stopping state. A retried attempt gets
that checkpoint back from `ray.train.get_checkpoint()` and carries on from the next epoch.

The same loops also run in-process as the trials of a TuningSweep (`mlplane.training.tuning`):
there the trial is the only worker, and reports and checkpoints go to Ray Tune instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.tune

STATE_FILE = "mlplane_state.json"
FAULT_ENV = "MLPLANE_TEST_FAIL_AT_EPOCH"
"""Fault injection for tests: attempt 1 of a job raises right after reporting this epoch.

Honoured only when set (put it in `spec.runtimeEnv.envVars`), and only on the first attempt, so
a test can make a job fail mid-training at a known epoch and watch the retry resume.
"""


@dataclass
class LoopState:
    """How far training got, and the early-stopping memory, as stored in a checkpoint."""

    epoch: int = 0
    """Epochs finished."""
    best: float | None = None
    """Best value of the early-stopping metric so far."""
    best_epoch: int = 0
    """The epoch that reached `best`."""


def in_tune_trial() -> bool:
    """Whether the loop runs in a Ray Tune trial (a TuningSweep's) rather than on a Train worker."""
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


def restore(load_model: Callable[[Path], Any]) -> tuple[LoopState, Any]:
    """The state and model of the checkpoint this attempt resumes from, or a fresh start."""
    checkpoint = ray.tune.get_checkpoint() if in_tune_trial() else ray.train.get_checkpoint()
    if checkpoint is None:
        return LoopState(), None
    with checkpoint.as_directory() as directory:
        path = Path(directory)
        state = LoopState(**json.loads((path / STATE_FILE).read_text()))
        return state, load_model(path)


class EarlyStopping:
    """Stop when `metric` has not improved for `patience` epochs (spec.earlyStopping)."""

    def __init__(self, settings: Mapping[str, Any] | None, state: LoopState) -> None:
        self.metric: str | None = settings["metric"] if settings else None
        self.mode: str = settings.get("mode", "min") if settings else "min"
        self.patience: int = int(settings.get("patience", 10)) if settings else 0
        self.state = state

    @property
    def ran_out(self) -> bool:
        """Whether patience had already run out at the restored epoch."""
        best_seen = self.metric is not None and self.state.best is not None
        return best_seen and self.state.epoch - self.state.best_epoch >= self.patience

    def should_stop(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record this epoch's value; True once patience has run out."""
        if self.metric is None:
            return False
        if self.metric not in metrics:
            reported = ", ".join(sorted(metrics))
            raise ValueError(
                f"earlyStopping.metric: {self.metric!r} is not reported; reported: {reported}"
            )
        value = float(metrics[self.metric])
        best = self.state.best
        if best is None or (value < best if self.mode == "min" else value > best):
            self.state.best, self.state.best_epoch = value, epoch
        return epoch - self.state.best_epoch >= self.patience


def report_epoch(
    epoch: int,
    metrics: Mapping[str, float],
    state: LoopState,
    *,
    checkpoint_now: bool,
    save_model: Callable[[Path], None],
    attempt: int,
) -> None:
    """Report one epoch to Ray Train (or Tune), with a checkpoint from rank 0 when one is due."""
    state.epoch = epoch
    payload = {**{k: float(v) for k, v in metrics.items()}, "epoch": epoch}
    trial = in_tune_trial()
    library = ray.tune if trial else ray.train
    if checkpoint_now and (trial or ray.train.get_context().get_world_rank() == 0):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory)
            save_model(path)
            (path / STATE_FILE).write_text(json.dumps(asdict(state)))
            library.report(payload, checkpoint=library.Checkpoint.from_directory(directory))
    else:
        library.report(payload)
    _maybe_inject_fault(epoch, attempt)


def checkpoint_due(epoch: int, every: int, last: bool) -> bool:
    """Every `every` epochs, and always at the last one so the final model is kept."""
    return last or epoch % every == 0


def _maybe_inject_fault(epoch: int, attempt: int) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if wanted and attempt == 1 and int(wanted) == epoch:
        raise RuntimeError(f"injected failure after epoch {epoch} ({FAULT_ENV})")


def shard(rows: int) -> slice:
    """This worker's equal share of `rows` (a strided slice; the remainder is dropped).

    Equal shares keep data-parallel workers in lock step: each runs the same number of batches.
    A Tune trial is the only worker and takes every row.
    """
    if in_tune_trial():
        return slice(0, rows)
    context = ray.train.get_context()
    world, rank = context.get_world_size(), context.get_world_rank()
    usable = rows - rows % world if rows >= world else rows
    return slice(rank, usable, world)
