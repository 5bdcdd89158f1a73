"""Keeping the operator's timers honest through API server outages.

kopf retries a failed request with `settings.networking.error_backoffs`; once they run out it
gives up, and a status patch that gives up ends that resource's timer for as long as the operator
runs (kopf marks it stopped for good: no later watch event spawns it again). The default
backoffs add up to 54 s, so an API server outage of a minute left running jobs Running forever and
their GPUs held. `ENDLESS_BACKOFFS` makes every request wait the outage out instead, and
`ObserveWatchdog` turns /healthz red when a resource goes unobserved anyway (a timer that died of
something else, a step that hangs), so Kubernetes restarts the operator, which rebuilds every
resource's state and timer from the API server.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
"""Seconds before each of the first retries of a failed API server request: a blip costs a
second, a restart of the API server a few."""

LONGEST_RETRY_DELAY = 15.0
"""Seconds between retries after those, for as long as the API server stays away: at most this
long from its return to the operator's next request, and one request per 15 s per waiting call
while it is away."""


class EndlessBackoffs:
    """`RETRY_DELAYS`, then `LONGEST_RETRY_DELAY` forever.

    kopf iterates its backoffs afresh for every request, so this is an iterable that starts over
    each time, never an iterator (which the first request would use up for all the others), and
    it has no length (kopf would count a length as a limit on the retries).
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain(RETRY_DELAYS, itertools.repeat(LONGEST_RETRY_DELAY))


ENDLESS_BACKOFFS = EndlessBackoffs()

STALL_INTERVALS = 10
"""Observe intervals a resource may go unobserved before the operator counts as stuck."""

STALL_FLOOR_SECONDS = 300.0
"""...but never fewer seconds than this: one reconcile step may wait this long on Ray or MLflow
(each call has its timeout and retries), and a restart of an operator on the embedded default
stops the Ray jobs its local head runs, so it is asked for only when nothing else will help."""


class OperatorStuck(RuntimeError):
    """Resources go unobserved while the API server answers: only a restart brings them back."""


class ObserveWatchdog:
    """When each active resource was last observed, from the watch and the observe timers.

    The watch says which resources should have a timer running (`watched`), each observe says
    it ran (`observed`). A resource whose last observe (or, before its first, the watch event
    that made it active) is older than the stall limit is overdue.

    What then: an overdue resource with the API server reachable means a timer kopf will not
    run again (kopf never re-spawns a timer that ended on an error, not even on a touch of the
    object) or a step that hangs. No change to the object re-arms it, but a restart does, and
    loses nothing: every admission, queue position and run is rebuilt from the resources'
    statuses. So `check` raises, kopf's /healthz answers 500, and Kubernetes restarts the
    operator, as a user of any controller expects of a liveness probe.

    While the API server is unreachable every resource is overdue, and a restart cannot help:
    the new process would wait for the same API server, and Kubernetes' crash-loop back-off (up
    to five minutes) would delay the catch-up after it returns, when the waiting timers would
    have written their statuses within seconds. Then `check` reports the outage in /healthz's
    body and stays 200.
    """

    def __init__(
        self,
        interval_seconds: float,
        api_server_answers: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_seconds = max(STALL_INTERVALS * interval_seconds, STALL_FLOOR_SECONDS)
        self._api_server_answers = api_server_answers
        self._clock = clock
        self._last: dict[str, tuple[str, str, float]] = {}
        """uid -> (kind, namespace/name, when last observed or first seen active)."""
        self._lock = threading.Lock()  # observes run on kopf's reconcile threads

    def watched(self, uid: str, kind: str, name: str, active: bool) -> None:
        """A watch event: the resource should (or no longer should) be observed."""
        with self._lock:
            if not active:
                self._last.pop(uid, None)
            elif uid not in self._last:
                self._last[uid] = (kind, name, self._clock())

    def observed(self, uid: str) -> None:
        """An observe of the resource ran to its end (a step that raised counts: kopf retries
        it on the next interval). Only resources the watch made active are tracked, so a late
        observe never brings back one that was deleted."""
        with self._lock:
            if uid in self._last:
                kind, name, _ = self._last[uid]
                self._last[uid] = (kind, name, self._clock())

    def lags(self) -> dict[str, float]:
        """By kind, the longest any active resource has gone unobserved, in seconds: an observe
        interval and a step's time when all is well, more when steps wait for threads."""
        now = self._clock()
        lags: dict[str, float] = {}
        with self._lock:
            for kind, _, last in self._last.values():
                lags[kind] = max(lags.get(kind, 0.0), now - last)
        return lags

    def check(self) -> dict[str, object]:
        """What /healthz answers with; raises OperatorStuck if a resource is overdue while the
        API server answers."""
        now = self._clock()
        with self._lock:
            observed = len(self._last)
            overdue = sorted(
                f"{kind} {name}"
                for kind, name, last in self._last.values()
                if now - last > self.limit_seconds
            )
        report: dict[str, object] = {"observed": observed, "overdue": len(overdue)}
        if not overdue:
            return report
        if not self._api_server_answers():
            return report | {"waitingFor": "the API server"}
        shown = ", ".join(overdue[:10]) + (f" and {len(overdue) - 10} more" if overdue[10:] else "")
        raise OperatorStuck(
            f"{len(overdue)} resource(s) not observed for over {self.limit_seconds:g} s while the "
            f"API server answers: {shown}"
        )
