"""Which failures of the Ray Jobs API the ray backend asks again about."""

from __future__ import annotations

import pytest

from mlplane.operator.backends.ray import _is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionError("connection refused"), True),
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
