"""Request counts and latency per model role, kept in per-second buckets.

Each ModelServer replica records into a `Recorder` and, once a second, hands what it recorded to
the application's single `MetricsCollector`, which merges every replica into a `Window`. Summaries
are computed over a trailing window chosen by the reader, so the operator needs no state of its
own: the canary guard asks for exactly the seconds since its step began.

Latency is a fixed-bucket histogram (like Prometheus'), so buckets from many replicas add up and
percentiles are interpolated within a bucket. Pure Python: unit-tested without Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    2000,
    5000,
    10000,
)
"""Upper bounds of the latency buckets; one more bucket holds everything slower."""

Outcome = Literal["ok", "error", "rejected"]
"""ok: answered; error: the model failed (5xx); rejected: the request was invalid (4xx)."""


def _empty_histogram() -> list[int]:
    return [0] * (len(LATENCY_BOUNDS_MS) + 1)


@dataclass
class Counts:
    """Requests in one second (or summed over many) for one model role."""

    requests: int = 0
    errors: int = 0
    rejected: int = 0
    latency: list[int] = field(default_factory=_empty_histogram)

    def observe(self, outcome: Outcome, latency_ms: float) -> None:
        self.requests += 1
        if outcome == "rejected":
            self.rejected += 1
            return  # a rejection is cheap and says nothing about the model's speed
        if outcome == "error":
            self.errors += 1
        self.latency[_bucket(latency_ms)] += 1

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.rejected += other.rejected
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rejected": self.rejected,
            "latency": list(self.latency),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(data["requests"], data["errors"], data["rejected"], list(data["latency"]))


def _bucket(latency_ms: float) -> int:
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return index
    return len(LATENCY_BOUNDS_MS)


def percentile(histogram: list[int], q: float) -> float | None:
    """The q-quantile (0..1) in ms, interpolated linearly inside its bucket; None when empty."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            if index == len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])  # slower than the last bound: at least that
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return round(lower + (upper - lower) * (rank - seen) / count, 3)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


def summarize(counts: Counts, seconds: float) -> dict[str, Any]:
    """The contract of `/-/metrics` for one role: counts, rates and percentiles over `seconds`.

    `rejected` counts the client's errors (4xx), `errors` the model's (5xx); `errorRate` is the
    share of the requests the model was asked to answer that failed, so client errors neither
    raise it nor dilute it.
    """
    served = counts.requests - counts.rejected
    return {
        "requests": counts.requests,
        "errors": counts.errors,
        "rejected": counts.rejected,
        "rps": round(counts.requests / seconds, 3) if seconds > 0 else 0.0,
        "errorRate": round(counts.errors / served, 6) if served else 0.0,
        "p50Ms": percentile(counts.latency, 0.50),
        "p99Ms": percentile(counts.latency, 0.99),
        "latencyBoundsMs": list(LATENCY_BOUNDS_MS),
        "latencyCounts": list(counts.latency),
    }


class Recorder:
    """One replica's counts per role and second, accumulated until the next `drain`."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[int, Counts]] = {}

    def record(
        self, role: str, outcome: Outcome, latency_ms: float, at: float | None = None
    ) -> None:
        second = int(time.time() if at is None else at)
        per_second = self._pending.setdefault(role, {})
        per_second.setdefault(second, Counts()).observe(outcome, latency_ms)

    def drain(self) -> dict[str, dict[int, dict[str, Any]]]:
        """Everything recorded since the last drain, as plain data for a remote call."""
        drained = {
            role: {second: c.to_dict() for second, c in seconds.items()}
            for role, seconds in self._pending.items()
        }
        self._pending = {}
        return drained


class Window:
    """The application's merged counts per role and second, kept for `retention_seconds`."""

    def __init__(self, retention_seconds: int = 3600, started: float | None = None) -> None:
        self.retention_seconds = retention_seconds
        self.started = time.time() if started is None else started
        self._seconds: dict[str, dict[int, Counts]] = {}
        self._models: dict[str, tuple[float, dict[str, Any]]] = {}

    def merge(
        self, drained: dict[str, dict[int, dict[str, Any]]], now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        for role, seconds in drained.items():
            per_second = self._seconds.setdefault(role, {})
            for second, data in seconds.items():
                per_second.setdefault(int(second), Counts()).add(Counts.from_dict(data))
        oldest = int(now) - self.retention_seconds
        for per_second in self._seconds.values():
            for second in [s for s in per_second if s < oldest]:
                del per_second[second]

    def report_models(self, replica: str, models: dict[str, Any], now: float | None = None) -> None:
        """What a replica serves per role (uri, version, ready, error), as of `now`."""
        self._models[replica] = (time.time() if now is None else now, models)

    def summary(self, window_seconds: float, now: float | None = None) -> dict[str, Any]:
        """Per role and in total, over the trailing `window_seconds` (clipped to our lifetime)."""
        now = time.time() if now is None else now
        seconds = max(min(window_seconds, now - self.started), 1.0)
        since = now - seconds
        total = Counts()
        roles: dict[str, Any] = {}
        for role, per_second in sorted(self._seconds.items()):
            counts = Counts()
            for second, data in per_second.items():
                if second + 1 > since:
                    counts.add(data)
            total.add(counts)
            roles[role] = summarize(counts, seconds)
        return {
            "windowSeconds": round(seconds, 3),
            "total": summarize(total, seconds),
            "roles": roles,
            "models": self._live_models(now),
        }

    def _live_models(self, now: float, fresh_seconds: float = 10.0) -> dict[str, list[Any]]:
        """Per role, the distinct models replicas reported lately (two during a rollout)."""
        tally: dict[str, dict[tuple[tuple[str, Any], ...], int]] = {}
        for at, models in self._models.values():
            if now - at <= fresh_seconds:
                for role, model in models.items():
                    key = tuple(sorted(model.items()))
                    tally.setdefault(role, {})[key] = tally.get(role, {}).get(key, 0) + 1
        return {
            role: [{**dict(key), "replicas": n} for key, n in sorted(found.items(), key=str)]
            for role, found in sorted(tally.items())
        }
