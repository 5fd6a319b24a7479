"""Admin endpoints (bearer token, compared in constant time): reload, model info and the
champion's history."""

from __future__ import annotations

import hmac
import os
import re

import sqlalchemy as sa
from flask import Blueprint, request

from bookrec import audit
from serving import validation as v
from serving.openapi import operation
from serving.services import dumps, json_response, services

bp = Blueprint("admin", __name__, url_prefix="/admin")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # as the registry; fullmatch
EXPECT = v.Param(
    "version",
    "query",
    {"type": "string", "pattern": f"^{_VERSION.pattern}$"},
    "Version the caller expects to be the champion (reported back as `matches`)",
)
LIMIT = v.Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": audit.HISTORY_MAX, "default": 100},
    "How many of the newest champion intervals to list",
)
_MANIFEST_KEYS = ("kind", "created_at", "code_version", "params", "metrics", "data_fingerprint")


@bp.before_request
def require_token() -> None:
    """Refuse the call unless it carries the configured bearer token.

    With no token configured every admin call is refused.
    """
    token = services().settings.admin_token
    if token is None or not token.get_secret_value():
        raise v.ApiError(403, "admin_disabled", "BOOKREC_ADMIN_TOKEN is not set; /admin is off")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise v.ApiError(
            401,
            "unauthorized",
            "Authorization: a valid bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="bookrec-admin"'},
        )


@bp.post("/reload")
@operation(
    "Check the champion pointer and reload (answers at once)",
    tag="admin",
    response="ReloadResult",
    params=[EXPECT],
    errors=(400, 429),
    auth=True,
    status=202,
)
def reload_model():
    """Tell this worker's loader to check the champion pointer now and answer 202 at once
    (a load can take longer than a load balancer's idle timeout). The other workers follow
    on the pub/sub signal or their next poll; ``GET /admin/model`` lists what every worker
    serves. Without a loader thread (tests, ``flask run``) the check runs before answering."""
    expected = request.args.get("version")
    if expected is not None and not _VERSION.fullmatch(expected):
        raise v.invalid("version", "must be a version id (letters, digits, '.', '_', '-'; max 128)")
    holder = services().holder
    if holder.background:
        holder.request_reload()
        result = {"pid": os.getpid(), "status": "accepted", "version": holder.version}
    else:
        result = dict(holder.check(reason="admin"))
    if expected is not None:
        result["expected"] = expected
        result["matches"] = result.get("version") == expected
    return json_response(dumps(result), status=202)


@bp.get("/model")
@operation(
    "The model this worker serves",
    tag="admin",
    response="ModelInfo",
    errors=(429,),
    auth=True,
)
def model_info():
    """Version, manifest summary, champion pointer and the last reload outcome of the worker
    that answers, and ``workers``: the version every live worker of this server serves.
    During a rollout, ``rollout`` is the rollout this worker serves (null: none) and
    ``workers_rollouts`` the rollout id each live worker holds a candidate for."""
    svc = services()
    holder = svc.holder
    model = holder.model
    manifest = getattr(model, "manifest", None) or {}
    payload = {
        "version": holder.version,
        "ready": holder.ready,
        "pid": os.getpid(),
        "loaded_at": holder.loaded_at,
        "champion": holder.champion,
        "manifest": {k: manifest.get(k) for k in _MANIFEST_KEYS if k in manifest},
        "last_reload": holder.last_result,
        "workers": svc.metrics.worker_versions(),
        "rollout": _rollout_info(holder.variants),
        "workers_rollouts": svc.metrics.worker_rollouts(),
    }
    return json_response(dumps(payload))


def _rollout_info(variants) -> dict | None:
    """The rollout this worker serves variants of (without its salt), or None."""
    if variants is None:
        return None
    record = {k: v for k, v in variants.rollout.items() if k != "salt"}
    return {**record, "candidate_loaded": variants.candidate.version}


@bp.get("/models/history")
@operation(
    "The champion's history",
    tag="admin",
    response="ChampionHistory",
    params=[LIMIT],
    errors=(400, 429, 503),
    auth=True,
)
def model_history():
    """Each champion interval, oldest first: version, from, to (null: still serving), the
    decision that started it (promoted or rolled back), who or what decided ("gate", an
    approver), its Prefect flow run and the reason. Read from the ``promotions`` table."""
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= audit.HISTORY_MAX:
        raise v.invalid("limit", f"must be an integer between 1 and {audit.HISTORY_MAX}")
    try:
        rows = audit.champion_history(services().catalog.engine(), int(raw))
    except sa.exc.SQLAlchemyError as exc:
        raise v.ApiError(503, "database_unavailable",
                         f"the promotions table cannot be read: {type(exc).__name__}") from None
    return json_response(dumps([r.to_json() for r in rows]))
