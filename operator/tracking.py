"""MLflow as the operator sees it: create the run up front, then read every active run at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlplane.crds.base import MlflowRef
from mlplane.operator.mlflow_rest import MlflowRest


@dataclass(frozen=True)
class RunSnapshot:
    """The latest state of one MLflow run."""

    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, run: dict[str, Any]) -> RunSnapshot:
        """From a run as MLflow's REST API returns it (lists of key/value pairs)."""
        info, data = run["info"], run.get("data", {})
        return cls(
            info["run_id"],
            info["status"],
            {m["key"]: float(m["value"]) for m in data.get("metrics", [])},
            {t["key"]: t["value"] for t in data.get("tags", [])},
            {p["key"]: p["value"] for p in data.get("params", [])},
        )


CLOCK_SKEW = timedelta(seconds=5)
"""How far the API server's clock (creationTimestamp) may be ahead of the operator's."""


class Tracking:
    """The operator's MLflow client. Training code writes; the operator only creates and reads.

    Admitting a job costs one MLflow call, creating its run: experiment ids are cached, and the
    search for a run an earlier operator process made is only done where one can exist.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowRest(tracking_uri)
        self.started = datetime.now(UTC)
        self._experiment_ids: dict[str, str] = {}
        self._made: dict[str, MlflowRef] = {}
        """Runs this process made, by resource UID, until `forget`: a step retried after the
        run was made (the launch failed, the status patch was lost) finds it here."""

    def ensure_run(
        self, experiment: str, uid: str, run_name: str, tags: dict[str, str], created: str = ""
    ) -> MlflowRef:
        """The run for `uid`, made on first call; the runner finds it by its `mlplane.uid` tag.

        `created` is the resource's creationTimestamp. Only a resource created before this
        process started can have had a run made by an earlier one (which then stopped before
        it wrote the status), so only then is MLflow searched: a tag search scans the experiment.
        """
        if uid in self._made:
            return self._made[uid]
        experiment_id = self.experiment_id(experiment)
        existing = (
            self.client.search_runs(
                [experiment_id], filter_string=f"tags.`mlplane.uid` = '{uid}'", max_results=1
            )
            if self._seen_before_start(created)
            else []
        )
        if existing:
            run_id = existing[0]["info"]["run_id"]
        else:
            run_id = self.client.create_run(
                experiment_id,
                run_name=run_name,
                tags={"mlplane.uid": uid, **tags},
                start_time_ms=int(time.time() * 1000),
            )
        ref = MlflowRef(
            experiment_id=experiment_id, run_id=run_id, url=self.run_url(experiment_id, run_id)
        )
        self._made[uid] = ref
        return ref

    def forget(self, uid: str) -> None:
        """The resource is done: its run is in its status for good."""
        self._made.pop(uid, None)

    def experiment_id(self, name: str) -> str:
        if name not in self._experiment_ids:
            self._experiment_ids[name] = self.client.experiment_id(name)
        return self._experiment_ids[name]

    def _seen_before_start(self, created: str) -> bool:
        if not created:
            return True
        return datetime.fromisoformat(created) < self.started + CLOCK_SKEW

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def snapshots(self, refs: Iterable[MlflowRef]) -> dict[str, RunSnapshot]:
        """Every run in `refs`, read with a single search."""
        refs = [r for r in refs if r.run_id and r.experiment_id]
        if not refs:
            return {}
        ids = ", ".join(f"'{r.run_id}'" for r in refs)
        runs = self.client.search_runs(
            sorted({r.experiment_id for r in refs if r.experiment_id}),
            filter_string=f"attributes.run_id IN ({ids})",
            max_results=len(refs),
        )
        return {run["info"]["run_id"]: RunSnapshot.of(run) for run in runs}

    def children(self, parent: MlflowRef) -> list[RunSnapshot]:
        """The runs nested under `parent` (a sweep's trials), oldest first."""
        if not (parent.run_id and parent.experiment_id):
            return []
        runs = self.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=10000,
        )
        return [RunSnapshot.of(run) for run in runs]


class MetricsFeed:
    """One MLflow query per interval for all active runs, however many resources ask.

    Each resource's timer asks for its own run; the first ask after the data went stale refreshes
    every watched run in one search, and the others read that result. A run asked for the first
    time joins the next refresh rather than forcing one, so a burst of new jobs costs one query.
    """

    def __init__(self, tracking: Tracking, max_age_seconds: float) -> None:
        self.tracking = tracking
        self.max_age = max_age_seconds
        self._watched: dict[str, MlflowRef] = {}
        self._latest: dict[str, RunSnapshot] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        self.queries = 0

    def get(self, ref: MlflowRef) -> RunSnapshot | None:
        assert ref.run_id
        with self._lock:
            self._watched[ref.run_id] = ref
            if time.monotonic() - self._fetched_at >= self.max_age:
                self._latest = self.tracking.snapshots(self._watched.values())
                self._fetched_at = time.monotonic()
                self.queries += 1
            return self._latest.get(ref.run_id)

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._watched.pop(run_id, None)
