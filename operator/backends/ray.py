"""The `ray` backend: Ray Jobs API against a given Ray cluster or the embedded local head."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from ray.job_submission import JobStatus as RayJobStatus
from ray.job_submission import JobSubmissionClient
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from mlplane.crds.base import ENV_VAR_NAME
from mlplane.operator.backends.aws import CredentialsUnavailable, SecretReader, no_secrets
from mlplane.operator.backends.base import AttemptRef, JobState, Launch

log = logging.getLogger(__name__)
T = TypeVar("T")


REQUEST_TIMEOUT = (5.0, 30.0)
"""Seconds to connect to the dashboard and to wait for its answer. Ray's Jobs SDK sets none, and
one call to a dashboard that accepts and never answers would hold a reconcile thread forever."""

QUIET_SECONDS = 30.0
"""After a call times out, calls fail at once for this long instead of each waiting out the
timeout: a hung dashboard then holds no reconcile thread that other resources need."""


DASHBOARD_CALLS = 4
"""Calls to the dashboard in flight at once. Until the first one times out, a dashboard that
accepts and never answers holds every thread that calls it: this many, of the operator's
reconcile threads, and the rest stay free for the resources that do not need Ray."""

SLOT_WAIT_SECONDS = 0.5
"""How long a call waits for one of those slots: a dashboard that answers frees one within
milliseconds, so a call that waits longer fails at once."""


class DashboardUnanswered(TimeoutError):
    """The Ray dashboard did not answer in time; the reconciler asks again on its next pass."""


def _is_transient(error: BaseException) -> bool:
    """The dashboard is down, restarting or busy: worth asking again.

    The Jobs SDK raises a bare RuntimeError for every HTTP failure. A 5xx is the head's problem,
    not the request's: "No available agent to submit job" answers every submission until the
    head's agent has registered, which takes a minute on a loaded 2-core machine. A timeout is
    not asked again here: it already waited.
    """
    if isinstance(error, requests.Timeout | DashboardUnanswered):
        return False
    if isinstance(error, ConnectionError | requests.ConnectionError):
        return True
    return isinstance(error, RuntimeError) and "status code 5" in str(error)


class _BoundedJobClient(JobSubmissionClient):
    """Ray's Jobs SDK with a timeout on every request it makes (it forwards the keyword)."""

    def __init__(self, address: str, timeout: tuple[float, float]) -> None:
        self._timeout = timeout  # before the constructor's own request, the version check
        super().__init__(address)

    def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super()._do_request(method, endpoint, **kwargs)


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

    def __init__(
        self,
        dashboard_address: str,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        secrets: SecretReader = no_secrets,
    ) -> None:
        """`secrets` reads the Secrets a job names (`runtimeEnv.envFrom`) in its namespace."""
        self.address = dashboard_address.rstrip("/")
        self.timeout = timeout
        self.secrets = secrets
        self._client: JobSubmissionClient | None = None
        self._quiet_until = 0.0
        self._calls = threading.BoundedSemaphore(DASHBOARD_CALLS)

    def _answered(self, call: Callable[[JobSubmissionClient], T]) -> T:
        """`call` on the Jobs client, failing at once while the dashboard is quiet after a
        timeout or has DASHBOARD_CALLS calls unanswered."""
        if time.monotonic() < self._quiet_until:
            raise DashboardUnanswered(f"the Ray dashboard at {self.address} is not answering")
        if not self._calls.acquire(timeout=SLOT_WAIT_SECONDS):
            raise DashboardUnanswered(
                f"the Ray dashboard at {self.address} has {DASHBOARD_CALLS} calls unanswered"
            )
        try:
            if self._client is None:
                # Made on first use: its constructor asks the dashboard, which may be starting.
                self._client = _BoundedJobClient(self.address, self.timeout)
            return call(self._client)
        except requests.Timeout as error:
            self._quiet_until = time.monotonic() + QUIET_SECONDS
            raise DashboardUnanswered(
                f"the Ray dashboard at {self.address} did not answer within {self.timeout[1]:g} s"
            ) from error
        finally:
            self._calls.release()

    @_transient
    def submit(self, launch: Launch) -> None:
        if self._state(launch.submission_id).status != "MISSING":
            log.info("ray job %s already submitted", launch.submission_id)
            return
        runtime_env = self._with_secret_env(launch)
        self._answered(
            lambda jobs: jobs.submit_job(
                entrypoint=launch.entrypoint,
                submission_id=launch.submission_id,
                runtime_env=runtime_env or None,
                metadata=launch.metadata,
            )
        )

    def _with_secret_env(self, launch: Launch) -> dict[str, Any]:
        """The launch's runtime env, with the keys of its Secrets among its env vars: this job's
        only, never the Ray cluster's (which every job shares)."""
        if not launch.secret_env:
            return launch.runtime_env
        from_secrets: dict[str, str] = {}
        for name in launch.secret_env:
            data = self.secrets(launch.owner.namespace, name)
            if data is None:
                raise CredentialsUnavailable(
                    f"runtimeEnv.envFrom: Secret {name!r} not found in namespace "
                    f"{launch.owner.namespace!r}"
                )
            # As a pod's envFrom: keys that are no variable name are left out.
            from_secrets |= {k: v for k, v in data.items() if re.fullmatch(ENV_VAR_NAME, k)}
        env_vars = {**from_secrets, **launch.runtime_env.get("env_vars", {})}
        return {**launch.runtime_env, "env_vars": env_vars}

    def state(self, ref: AttemptRef) -> JobState:
        return self._state(ref.submission_id)

    @_transient
    def _state(self, submission_id: str) -> JobState:
        try:
            info = self._answered(lambda jobs: jobs.get_job_info(submission_id))
        except RuntimeError as error:  # the SDK's way of saying 404
            if "does not exist" in str(error) or "404" in str(error):
                return JobState("MISSING")
            raise
        status = info.status.value if isinstance(info.status, RayJobStatus) else str(info.status)
        return JobState(status, info.message or "")  # type: ignore[arg-type]

    def logs_tail(self, ref: AttemptRef, lines: int = 20) -> str:
        try:
            logs = self._answered(lambda jobs: jobs.get_job_logs(ref.submission_id))
        except (RuntimeError, requests.RequestException, DashboardUnanswered):
            return ""
        return "\n".join(logs.rstrip().splitlines()[-lines:])

    @_transient
    def stop(self, ref: AttemptRef) -> None:
        if self._state(ref.submission_id).status in ("PENDING", "RUNNING"):
            self._answered(lambda jobs: jobs.stop_job(ref.submission_id))

    def dashboard_url(self, ref: AttemptRef) -> str:
        return f"{self.address}/#/jobs/{ref.submission_id}"
