"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response

from serving.openapi import operation
from serving.services import dumps, json_response, services

bp = Blueprint("health", __name__)


@bp.get("/livez")
@operation("The process is alive", tag="health", response="Health", errors=())
def livez():
    """Always 200 while the worker can answer."""
    return json_response(dumps({"status": "alive"}))


@bp.get("/readyz")
@operation("A verified model is loaded", tag="health", response="Health", errors=(503,))
def readyz():
    """200 once a verified model is loaded; not tied to Redis or PostgreSQL health."""
    holder = services().holder
    if holder.ready:
        return json_response(dumps({"status": "ready", "model_version": holder.version}))
    return json_response(dumps({"status": "not_ready", "model_version": None}), status=503)


@bp.get("/metrics")
@operation(
    "Prometheus metrics (all workers)",
    tag="health",
    response=None,
    errors=(),
    content_type="text/plain",
)
def metrics():
    """Request counts and latencies, cache, reload and fallback counters, merged across workers."""
    body, content_type = services().metrics.exposition()
    return Response(body, content_type=content_type)
