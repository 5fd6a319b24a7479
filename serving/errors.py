"""Every error is JSON with a status and a message naming the field; no stack traces."""

from __future__ import annotations

import logging

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from serving.services import dumps
from serving.validation import ApiError

log = logging.getLogger(__name__)


def _error_response(status: int, code: str, message: str, headers=None, field=None) -> Response:
    err = ApiError(status, code, message, field=field, headers=dict(headers or {}))
    response = Response(dumps(err.to_dict()), status=status, mimetype="application/json")
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn ``ApiError``, HTTP errors and unexpected exceptions into JSON responses."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return _error_response(exc.status, exc.code, exc.message, exc.headers, exc.field)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if exc.response is not None:
            headers = {k: v for k, v in exc.response.headers.items() if k in ("Allow",)}
        elif status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        code = (exc.name or "error").lower().replace(" ", "_")
        return _error_response(status, code, exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in request %s", g.get("request_id"))
        return _error_response(500, "internal_error", "internal error; see the server log")
