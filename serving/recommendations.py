"""``GET /v1/users/<user_id>/recommendations``: hybrid recommendations for one user.

Read your writes: a reader's cached lists are keyed by a freshness token, read on every
request from the store all workers and instances share: their generation in Redis (bumped
by ``POST /v1/users/<id>/ratings``, which makes every worker drop the copy it keeps of it
before answering: ``serving/generations.py``), or, without Redis (or while it fails), the count and
newest ``updated_at`` of their ratings in PostgreSQL. A posted rating therefore changes
the key, and no worker's copy of the old list is served again.

While a rollout runs (``bookrec.rollout``) the reader is assigned a variant by a stable
hash: "champion" is answered as without a rollout, "canary" by the candidate alone,
"interleave" by a team-draft interleaving of both. Each variant's lists are cached under
their own model version ("<champion>+<candidate>" and the rollout for interleaved lists),
and every key carries the freshness token, so a reader never gets another variant's list
and still reads their writes.
"""

from __future__ import annotations

from flask import Blueprint, g

from bookrec.rollout import CANARY, INTERLEAVE, assign
from serving import bodies
from serving import validation as v
from serving.cache import Cache
from serving.catalog import CatalogUnavailable
from serving.openapi import operation
from serving.services import json_response, query_arg, require_model, services, shown

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
    k = v.parse_k(query_arg("k"))
    model = require_model()
    svc = services()
    ctx = g._get_current_object()
    ctx.user_id = uid
    ctx.source = "cache"
    variants = ctx.variants
    variant = None
    if variants is not None and variants.candidate.version != model.version:
        variant = assign(uid, variants.rollout)
        ctx.variant = variant
        ctx.rollout_id = variants.rollout_id
    if variant == CANARY:
        model = ctx.model = variants.candidate  # headers, logs and impressions name it
    key_version, key_extra = model.version, ()
    # test-only (BOOKREC_TEST_FAULT_VERSION_ERROR_RATE): the versions answering may fail it
    svc.faults.check(model.version, *((variants.candidate.version,) if variant == INTERLEAVE
                                      else ()))

    if variant == INTERLEAVE:
        candidate = variants.candidate
        key_version = ctx.version_label = f"{model.version}+{candidate.version}"
        key_extra = (variants.rollout_id,)

        def compute() -> tuple[bytes, bool]:
            body, cacheable, ctx.source = bodies.interleaved(
                svc, model, candidate, variants.rollout, uid, k
            )
            return body, cacheable
    else:

        def compute() -> tuple[bytes, bool]:
            body, cacheable, ctx.source = bodies.user(svc, model, uid, k)
            return body, cacheable

    token = freshness_token(svc, uid)
    if token is None:
        body = compute()[0]
    else:
        key = Cache.key(key_version, "user", uid, k, token, *key_extra)
        body = svc.cache.get_or_compute("user", key, compute)
    shown("user", body, uid)
    return json_response(body)
