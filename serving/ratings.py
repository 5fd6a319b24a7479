"""``POST /v1/users/<user_id>/ratings``: record a rating for the next training run."""

from __future__ import annotations

from flask import Blueprint, g, request

from serving import validation as v
from serving.catalog import CatalogUnavailable
from serving.openapi import operation
from serving.services import dumps, json_response, services

bp = Blueprint("ratings", __name__)


@bp.post("/v1/users/<user_id>/ratings")
@operation(
    "Record a rating",
    tag="ratings",
    response="RatingRecorded",
    params=[v.USER_ID],
    body=v.RATING_BODY,
    status=201,
    errors=(400, 404, 413, 415, 429, 503),
)
def record_rating(user_id: str):
    """Store (or update) the user's 0-10 rating of a book with ``source='api'``.

    The next request for the user's recommendations, on any worker, scores it (fold-in).
    """
    uid = v.parse_user_id(user_id)
    if not request.is_json:
        raise v.ApiError(415, "unsupported_media_type", "body: send JSON (application/json)")
    body = request.get_json(silent=True)
    isbn, rating = v.parse_rating(body)
    svc = services()
    g.user_id = uid
    try:
        svc.catalog.record_rating(uid, isbn, rating)
    except CatalogUnavailable:
        svc.metrics.fallbacks.labels(reason="postgres_down").inc()
        raise v.ApiError(
            503,
            "ratings_unavailable",
            "PostgreSQL is not answering; the rating was not stored",
            headers={"Retry-After": "5"},
        ) from None
    g.source = "database"
    # After the commit: a new generation means no worker serves the reader's old lists.
    # (Without Redis, the stored rating itself changes the PostgreSQL freshness token.)
    svc.cache.bump_user_generation(uid)
    payload = {"user_id": uid, "isbn": isbn, "rating": rating, "status": "recorded"}
    return json_response(dumps(payload), status=201)
