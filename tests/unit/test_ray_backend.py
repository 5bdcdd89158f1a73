"""Which failures of the Ray Jobs API the ray backend asks again about, and how long it waits."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from mlplane.operator.backends.base import AttemptRef, Owner
from mlplane.operator.backends.ray import (
    DASHBOARD_CALLS,
    DashboardUnanswered,
    RayJobsBackend,
    _is_transient,
)

OWNER = Owner("mlplane.dev/v1alpha1", "TrainingJob", "x", "team-a", "uid-x")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionError("connection refused"), True),
        (requests.ConnectionError("connection refused"), True),
        (requests.ReadTimeout("read timed out"), False),
        (DashboardUnanswered("the Ray dashboard is not answering"), False),
        (
            RuntimeError(
                "Request failed with status code 500: No available agent to submit job, "
                "please try again later.."
            ),
            True,
        ),
        (RuntimeError("Request failed with status code 503: Service Unavailable"), True),
        (RuntimeError("Request failed with status code 400: runtime_env is invalid"), False),
        (ValueError("bad entrypoint"), False),
    ],
)
def test_only_head_side_failures_are_retried(error: BaseException, transient: bool) -> None:
    assert _is_transient(error) is transient


def test_a_hung_dashboard_times_out_then_fails_fast(hung_server: str) -> None:
    backend = RayJobsBackend(hung_server, timeout=(1.0, 1.0))
    ref = AttemptRef("mlplane-x-1", OWNER, 1)
    started = time.monotonic()
    with pytest.raises(DashboardUnanswered, match="did not answer within 1 s"):
        backend.state(ref)
    assert time.monotonic() - started < 5  # one timeout, not the retry budget
    started = time.monotonic()
    with pytest.raises(DashboardUnanswered, match="is not answering"):
        backend.state(ref)
    assert backend.logs_tail(ref) == ""
    assert time.monotonic() - started < 0.5  # quiet: no thread waits on it again


def test_a_hung_dashboard_holds_only_a_few_of_the_callers(hung_server: str) -> None:
    """Many steps ask a dashboard that accepts and never answers at once, before any of them
    has timed out: DASHBOARD_CALLS of them wait out the timeout, every other one is told so
    within a second and its thread is free again."""
    backend = RayJobsBackend(hung_server, timeout=(1.0, 3.0))
    callers = 12
    waited: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        started = time.monotonic()
        try:
            backend.state(AttemptRef(f"mlplane-x-{n}", OWNER, 1))
        except DashboardUnanswered as error:
            with lock:
                waited.append(time.monotonic() - started)
                errors.append(str(error))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(waited) == callers  # every one of them failed, none hangs
    held = sorted(waited)[-DASHBOARD_CALLS:]
    freed = sorted(waited)[:-DASHBOARD_CALLS]
    assert all(seconds >= 2.5 for seconds in held), waited
    assert all(seconds < 1.5 for seconds in freed), waited
    assert sum("calls unanswered" in error for error in errors) == callers - DASHBOARD_CALLS
