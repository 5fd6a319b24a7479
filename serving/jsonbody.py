"""Request bodies: any body the API cannot use is a 400 or 413 JSON error, never a 5xx.

The standard library parser recurses once per nesting level, so ``[[[...]]]`` 5,000 deep
(10 KB) raised ``RecursionError``, which Flask does not treat as a parse failure: a 500.
orjson parses iteratively with a nesting limit (1,024) and reports every failure as a
``ValueError``, which ``request.get_json`` turns into a 400 like any other bad JSON.

A body over ``MAX_CONTENT_LENGTH`` with a ``Content-Length`` is refused by werkzeug with
413 before it is read. A chunked body has no length, and werkzeug then reads exactly up to
the limit and silently drops the rest (a truncated body, so a misleading 400); the WSGI
wrapper below reads one byte more so that werkzeug's own check answers 413.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider


class RequestJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson's bounded parser for ``loads``."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse ``s``; every failure (nesting too deep included) is a ``ValueError``
        (``orjson.JSONDecodeError``)."""
        return orjson.loads(s)


class BoundedChunkedBody:
    """WSGI middleware: a chunked body is read up to ``max_bytes + 1`` and handed on with
    its length, so an oversized one meets werkzeug's ``Content-Length`` check (413)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Buffer a length-less (chunked) body, bounded; pass everything else through."""
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get(
            "HTTP_TRANSFER_ENCODING", ""
        ).lower():
            data = environ["wsgi.input"].read(self.max_bytes + 1)
            environ["wsgi.input"] = io.BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
            del environ["HTTP_TRANSFER_ENCODING"]  # de-chunked; werkzeug ignores the length else
        return self.app(environ, start_response)
