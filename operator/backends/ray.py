"""The `ray` backend: Ray Jobs API against a given Ray cluster or the embedded local head."""

from __future__ import annotations

import logging

from ray.job_submission import JobStatus as RayJobStatus
from ray.job_submission import JobSubmissionClient
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from mlplane.operator.backends.base import AttemptRef, JobState, Launch

log = logging.getLogger(__name__)


def _is_transient(error: BaseException) -> bool:
    """The dashboard is down, restarting or busy: worth asking again.

    The Jobs SDK raises a bare RuntimeError for every HTTP failure. A 5xx is the head's problem,
    not the request's: "No available agent to submit job" answers every submission until the
    head's agent has registered, which takes a minute on a loaded 2-core machine.
    """
    if isinstance(error, ConnectionError):
        return True
    return isinstance(error, RuntimeError) and "status code 5" in str(error)


# Retried within the call for a while; the reconciler's timer retries anything longer.
_transient = retry(
    retry=retry_if_exception(_is_transient),
    wait=wait_exponential(multiplier=0.5, max=8),
    stop=stop_after_delay(120),
    reraise=True,
)


class RayJobsBackend:
    """Launch each attempt as one Ray job whose submission id is derived from the resource."""

    name = "ray"

    def __init__(self, dashboard_address: str) -> None:
        self.address = dashboard_address.rstrip("/")
        self._client: JobSubmissionClient | None = None

    @property
    def client(self) -> JobSubmissionClient:
        # Created lazily: the constructor contacts the dashboard, which may still be starting.
        if self._client is None:
            self._client = JobSubmissionClient(self.address)
        return self._client

    @_transient
    def submit(self, launch: Launch) -> None:
        if self._state(launch.submission_id).status != "MISSING":
            log.info("ray job %s already submitted", launch.submission_id)
            return
        self.client.submit_job(
            entrypoint=launch.entrypoint,
            submission_id=launch.submission_id,
            runtime_env=launch.runtime_env or None,
            metadata=launch.metadata,
        )

    def state(self, ref: AttemptRef) -> JobState:
        return self._state(ref.submission_id)

    @_transient
    def _state(self, submission_id: str) -> JobState:
        try:
            info = self.client.get_job_info(submission_id)
        except RuntimeError as error:  # the SDK's way of saying 404
            if "does not exist" in str(error) or "404" in str(error):
                return JobState("MISSING")
            raise
        status = info.status.value if isinstance(info.status, RayJobStatus) else str(info.status)
        return JobState(status, info.message or "")  # type: ignore[arg-type]

    def logs_tail(self, ref: AttemptRef, lines: int = 20) -> str:
        try:
            logs = self.client.get_job_logs(ref.submission_id)
        except RuntimeError:
            return ""
        return "\n".join(logs.rstrip().splitlines()[-lines:])

    @_transient
    def stop(self, ref: AttemptRef) -> None:
        if self._state(ref.submission_id).status in ("PENDING", "RUNNING"):
            self.client.stop_job(ref.submission_id)

    def dashboard_url(self, ref: AttemptRef) -> str:
        return f"{self.address}/#/jobs/{ref.submission_id}"
