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
    dashboard_url: str | None = None
    """The Ray dashboard, where the backend learns it only once the job runs (KubeRay)."""


@dataclass(frozen=True)
class Owner:
    """The resource a launch belongs to: children carry it as their ownerReference."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class AttemptRef:
    """One launched attempt, as the reconciler names it to the backend after the launch: the
    submission id finds a Ray job, the owner and attempt find a Kubernetes child (RayJob)."""

    submission_id: str
    owner: Owner
    attempt: int


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
    secret_env: tuple[str, ...] = ()
    """Secrets in the owner's namespace whose keys become the job's environment variables."""

    @property
    def ref(self) -> AttemptRef:
        return AttemptRef(self.submission_id, self.owner, self.attempt)


class TrainingBackend(Protocol):
    name: str

    def submit(self, launch: Launch) -> str | None:
        """Start the attempt; submitting an id that already exists is not an error. Returns the
        Kubernetes object the attempt runs as, when the backend creates one (a RayJob)."""
        ...

    def state(self, ref: AttemptRef) -> JobState: ...

    def logs_tail(self, ref: AttemptRef, lines: int = 20) -> str: ...

    def stop(self, ref: AttemptRef) -> None:
        """Stop the attempt if it still runs; stopping a finished or unknown job is a no-op."""
        ...

    def dashboard_url(self, ref: AttemptRef) -> str | None: ...
