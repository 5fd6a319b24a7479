"""``GET /v1/users/<user_id>/recommendations``: hybrid recommendations for one user."""

from __future__ import annotations

from flask import Blueprint, g, request

from serving import validation as v
from serving.cache import Cache
from serving.catalog import CatalogUnavailable
from serving.openapi import operation
from serving.services import dumps, json_response, rec_to_dict, require_model, services

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
        exclude: list[str] = []
        cacheable = True
        try:
            exclude = svc.catalog.api_rated(uid)
        except CatalogUnavailable:
            svc.metrics.fallbacks.labels(reason="postgres_down").inc()
            cacheable = False
        known = bool(model.knows_user(uid))
        if not known:
            svc.metrics.fallbacks.labels(reason="unknown_user").inc()
        recs = model.recommend(uid, k=k, exclude=exclude)
        g.source = "model" if known else "popular"
        payload = {
            "model_version": model.version,
            "user_id": uid,
            "k": k,
            "known_user": known,
            "items": [rec_to_dict(r) for r in recs],
        }
        return dumps(payload), cacheable

    key = Cache.key(model.version, "user", uid, k)
    return json_response(svc.cache.get_or_compute("user", key, compute))
