"""Prometheus metrics, aggregated across gunicorn workers in multiprocess mode.

Under gunicorn, ``serving/gunicorn_conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
``prometheus_client`` is imported, so every worker writes its samples to files there and
``/metrics`` merges them. Without it (the Flask test client, a single process), each app
gets its own in-memory registry, so several apps in one process never collide.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_dir() -> str | None:
    """The shared sample folder when running under gunicorn's multiprocess setup."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric the serving tier exports, created once per app."""

    def __init__(self) -> None:
        """Create the metrics in a private registry (single process) or the shared files."""
        self.multiprocess = multiprocess_dir() is not None
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "bookrec_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "bookrec_http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.cache_hits = Counter(
            "bookrec_cache_hits_total", "Cache hits by kind of entry", ["kind"], registry=reg
        )
        self.cache_misses = Counter(
            "bookrec_cache_misses_total", "Cache misses by kind of entry", ["kind"], registry=reg
        )
        self.fallbacks = Counter(
            "bookrec_fallbacks_total",
            "Requests answered by a fallback (redis_down, postgres_down, unknown_user)",
            ["reason"],
            registry=reg,
        )
        self.reloads = Counter(
            "bookrec_model_reloads_total",
            "Model loads by outcome (initial, success, failure)",
            ["outcome"],
            registry=reg,
        )
        self.model_version = Gauge(
            "bookrec_model_version_info",
            "1 for the model version a worker serves",
            ["version"],
            multiprocess_mode="liveall",
            registry=reg,
        )
        self.api_log_written = Counter(
            "bookrec_api_log_records_written_total",
            "API log records inserted into PostgreSQL",
            registry=reg,
        )
        self.api_log_dropped = Counter(
            "bookrec_api_log_records_dropped_total",
            "API log records dropped (PostgreSQL down or the queue full)",
            registry=reg,
        )
        self.rate_limited = Counter(
            "bookrec_rate_limited_total", "Requests refused with 429", registry=reg
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._cache_children: dict[tuple[str, bool], Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency (the labelled children are looked up once)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)),
                        self.latency.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def cache_lookup(self, kind: str, hit: bool) -> None:
        """Count a cache hit or miss of ``kind``."""
        child = self._cache_children.get((kind, hit))
        if child is None:
            child = (self.cache_hits if hit else self.cache_misses).labels(kind=kind)
            self._cache_children[(kind, hit)] = child
        child.inc()

    def set_model_version(self, new: str, old: str | None) -> None:
        """Mark ``new`` as the version this worker serves (and ``old`` as no longer)."""
        if old and old != new:
            self.model_version.labels(version=old).set(0)
        self.model_version.labels(version=new).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type, merged across workers if needed."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
