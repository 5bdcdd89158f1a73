"""Per-second counts, merged across replicas, summarized over a trailing window."""

from mlplane.serving.metrics import (
    LATENCY_BOUNDS_MS,
    Counts,
    Recorder,
    Window,
    percentile,
    summarize,
)


def test_percentiles_interpolate_within_buckets() -> None:
    counts = Counts()
    for _ in range(100):
        counts.observe("ok", 4.0)  # bucket (3, 5]
    assert percentile(counts.latency, 0.5) == 4.0
    assert percentile(counts.latency, 0.99) == 4.98
    assert percentile(Counts().latency, 0.5) is None
    slow = Counts()
    slow.observe("ok", 60_000)
    assert percentile(slow.latency, 0.99) == LATENCY_BOUNDS_MS[-1]


def test_rejections_count_as_requests_but_not_as_errors_or_latency() -> None:
    counts = Counts()
    counts.observe("ok", 2)
    counts.observe("error", 2)
    counts.observe("rejected", 0.1)
    assert (counts.requests, counts.errors, counts.rejected, sum(counts.latency)) == (3, 1, 1, 2)


def test_replicas_merge_and_the_window_trails() -> None:
    start = 1_000_000.0
    window = Window(started=start)
    a, b = Recorder(), Recorder()
    for second in range(10):
        a.record("stable", "ok", 4, at=start + second)
        b.record("stable", "ok", 4, at=start + second)
        b.record("canary", "error", 40, at=start + second)
    window.merge(a.drain(), now=start + 10)
    window.merge(b.drain(), now=start + 10)
    assert a.drain() == {}  # drained once
    summary = window.summary(60, now=start + 10)
    assert summary["windowSeconds"] == 10  # clipped to the collector's lifetime
    assert summary["total"]["requests"] == 30
    assert summary["roles"]["stable"]["rps"] == 2.0
    assert summary["roles"]["canary"]["errorRate"] == 1.0
    assert summary["roles"]["canary"]["p99Ms"] is not None
    last_five = window.summary(5, now=start + 10)
    assert last_five["roles"]["stable"]["requests"] == 10


def test_retention_drops_old_seconds() -> None:
    window = Window(retention_seconds=5, started=0)
    recorder = Recorder()
    recorder.record("stable", "ok", 1, at=1)
    window.merge(recorder.drain(), now=100)
    assert window.summary(1000, now=100)["total"]["requests"] == 0


def test_models_reported_by_live_replicas_are_tallied() -> None:
    window = Window(started=0)
    model = {"uri": "models:/m/1", "version": "1", "ready": True, "error": None}
    window.report_models("r1", {"stable": model}, now=10)
    window.report_models("r2", {"stable": model}, now=10)
    window.report_models("gone", {"stable": {**model, "version": "0"}}, now=-100)
    assert window.summary(10, now=11)["models"] == {"stable": [{**model, "replicas": 2}]}


def test_the_error_rate_counts_only_requests_the_model_was_asked_to_answer() -> None:
    counts = Counts()
    for _ in range(90):
        counts.observe("rejected", 0.2)
    for outcome in ("ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "error", "error"):
        counts.observe(outcome, 3)
    summary = summarize(counts, 10)
    assert (summary["requests"], summary["rejected"], summary["errors"]) == (100, 90, 2)
    assert summary["errorRate"] == 0.2  # 2 of the 10 served, not 2 of 100
    only_rejected = Counts()
    only_rejected.observe("rejected", 0.2)
    assert summarize(only_rejected, 1)["errorRate"] == 0.0
    assert summarize(only_rejected, 1)["p99Ms"] is None  # a rejection has no model latency
