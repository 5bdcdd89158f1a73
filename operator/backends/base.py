"""What every training backend offers the reconcilers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mlplane.crds.trainingjob import ResourceRequest

JobStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "MISSING"]


@dataclass(frozen=True)
class JobState:
    """A launched job as the backend sees it."""

    status: JobStatus
    message: str = ""
    reason: str = ""
    """Why it ended, when the backend says (KubeRay: DeadlineExceeded, AppFailed …)."""


@dataclass(frozen=True)
class Owner:
    """The resource a launch belongs to: children carry it as their ownerReference."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Launch:
    """One attempt of a run: everything a backend needs to start it, nothing backend-specific."""

    submission_id: str
    entrypoint: str
    owner: Owner
    attempt: int = 1
    resources: ResourceRequest = field(default_factory=ResourceRequest)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    active_deadline_seconds: int | None = None
    queue_name: str | None = None
    """A Kueue LocalQueue: the child is created suspended and labelled for Kueue."""


class TrainingBackend(Protocol):
    name: str

    def submit(self, launch: Launch) -> None:
        """Start the attempt; submitting an id that already exists is not an error."""
        ...

    def state(self, submission_id: str) -> JobState: ...

    def logs_tail(self, submission_id: str, lines: int = 20) -> str: ...

    def stop(self, submission_id: str) -> None:
        """Stop the attempt if it still runs; stopping a finished or unknown job is a no-op."""
        ...

    def dashboard_url(self, submission_id: str) -> str | None: ...
