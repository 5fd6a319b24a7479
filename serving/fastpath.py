"""Cached reads answered before Flask: a list or a book this worker holds in memory.

Under load most API requests are one of four reads whose answer a worker already holds,
serialised, in its in-process cache: the popular list, a reader's recommendations, a book's
similar books and a book's details. For those, Flask's request context, URL matching,
hooks and ``Response`` object are most of the work (under gunicorn, about half of the
worker's time holding the GIL on a cached request). ``CachedReads`` sits in front of the
Flask app and answers such a request itself when everything it needs is in memory, and
hands every other request to Flask untouched.

It answers only when all of these hold, and otherwise Flask answers as it always does:
- ``GET`` of one of the four routes, an ASCII path, a plain query string (``k`` as digits);
- no ``Authorization`` header (a keyed request goes through the key check in Flask);
- a model is loaded; for a reader's list, no rollout is running and the reader's
  generation is held in this worker's copy (``serving/generations.py``; with Redis only);
- the body is in this worker's memory cache under the key the view would use, and Redis,
  if configured, is not being bypassed by its breaker;
- the client's rate limit admits the request (a refusal is handed to Flask with the
  verdict, so the hit is counted once and Flask writes the 429).

What it does for an answer is what the Flask path does for a cache hit: the same body and
headers (``Content-Type``, ``Content-Length``, ``X-Model-Version``, ``X-Request-Id``), the
cache-hit and request metrics, the API-log record and the impression.
``tests/serving/test_fastpath.py`` checks both paths give the same responses and records.
``BOOKREC_FAST_CACHED_READS=false`` turns it off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from serving import validation as v
from serving.apilog import now
from serving.cache import Cache
from serving.services import NOT_PLAIN, plain_query_arg
from serving.validation import ApiError

log = logging.getLogger(__name__)

RATE_VERDICT = "bookrec.rate_verdict"  # environ key: (allowed, retry) counted here already

_USER = re.compile(r"/v1/users/([^/]+)/recommendations")
_SIMILAR = re.compile(r"/v1/books/([^/]+)/similar")
_BOOK = re.compile(r"/v1/books/([^/]+)")

# route -> (the Flask rule it stands for, cache kind, impression kind or None)
_ROUTES = {
    "popular": ("/v1/books/popular", "popular", "popular"),
    "user": ("/v1/users/<user_id>/recommendations", "user", "user"),
    "similar": ("/v1/books/<isbn>/similar", "similar", "similar"),
    "book": ("/v1/books/<isbn>", "book", None),
}


class CachedReads:
    """WSGI middleware: cached reads from memory, everything else to ``app``."""

    def __init__(self, app: Callable, svc: Any, limits: Any, request_id: Callable[[dict], str]):
        """``svc``: the app's ``Services``; ``limits``: its ``RateLimits``; ``request_id``:
        the request's id from its environ (as the Flask path takes it)."""
        self.app = app
        self.svc = svc
        self.limits = limits
        self.request_id = request_id

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = now()
        try:
            found = self._lookup(environ)
        except Exception:  # noqa: BLE001 - anything unexpected: Flask answers as usual
            log.exception("cached read lookup failed; answered by Flask")
            found = None
        if found is None:
            return self.app(environ, start_response)
        route, user_id, model, body = found
        allowed, retry = self.limits.hit(environ.get("REMOTE_ADDR") or "unknown")
        if not allowed:
            environ[RATE_VERDICT] = (allowed, retry)
            return self.app(environ, start_response)
        try:
            return self._answer(environ, start_response, started, route, user_id, model, body)
        except Exception:  # noqa: BLE001 - Flask answers; the hit is not counted twice
            log.exception("cached read failed; answered by Flask")
            environ[RATE_VERDICT] = (True, 0)
            return self.app(environ, start_response)

    def _lookup(self, environ: dict) -> tuple[str, int | None, Any, bytes] | None:
        """(route, reader id, model, body) when this request is a cached read held here."""
        if environ.get("REQUEST_METHOD") != "GET" or "HTTP_AUTHORIZATION" in environ:
            return None
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/v1/") or not path.isascii():
            return None
        svc = self.svc
        model = svc.holder.model
        if model is None or svc.faults.rates:
            return None
        cache = svc.cache
        raw_k = plain_query_arg(environ.get("QUERY_STRING", ""), "k")
        if raw_k is NOT_PLAIN:
            return None  # werkzeug decodes the query
        try:
            k = v.parse_k(raw_k)
            user_id = None
            if path == "/v1/books/popular":
                route = "popular"
                key = Cache.key(model.version, "popular", k)
            elif (m := _USER.fullmatch(path)) is not None:
                route = "user"
                user_id = v.parse_user_id(m.group(1))
                variants = svc.holder.variants
                if variants is not None and variants.candidate.version != model.version:
                    return None  # a rollout assigns the reader a variant: Flask
                generation = cache.held_user_generation(user_id)
                if generation is None:
                    return None
                key = Cache.key(model.version, "user", user_id, k, "r" + generation)
            elif (m := _SIMILAR.fullmatch(path)) is not None:
                route = "similar"
                key = Cache.key(model.version, "similar", v.parse_isbn(m.group(1)), k)
            elif (m := _BOOK.fullmatch(path)) is not None:
                route = "book"
                key = Cache.key(model.version, "book", v.parse_isbn(m.group(1)))
            else:
                return None
        except ApiError:
            return None  # Flask writes the error
        body = cache.held(key)
        if body is None:
            return None
        return route, user_id, model, body

    def _answer(self, environ, start_response, started, route, user_id, model, body):
        svc = self.svc
        rule, kind, shown = _ROUTES[route]
        request_id = self.request_id(environ)
        version = model.version
        svc.metrics.cache_lookup(kind, True)
        if shown is not None:
            svc.impressions.record(request_id, user_id, version, shown, body, None, None)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Model-Version", version),
                ("X-Request-Id", request_id),
            ],
        )
        elapsed = now() - started
        svc.metrics.observe_request(rule, "GET", 200, elapsed, None)
        svc.apilog.request(
            request_id=request_id,
            method="GET",
            route=rule,
            path=environ.get("PATH_INFO", ""),
            status=200,
            elapsed=elapsed,
            version=version,
            source="cache",
            user_id=user_id,
            client=environ.get("REMOTE_ADDR"),
            variant=None,
            rollout_id=None,
        )
        return [body]

