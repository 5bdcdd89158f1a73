"""Admission: may this work start now? The GPU quota ledger (and Kueue) plug in here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mlplane.crds.base import Queue


@dataclass(frozen=True)
class Work:
    """What admission needs to know about a TrainingJob or TuningSweep."""

    uid: str
    namespace: str
    name: str
    pool: str
    gpus: int
    priority: int = 0
    created: str = ""
    """creationTimestamp (RFC 3339, so it sorts as text): FIFO order that survives restarts."""


@dataclass(frozen=True)
class Decision:
    admitted: bool
    queue: Queue
    message: str
    reason: str = "Admitted"
    """Why work waits, for the Admitted condition: WaitingForQuota (its namespace's quota is
    in use), WaitingForCapacity (the pool is in use), WaitingForEarlierWork (it would fit, but
    earlier work waits ahead of it), ExceedsQuota (it asks more than its namespace may ever
    hold: it waits for the quota to grow, and the work behind it goes ahead), or
    ExceedsPoolCapacity (more than the pool has: it can never start)."""


class Admission(Protocol):
    def admit(self, work: Work) -> Decision:
        """Admit `work` or say where it waits; calling again for admitted work is a no-op."""
        ...

    def release(self, uid: str) -> None:
        """Give back what `uid` held (it ended or was deleted); unknown uids are ignored."""
        ...


class AdmitAll:
    """No quota: every piece of work starts at once (the embedded default)."""

    def admit(self, work: Work) -> Decision:
        return Decision(True, Queue(pool=work.pool, gpus=work.gpus, position=0), "admitted")

    def release(self, uid: str) -> None:
        return None
