"""The per-request samples queued by ``Metrics`` come out as if observed one by one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from serving.metrics import LATENCY_BUCKETS, Metrics


def _lines(body: bytes, prefix: str) -> list[str]:
    return sorted(
        line
        for line in body.decode().splitlines()
        if line.startswith(prefix) and "_created" not in line
    )


def test_queued_samples_fold_into_the_same_counts_and_buckets(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    metrics.start()
    try:
        reference_registry = CollectorRegistry()
        reference = Histogram(
            "bookrec_http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reference_registry,
        )
        # bucket edges, values between them, zero, and beyond the last bucket
        samples = [0.0, 0.001, 0.0010001, 0.0025, 0.004, 0.005, 0.02, 0.25, 1.0, 4.9, 5.0, 7.5]
        for i, seconds in enumerate(samples * 3):
            route = "/a" if i % 2 else "/b"
            metrics.observe_request(route, "GET", 200 if i % 3 else 404, seconds)
            reference.labels(route).observe(seconds)
            metrics.cache_lookup("user", hit=bool(i % 4))
        assert metrics._pending  # queued, not yet folded in (the thread wakes once a second)
        body, _ = metrics.exposition()  # folds in first
    finally:
        metrics.stop()
    assert not metrics._pending
    want = generate_latest(reference_registry)
    assert _lines(body, "bookrec_http_request_duration_seconds") == _lines(
        want, "bookrec_http_request_duration_seconds"
    )
    n = len(samples) * 3
    counts = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(("bookrec_http_requests_total{", "bookrec_cache_"))
    }
    assert sum(v for k, v in counts.items() if k.startswith("bookrec_http_requests_total")) == n
    assert counts['bookrec_http_requests_total{method="GET",route="/a",status="404"}'] == len(
        [i for i in range(n) if i % 2 and not i % 3]
    )
    assert counts['bookrec_cache_hits_total{kind="user"}'] == len([i for i in range(n) if i % 4])
    assert counts['bookrec_cache_misses_total{kind="user"}'] == len(
        [i for i in range(n) if not i % 4]
    )


def test_without_the_thread_samples_count_at_once(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    metrics.observe_request("/a", "GET", 200, 0.003)
    assert not metrics._pending
    assert metrics.requests.labels("/a", "GET", "200")._value.get() == 1
