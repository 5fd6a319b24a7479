"""The OpenAPI 3 document, generated from the routes (never written by hand).

Each view declares its operation with ``@operation(...)`` using the same ``Param``
objects the validators enforce; ``build_spec`` walks the app's URL map, turns Flask rules
into OpenAPI paths and collects those declarations with apispec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from apispec import APISpec
from flask import Flask

from bookrec import __version__
from serving.validation import Param

_RULE_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
_HEADERS = {
    "X-Model-Version": {"description": "Model version that answered", "schema": {"type": "string"}},
    "X-Request-Id": {"description": "Request id (also in the logs)", "schema": {"type": "string"}},
}
_ERROR_STATUSES = {
    400: "Invalid input (the body names the field)",
    401: "Missing, unknown or revoked bearer token (admin token or API key)",
    403: "Admin endpoints are disabled (no BOOKREC_ADMIN_TOKEN), or the API key is bound to "
    "other readers",
    404: "Not found",
    405: "Method not allowed",
    413: "Body too large (64 KB at most)",
    414: "Request line too long (refused by gunicorn before the app, as HTML)",
    415: "Body is not JSON",
    429: "Rate limit exceeded (see Retry-After)",
    503: "Model not loaded yet, or a store it needs is down",
}

_NULLABLE_STR = {"type": "string", "nullable": True}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
            }
        },
    },
    "Recommendation": {
        "type": "object",
        "required": ["isbn", "score", "source"],
        "properties": {
            "isbn": {"type": "string"},
            "title": _NULLABLE_STR,
            "author": _NULLABLE_STR,
            "image_url": _NULLABLE_STR,
            "score": {"type": "number"},
            "source": {"type": "string", "enum": ["cf", "content", "popular"]},
            "reason": _NULLABLE_STR,
        },
    },
    "RecommendationList": {
        "type": "object",
        "required": ["model_version", "k", "items"],
        "properties": {
            "model_version": {"type": "string"},
            "k": {"type": "integer"},
            "user_id": {"type": "integer"},
            "isbn": {"type": "string"},
            "known_user": {"type": "boolean"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Recommendation"}},
            "variant": {
                "type": "string",
                "enum": ["interleave"],
                "description": "Set on an interleaved list of a rollout (champion and candidate)",
            },
            "model_versions": {
                "type": "object",
                "description": "An interleaved list's two models: champion and candidate",
                "properties": {"champion": {"type": "string"}, "candidate": {"type": "string"}},
            },
            "teams": {
                "type": "array",
                "items": {"type": "integer", "enum": [0, 1]},
                "description": "An interleaved list's model of each item: 0 champion, 1 candidate",
            },
        },
    },
    "Book": {
        "type": "object",
        "required": ["isbn", "title"],
        "properties": {
            "isbn": {"type": "string"},
            "title": _NULLABLE_STR,
            "author": _NULLABLE_STR,
            "year": {"type": "integer", "nullable": True},
            "publisher": _NULLABLE_STR,
            "image_url_s": _NULLABLE_STR,
            "image_url_m": _NULLABLE_STR,
            "image_url_l": _NULLABLE_STR,
            "source": {"type": "string", "enum": ["database", "model"]},
        },
    },
    "BookSearch": {
        "type": "object",
        "required": ["q", "count", "items"],
        "properties": {
            "q": {"type": "string"},
            "count": {"type": "integer"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Book"}},
        },
    },
    "RatingRecorded": {
        "type": "object",
        "required": ["user_id", "isbn", "rating", "status"],
        "properties": {
            "user_id": {"type": "integer"},
            "isbn": {"type": "string"},
            "rating": {"type": "integer"},
            "status": {"type": "string"},
            "attribution": {
                "type": "object",
                "nullable": True,
                "description": "The shown list this rating was attributed to, if any",
                "properties": {
                    "request_id": {"type": "string"},
                    "model_version": {"type": "string"},
                    "kind": {"type": "string", "enum": ["user", "similar", "popular"]},
                    "position": {"type": "integer"},
                },
            },
        },
    },
    "ReloadResult": {
        "type": "object",
        "required": ["pid", "status"],
        "properties": {
            "pid": {"type": "integer"},
            "status": {"type": "string"},
            "version": _NULLABLE_STR,
            "previous": _NULLABLE_STR,
            "error": {"type": "string"},
        },
        "additionalProperties": True,
    },
    "ModelInfo": {"type": "object", "additionalProperties": True},
    "ChampionHistory": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["version", "from", "to", "decision", "decided_by", "reason"],
            "properties": {
                "version": {"type": "string"},
                "from": {"type": "string", "format": "date-time"},
                "to": {"type": "string", "format": "date-time", "nullable": True},
                "decision": {"type": "string", "enum": ["promoted", "rolled back"]},
                "decided_by": {"type": "string"},
                "flow_run_id": _NULLABLE_STR,
                "reason": {"type": "string"},
                "actor": {"type": "string"},
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "model_version": _NULLABLE_STR},
    },
}


def operation(
    summary: str,
    *,
    tag: str,
    response: str | None,
    params: Iterable[Param] = (),
    errors: Iterable[int] = (400, 429),
    body: dict[str, Any] | None = None,
    status: int = 200,
    content_type: str = "application/json",
    auth: bool | str = False,
) -> Callable[[Callable], Callable]:
    """Attach an OpenAPI operation to a view (what ``build_spec`` publishes). ``auth``:
    True for the admin token, ``"apiKey"`` for an API key (writes)."""

    def decorate(view: Callable) -> Callable:
        content: dict[str, Any]
        if response is None:
            content = {content_type: {"schema": {"type": "string"}}}
        else:
            content = {content_type: {"schema": {"$ref": f"#/components/schemas/{response}"}}}
        responses: dict[str, Any] = {
            str(status): {"description": "OK", "headers": _HEADERS, "content": content}
        }
        codes = set(errors) | {405, 414}
        if auth is True:
            codes |= {401, 403}
        elif auth:
            codes |= {401}
        for code in sorted(codes):
            headers = dict(_HEADERS)
            if code in (429, 503):
                headers["Retry-After"] = {"schema": {"type": "string"}}
            if code == 401:
                headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
            if code == 414:
                responses["414"] = {
                    "description": _ERROR_STATUSES[code],
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
                continue
            responses[str(code)] = {
                "description": _ERROR_STATUSES[code],
                "headers": headers,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        op: dict[str, Any] = {
            "summary": summary,
            "description": (view.__doc__ or "").strip(),
            "tags": [tag],
            "operationId": view.__name__,
            "parameters": [p.to_openapi() for p in params],
            "responses": responses,
        }
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        if auth:
            op["security"] = [{"bearerAuth" if auth is True else auth: []}]
        view.__openapi__ = op
        return view

    return decorate


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3 document for every documented route of ``app``."""
    spec = APISpec(
        title="bookrec API",
        version=__version__,
        openapi_version="3.0.3",
        info={"description": "Book recommendations for the Book-Crossing catalogue."},
    )
    spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer", "description": "BOOKREC_ADMIN_TOKEN (/admin)"},
    )
    spec.components.security_scheme(
        "apiKey",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `bookrec apikeys create` (every write)",
        },
    )
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        op = getattr(view, "__openapi__", None)
        if op is None:
            continue
        path = _RULE_PARAM.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = op
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
