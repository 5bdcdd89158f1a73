"""The status patch the operator sends each tick: a JSON merge patch (RFC 7386) from what the API
server stores to what the reconciler computed."""

from mlplane.crds.base import Progress
from mlplane.crds.trainingjob import TrainingJobStatus
from mlplane.operator.handlers import status_patch


def test_an_unchanged_status_writes_nothing() -> None:
    status = TrainingJobStatus(phase="Queued", attempts=0)
    assert status_patch(status, status.to_dict()) == {}


def test_only_what_changed_is_sent() -> None:
    stored = TrainingJobStatus(phase="Running", progress=Progress(epoch=3, of=10)).to_dict()
    now = TrainingJobStatus(phase="Running", progress=Progress(epoch=4, of=10))
    assert status_patch(now, stored) == {"progress": {"epoch": 4}}


def test_what_is_gone_is_nulled_so_the_merge_removes_it() -> None:
    """A finished run has no ETA; a merge patch without the null would keep the last one."""
    running = TrainingJobStatus(
        phase="Running", progress=Progress(epoch=11, of=12, eta_seconds=10), metrics={"a": 1.0}
    )
    done = TrainingJobStatus(phase="Succeeded", progress=Progress(epoch=12, of=12))
    assert status_patch(done, running.to_dict() | {"kopf": {"progress": {}}}) == {
        "phase": "Succeeded",
        "progress": {"epoch": 12, "etaSeconds": None},
        "metrics": {"a": None},
    }
