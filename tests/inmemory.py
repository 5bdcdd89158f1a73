"""In-memory stand-ins for backends, for unit tests of the reconcilers' state machines.

They implement the backend protocols, not Ray's API: integration and e2e tests use real Ray.
"""

from dataclasses import dataclass, field

from mlplane.operator.backends.base import AttemptRef, JobState, Launch


@dataclass
class InMemoryJobs:
    name: str = "memory"
    jobs: dict[str, str] = field(default_factory=dict)
    submissions: list[Launch] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    logs: str = ""
    details: dict[str, JobState] = field(default_factory=dict)
    """A full JobState (with reason and message) for a submission, instead of its bare status."""
    refusal: Exception | None = None
    """What `submit` raises, as a backend whose own retries are spent does."""

    def submit(self, launch: Launch) -> None:
        if self.refusal:
            raise self.refusal
        if launch.submission_id in self.jobs:
            return
        self.jobs[launch.submission_id] = "PENDING"
        self.submissions.append(launch)

    def state(self, ref: AttemptRef) -> JobState:
        if ref.submission_id in self.details:
            return self.details[ref.submission_id]
        return JobState(self.jobs.get(ref.submission_id, "MISSING"))  # type: ignore[arg-type]

    def logs_tail(self, ref: AttemptRef, lines: int = 20) -> str:
        return self.logs

    def stop(self, ref: AttemptRef) -> None:
        if self.jobs.get(ref.submission_id) in ("PENDING", "RUNNING"):
            self.jobs[ref.submission_id] = "STOPPED"
            self.stopped.append(ref.submission_id)

    def dashboard_url(self, ref: AttemptRef) -> str:
        return f"memory://{ref.submission_id}"
