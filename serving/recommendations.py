"""``GET /v1/users/<user_id>/recommendations``: hybrid recommendations for one user.

Read your writes: a reader's cached lists are keyed by a freshness token, read on every
request from the store all workers and instances share: their generation in Redis (bumped
by ``POST /v1/users/<id>/ratings``), or, without Redis (or while it fails), the count and
newest ``updated_at`` of their ratings in PostgreSQL. A posted rating therefore changes
the key, and no worker's copy of the old list is served again.
"""

from __future__ import annotations

from flask import Blueprint, g, request

from serving import bodies
from serving import validation as v
from serving.cache import Cache
from serving.catalog import CatalogUnavailable
from serving.openapi import operation
from serving.services import json_response, require_model, services, shown

bp = Blueprint("recommendations", __name__)


def freshness_token(svc, user_id: int) -> str | None:
    """The reader's current list generation ("r..." from Redis, "p..." from PostgreSQL), or
    None when neither answers (the list is then computed and not cached)."""
    generation = svc.cache.user_generation(user_id)
    if generation is not None:
        return "r" + generation
    try:
        return "p" + svc.catalog.ratings_stamp(user_id)
    except CatalogUnavailable:
        return None


@bp.get("/v1/users/<user_id>/recommendations")
@operation(
    "Recommendations for a user",
    tag="recommendations",
    response="RecommendationList",
    params=[v.USER_ID, v.K],
    errors=(400, 429, 503),
)
def user_recommendations(user_id: str):
    """Top-k books for a user from their ratings as they are now (training history plus
    every rating stored since), excluding books they rated and other editions of them.

    Readers without ratings get the most popular books, marked ``source: popular``.
    """
    uid = v.parse_user_id(user_id)
    k = v.parse_k(request.args.get("k"))
    model = require_model()
    svc = services()
    g.user_id = uid
    g.source = "cache"

    def compute() -> tuple[bytes, bool]:
        body, cacheable, g.source = bodies.user(svc, model, uid, k)
        return body, cacheable

    token = freshness_token(svc, uid)
    if token is None:
        body = compute()[0]
    else:
        key = Cache.key(model.version, "user", uid, k, token)
        body = svc.cache.get_or_compute("user", key, compute)
    shown("user", body, uid)
    return json_response(body)
