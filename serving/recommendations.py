"""``GET /v1/users/<user_id>/recommendations``: hybrid recommendations for one user."""

from __future__ import annotations

from flask import Blueprint, g, request

from serving import bodies
from serving import validation as v
from serving.cache import Cache
from serving.openapi import operation
from serving.services import json_response, require_model, services

bp = Blueprint("recommendations", __name__)


def user_cache_keys(version: str, user_id: int) -> list[str]:
    """Every cache key of a user's recommendation lists (one per k)."""
    return [Cache.key(version, "user", user_id, k) for k in range(1, v.MAX_K + 1)]


@bp.get("/v1/users/<user_id>/recommendations")
@operation(
    "Recommendations for a user",
    tag="recommendations",
    response="RecommendationList",
    params=[v.USER_ID, v.K],
    errors=(400, 429, 503),
)
def user_recommendations(user_id: str):
    """Top-k books for a user, excluding books they rated (and other editions of them).

    Unknown users get the most popular books, marked ``source: popular``.
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

    key = Cache.key(model.version, "user", uid, k)
    return json_response(svc.cache.get_or_compute("user", key, compute))
