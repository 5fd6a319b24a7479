"""``POST /v1/users/<user_id>/ratings``: record a rating (an API key is required)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, g, request

from serving import validation as v
from serving.apikeys import require_api_key
from serving.catalog import CatalogUnavailable
from serving.openapi import operation
from serving.services import dumps, json_response, services

if TYPE_CHECKING:  # the body's type (serving/schemas.py)
    from serving.schemas import RatingRecorded

bp = Blueprint("ratings", __name__)


@bp.post("/v1/users/<user_id>/ratings")
@operation(
    "Record a rating",
    tag="ratings",
    response="RatingRecorded",
    params=[v.USER_ID],
    body=v.RATING_BODY,
    status=201,
    errors=(400, 401, 403, 404, 413, 415, 429, 503),
    auth="apiKey",
)
def record_rating(user_id: str):
    """Store (or update) the user's 0-10 rating of a book with ``source='api'``.

    Needs ``Authorization: Bearer <API key>``; a key bound to readers may only rate for
    them. The rating is attributed to a list shown to the reader within the attribution
    window (first the list named by ``request_id``, if given). The next request for the
    user's recommendations, on any worker, scores it (fold-in).
    """
    key = require_api_key()
    uid = v.parse_user_id(user_id)
    if not key.may_write_for(uid):
        raise v.ApiError(
            403,
            "forbidden",
            f"user_id: API key {key.id} may not write for reader {uid}",
            field="user_id",
        )
    if not request.is_json:
        raise v.ApiError(415, "unsupported_media_type", "body: send JSON (application/json)")
    body = request.get_json(silent=True)
    isbn, rating, request_id = v.parse_rating(body)
    svc = services()
    g.user_id = uid
    try:
        attribution = svc.catalog.record_rating(
            uid, isbn, rating, api_key_id=key.id, request_id=request_id
        )
    except CatalogUnavailable:
        svc.metrics.fallbacks.labels(reason="postgres_down").inc()
        raise v.ApiError(
            503,
            "ratings_unavailable",
            "PostgreSQL is not answering; the rating was not stored",
            headers={"Retry-After": "5"},
        ) from None
    if attribution.model_version is not None:
        svc.metrics.attributed(attribution)
    else:  # its list may still be in a worker's queue: try again for a while
        svc.impressions.await_attribution(attribution.event_id)
    g.source = "database"
    # After the commit: a new generation means no worker serves the reader's old lists.
    # (Without Redis, the stored rating itself changes the PostgreSQL freshness token.)
    svc.cache.bump_user_generation(uid)
    payload: RatingRecorded = {
        "user_id": uid,
        "isbn": isbn,
        "rating": rating,
        "status": "recorded",
        "attribution": attribution.to_json(),
    }
    return json_response(dumps(payload), status=201)
