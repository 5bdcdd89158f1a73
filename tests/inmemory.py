"""In-memory stand-ins for backends, for unit tests of the reconcilers' state machines.

They implement the backend protocols, not Ray's API: integration and e2e tests use real Ray.
"""

from dataclasses import dataclass, field

from mlplane.operator.backends.base import JobState, Launch


@dataclass
class InMemoryJobs:
    name: str = "memory"
    jobs: dict[str, str] = field(default_factory=dict)
    submissions: list[Launch] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    logs: str = ""

    def submit(self, launch: Launch) -> None:
        if launch.submission_id in self.jobs:
            return
        self.jobs[launch.submission_id] = "PENDING"
        self.submissions.append(launch)

    def state(self, submission_id: str) -> JobState:
        return JobState(self.jobs.get(submission_id, "MISSING"))  # type: ignore[arg-type]

    def logs_tail(self, submission_id: str, lines: int = 20) -> str:
        return self.logs

    def stop(self, submission_id: str) -> None:
        if self.jobs.get(submission_id) in ("PENDING", "RUNNING"):
            self.jobs[submission_id] = "STOPPED"
            self.stopped.append(submission_id)

    def dashboard_url(self, submission_id: str) -> str:
        return f"memory://{submission_id}"
