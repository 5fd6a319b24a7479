"""Prometheus metrics, aggregated across gunicorn workers in multiprocess mode.

The per-request samples (request count, latency, cache hit or miss) are appended to a
queue on the request path and folded into the metrics once a second by a background
thread, and before every ``/metrics`` answer: in multiprocess mode each increment takes a
process-wide lock and writes a memory-mapped file, and the four of them per request were
~8% of a worker's CPU under load. Without the thread (the Flask test client) samples are
recorded at once.

Under gunicorn, ``serving/gunicorn_conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
``prometheus_client`` is imported, so every worker writes its samples to files there and
``/metrics`` merges them. Without it (the Flask test client, a single process), each app
gets its own in-memory registry, so several apps in one process never collide.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from serving.periodic import Periodic

MAX_PENDING_SAMPLES = 50_000  # beyond this the request path folds them in itself
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_dir() -> str | None:
    """The shared sample folder when running under gunicorn's multiprocess setup."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric the serving tier exports, created once per app."""

    def __init__(self, flush_interval_s: float = 1.0) -> None:
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
        self.searches = Counter(
            "bookrec_searches_total",
            "Searches computed (not cached) by what found the books: index (the worker's "
            "in-memory index) or database (PostgreSQL full text, before the index is built)",
            ["path"],
            registry=reg,
        )
        self.search_index_bytes = Gauge(
            "bookrec_search_index_bytes",
            "Bytes of a worker's in-memory search index (0: not built)",
            multiprocess_mode="liveall",
            registry=reg,
        )
        self.search_index_books = Gauge(
            "bookrec_search_index_books",
            "Books in a worker's in-memory search index",
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
        self.impressions = Counter(
            "bookrec_impressions_total",
            "Lists shown (recommendations, similar, popular) by model version and kind",
            ["model_version", "kind"],
            registry=reg,
        )
        self.impressions_dropped = Counter(
            "bookrec_impressions_dropped_total",
            "Impressions not stored (PostgreSQL down or the queue full)",
            registry=reg,
        )
        self.attributed_ratings = Counter(
            "bookrec_attributed_ratings_total",
            "API ratings attributed to a list shown before, by that list's model version",
            ["model_version"],
            registry=reg,
        )
        self.rollout_info = Gauge(
            "bookrec_rollout_info",
            "1 for the rollout whose candidate a worker holds",
            ["rollout_id"],
            multiprocess_mode="liveall",
            registry=reg,
        )
        self.variant_requests = Counter(
            "bookrec_variant_requests_total",
            "Recommendation requests during a rollout by variant and status class (2xx, 4xx, 5xx)",
            ["variant", "status"],
            registry=reg,
        )
        self.variant_impressions = Counter(
            "bookrec_variant_impressions_total",
            "Reader lists shown during a rollout by variant",
            ["variant"],
            registry=reg,
        )
        self.variant_attributed = Counter(
            "bookrec_variant_attributed_ratings_total",
            "Ratings attributed to a rollout's lists by variant and the model credited "
            "(champion or candidate)",
            ["variant", "credited"],
            registry=reg,
        )
        self._pending: deque[tuple] = deque()  # samples not yet folded in (append is atomic)
        self._flush_lock = threading.Lock()
        self._folder = Periodic("metrics-flush", flush_interval_s, self.flush)
        self._queueing = False  # the folding thread runs (a plain flag: read per sample)

    # -- per-request samples ---------------------------------------------------------------
    def observe_request(
        self, route: str, method: str, status: int, seconds: float, variant: str | None = None
    ) -> None:
        """Count one request and its latency (and, during a rollout, its variant)."""
        self._pending.append((route, method, status, seconds, variant))
        if not self._queueing or len(self._pending) >= MAX_PENDING_SAMPLES:
            self.flush()

    def cache_lookup(self, kind: str, hit: bool) -> None:
        """Count a cache hit or miss of ``kind``."""
        self._pending.append((kind, hit))
        if not self._queueing or len(self._pending) >= MAX_PENDING_SAMPLES:
            self.flush()

    def impression(self, version: str, kind: str, variant: str | None = None) -> None:
        """Count one list shown (and its variant during a rollout)."""
        self._pending.append((version, kind, variant))
        if not self._queueing or len(self._pending) >= MAX_PENDING_SAMPLES:
            self.flush()

    def flush(self) -> None:
        """Fold the queued samples into the metrics: one increment per label set and bucket,
        however many requests it covers."""
        with self._flush_lock:
            requests: Tally = Tally()
            by_variant: Tally = Tally()
            cache: Tally = Tally()
            shown: Tally = Tally()
            latency: dict[str, list] = {}
            bounds = LATENCY_BUCKETS
            popleft = self._pending.popleft
            for _ in range(len(self._pending)):
                sample = popleft()
                if len(sample) == 2:
                    cache[sample] += 1
                    continue
                if len(sample) == 3:
                    shown[sample] += 1
                    continue
                route, method, status, seconds, variant = sample
                requests[route, method, status] += 1
                if variant is not None:
                    by_variant[variant, f"{status // 100}xx"] += 1
                agg = latency.get(route)
                if agg is None:
                    agg = latency[route] = [[0] * (len(bounds) + 1), 0.0]
                agg[0][bisect_left(bounds, seconds)] += 1  # the first bucket with le >= seconds
                agg[1] += seconds
            for (route, method, status), n in requests.items():
                self.requests.labels(route, method, str(status)).inc(n)
            for route, (counts, total) in latency.items():
                child = self.latency.labels(route)
                child._sum.inc(total)  # noqa: SLF001 - Histogram.observe, n samples at once
                for bucket, n in zip(child._buckets, counts, strict=True):  # noqa: SLF001
                    if n:
                        bucket.inc(n)
            for (kind, hit), n in cache.items():
                (self.cache_hits if hit else self.cache_misses).labels(kind=kind).inc(n)
            for (variant, status), n in by_variant.items():
                self.variant_requests.labels(variant=variant, status=status).inc(n)
            for (version, kind, variant), n in shown.items():
                self.impressions.labels(model_version=version, kind=kind).inc(n)
                if variant is not None:
                    self.variant_impressions.labels(variant=variant).inc(n)

    def start(self) -> None:
        """Queue the per-request samples and fold them in once a second from now on."""
        self._folder.start()
        self._queueing = True

    def stop(self) -> None:
        """Stop the background thread and fold in what is queued."""
        self._queueing = False
        self._folder.stop()

    def set_model_version(self, new: str, old: str | None) -> None:
        """Mark ``new`` as the version this worker serves (and ``old`` as no longer)."""
        if old and old != new:
            self.model_version.labels(version=old).set(0)
        self.model_version.labels(version=new).set(1)

    def set_rollout(self, new: str | None, old: str | None) -> None:
        """Mark the rollout whose candidate this worker holds (``new``; None: none)."""
        if old and old != new:
            self.rollout_info.labels(rollout_id=old).set(0)
        if new:
            self.rollout_info.labels(rollout_id=new).set(1)

    def attributed(self, attribution) -> None:
        """Count an attributed rating (an ``online.Attribution``) by version, and by variant
        and credited model during a rollout."""
        self.attributed_ratings.labels(model_version=attribution.model_version).inc()
        if attribution.variant is not None:
            credited = "champion"
            if attribution.credited_team == 1 or attribution.variant == "canary":
                credited = "candidate"
            self.variant_attributed.labels(variant=attribution.variant, credited=credited).inc()

    def _live_samples(self, name: str, label: str) -> dict[str, str]:
        """pid -> the ``label`` of the sample of gauge ``name`` set to 1 in each live worker."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            metrics = registry.collect()
        else:
            metrics = self.registry.collect()
        found: dict[str, str] = {}
        for metric in metrics:
            if metric.name != name:
                continue
            for sample in metric.samples:
                if sample.value == 1:
                    found[sample.labels.get("pid", str(os.getpid()))] = sample.labels[label]
        return found

    def worker_rollouts(self) -> dict[str, str]:
        """pid -> the rollout id whose candidate each live worker holds (workers holding
        none are absent)."""
        return self._live_samples("bookrec_rollout_info", "rollout_id")

    def worker_versions(self) -> dict[str, str]:
        """pid -> the model version each live worker serves (every worker of this server in
        multiprocess mode, from the shared files; else this process alone)."""
        return self._live_samples("bookrec_model_version_info", "version")

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type, merged across workers if needed
        (this process's queued samples are folded in first; other workers' within 1 s)."""
        self.flush()
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
