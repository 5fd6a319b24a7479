"""The OpenAPI 3 document, generated from the code.

Each view declares its operation with ``@operation(...)`` using the same ``Param``
objects the validators enforce and the name of its body type in ``serving/schemas.py``;
``build_spec`` walks the app's URL map, turns Flask rules into OpenAPI paths, collects
those declarations with apispec and adds the body types' schemas (derived by pydantic).
What is written here by hand is the prose: summaries, status descriptions, headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from apispec import APISpec
from flask import Flask

from bookrec import __version__
from serving.schemas import component_schemas
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
        view.__openapi_body__ = response
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
    schemas = component_schemas()
    for name, schema in schemas.items():
        spec.components.schema(name, schema)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        op = getattr(view, "__openapi__", None)
        if op is None:
            continue
        body = getattr(view, "__openapi_body__", None)
        if body is not None and body not in schemas:
            raise ValueError(f"{rule.rule}: no body type {body!r} in serving/schemas.py")
        path = _RULE_PARAM.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = op
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
