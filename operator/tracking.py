"""MLflow as the operator sees it: find the run each runner made, read all active runs at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mlplane.crds.base import MlflowRef, RegisteredModel
from mlplane.operator.mlflow_rest import MlflowRest
from mlplane.training.tags import MODEL_NAME_TAG, MODEL_URI_TAG, MODEL_VERSION_TAG, RUN_UID_TAG


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

    def registered_model(self, alias: str | None) -> RegisteredModel | None:
        """The model version the run registered, if it did (its gates held)."""
        version = self.tags.get(MODEL_VERSION_TAG)
        if not version:
            return None
        return RegisteredModel(
            name=self.tags.get(MODEL_NAME_TAG),
            version=version,
            alias=alias,
            uri=self.tags.get(MODEL_URI_TAG),
        )


CLOCK_SKEW = timedelta(minutes=10)
"""How far the clock of the host a runner starts on may lag the API server's."""


@dataclass(frozen=True)
class RunLookup:
    """What finds the run the runner makes for a resource: its experiment and UID.

    `created` (the resource's creationTimestamp) bounds the search to runs started since.
    """

    experiment: str
    uid: str
    created: str = ""

    def started_after_ms(self) -> int:
        if not self.created:
            return 0
        return int((datetime.fromisoformat(self.created) - CLOCK_SKEW).timestamp() * 1000)


class Tracking:
    """The operator's MLflow client. Training code writes; the operator only reads.

    The runner makes a resource's run when its first attempt starts. The operator finds it once
    the attempt runs, so admitting and launching work never waits on MLflow, and goes on while
    the tracking server is down.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowRest(tracking_uri)
        self._experiment_ids: dict[str, str] = {}

    def find_runs(self, lookups: Iterable[RunLookup]) -> dict[str, MlflowRef]:
        """The runs made so far for `lookups`, by resource UID, found with a single search."""
        lookups = list(lookups)
        experiment_ids = sorted(
            {known for lookup in lookups if (known := self.experiment_id(lookup.experiment))}
        )
        if not experiment_ids:
            return {}
        wanted = {lookup.uid for lookup in lookups}
        # MLflow compares a tag with one value only: for several UIDs, read every resource's run
        # started since the oldest of them was made and keep theirs.
        uid_filter = f"= '{next(iter(wanted))}'" if len(wanted) == 1 else "LIKE '%'"
        since = min(lookup.started_after_ms() for lookup in lookups)
        runs = self.client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{RUN_UID_TAG}` {uid_filter} and attributes.start_time >= {since}",
            max_results=100_000,
        )
        found = {}
        for run in runs:
            tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
            uid = tags.get(RUN_UID_TAG, "")
            if uid in wanted:
                info = run["info"]
                found[uid] = MlflowRef(
                    experiment_id=info["experiment_id"],
                    run_id=info["run_id"],
                    url=self.run_url(info["experiment_id"], info["run_id"]),
                )
        return found

    def experiment_id(self, name: str) -> str | None:
        """The experiment's id, or None while no runner has made it."""
        if name not in self._experiment_ids:
            found = self.client.experiment_id(name)
            if found is None:
                return None
            self._experiment_ids[name] = found
        return self._experiment_ids[name]

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
    every watched run in one search (and looks for every run not found yet in one more), and the
    others read that result. A run asked for the first time joins the next refresh rather than
    forcing one, so a burst of new jobs costs one query.
    """

    def __init__(self, tracking: Tracking, max_age_seconds: float) -> None:
        self.tracking = tracking
        self.max_age = max_age_seconds
        self._sought: dict[str, RunLookup] = {}
        self._found: dict[str, MlflowRef] = {}
        self._watched: dict[str, MlflowRef] = {}
        self._latest: dict[str, RunSnapshot] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        self.queries = 0

    def find(self, lookup: RunLookup) -> MlflowRef | None:
        """The resource's run, once its runner has made it."""
        with self._lock:
            if lookup.uid not in self._found:
                self._sought[lookup.uid] = lookup
            self._refresh_if_stale()
            return self._found.get(lookup.uid)

    def get(self, ref: MlflowRef) -> RunSnapshot | None:
        assert ref.run_id
        with self._lock:
            self._watched[ref.run_id] = ref
            self._refresh_if_stale()
            return self._latest.get(ref.run_id)

    def forget(self, uid: str, run_id: str | None) -> None:
        """The resource is done: its run is in its status for good."""
        with self._lock:
            self._sought.pop(uid, None)
            found = self._found.pop(uid, None)
            for ref in (found.run_id if found else None, run_id):
                self._watched.pop(ref or "", None)

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._fetched_at < self.max_age:
            return
        if self._sought:
            for uid, ref in self.tracking.find_runs(self._sought.values()).items():
                del self._sought[uid]
                self._found[uid] = self._watched[ref.run_id or ""] = ref
        self._latest = self.tracking.snapshots(self._watched.values())
        self._fetched_at = time.monotonic()
        self.queries += 1
