"""The Flask app factory: settings, services, hooks, rate limits and blueprints.

``create_app`` is the only way to get an app; nothing happens at import time. Under
gunicorn each worker builds its own app (see ``serving/gunicorn_conf.py``), loads the
champion model and starts its background threads (model loader, pub/sub listener,
API-log writer).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from typing import Any

from flask import Flask, Response, current_app, g, request

from bookrec.settings import Settings, get_settings
from serving import admin, books, health, pages, ratings, recommendations
from serving.apikeys import ApiKeys
from serving.apilog import ApiLogWriter, now
from serving.cache import Cache
from serving.catalog import Catalog
from serving.errors import register_error_handlers
from serving.fastpath import CachedReads
from serving.faults import FaultSwitch
from serving.impressions import ImpressionWriter
from serving.jsonbody import BoundedChunkedBody, RequestJSONProvider
from serving.metrics import Metrics
from serving.model_holder import ModelHolder
from serving.ratelimit import init_rate_limits
from serving.search_index import SearchIndexHolder
from serving.services import Services
from serving.validation import REQUEST_ID

_REQUEST_ID = REQUEST_ID  # fullmatch: no trailing newline


class RequestIds:
    """32-hex-digit request ids: a random 64-bit prefix per process (drawn again in a forked
    child) and a counter. Unique across workers without a ``getrandom`` system call per
    request (~15 us here, against ~0.5 us for this)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def __call__(self) -> str:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._prefix = os.urandom(8).hex()
                    self._counter = itertools.count()
                    self._pid = os.getpid()
        return f"{self._prefix}{next(self._counter):016x}"


_new_request_id = RequestIds()


def request_id_of(environ: dict) -> str:
    """The request's id: a valid incoming ``X-Request-Id`` (read from the environ, without
    ``EnvironHeaders``), else a new one."""
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    return incoming if incoming and _REQUEST_ID.fullmatch(incoming) else _new_request_id()


class _App(Flask):
    """Flask with its views, hooks and error handlers called as they are: the stock
    ``ensure_sync`` inspects each of them on every request for ``async def`` (~6 calls per
    function, 3-4 per request). The API has none; ``create_app`` checks that once."""

    def ensure_sync(self, func):
        """``func`` itself (``_check_sync`` has made sure it is not a coroutine function)."""
        return func


def _check_sync(app: Flask) -> None:
    """Refuse an ``async def`` view, hook or error handler (``_App`` would not run it)."""
    from inspect import iscoroutinefunction

    functions = list(app.view_functions.values())
    for registry in (app.before_request_funcs, app.after_request_funcs,
                     app.teardown_request_funcs):
        functions += [f for funcs in registry.values() for f in funcs]
    for handlers in app.error_handler_spec.values():
        for by_code in handlers.values():
            functions += list(by_code.values())
    coroutines = [f for f in functions if iscoroutinefunction(f)]
    if coroutines:
        raise TypeError(f"async functions are not supported by the API app: {coroutines}")


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None):
    """Build the API app.

    ``test_config`` may set Flask config keys and ``BOOKREC_BACKGROUND`` (False: no
    background threads; the model is still loaded once, synchronously).
    """
    settings = settings or get_settings()
    app = _App(__name__)
    app.json = RequestJSONProvider(app)  # request bodies: bounded nesting, errors are 400s
    app.config.update(JSON_SORT_KEYS=False, BOOKREC_BACKGROUND=True, MAX_CONTENT_LENGTH=64 * 1024)
    if test_config:
        app.config.update(test_config)
    _configure_logging()

    metrics = Metrics()
    catalog = Catalog(settings)
    svc = Services(
        settings=settings,
        metrics=metrics,
        cache=Cache(settings, metrics),
        catalog=catalog,
        holder=ModelHolder(settings, metrics),
        apilog=ApiLogWriter(settings, metrics, catalog.engine),
        apikeys=ApiKeys(settings.api_key_cache_ttl_s, catalog.engine),
        impressions=ImpressionWriter(settings, metrics, catalog.engine),
        search=SearchIndexHolder(catalog.engine, settings.search_refresh_s, metrics),
        faults=FaultSwitch(settings.test_fault_version_error_rate),
    )
    app.extensions["bookrec"] = svc
    limits = init_rate_limits(app, settings, metrics, svc.apikeys)
    if settings.fast_cached_reads:
        app.wsgi_app = CachedReads(app.wsgi_app, svc, limits, request_id_of)
    app.wsgi_app = BoundedChunkedBody(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    if settings.trusted_proxies:
        # The client is the address the trusted hops saw; with 0 hops the headers are
        # ignored, so a client cannot choose its own address (rate limits, logs).
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    register_error_handlers(app)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    for blueprint in (recommendations.bp, books.bp, ratings.bp, admin.bp, health.bp, pages.bp):
        app.register_blueprint(blueprint)
    _check_sync(app)

    svc.holder.check(reason="startup")
    if app.config["BOOKREC_BACKGROUND"]:
        svc.start_background()
    return app


def create_worker_app():
    """The app of one gunicorn worker: its background threads start in ``post_worker_init``
    (``Services.after_fork``, which also copes with a preloading master), and the loaded
    objects are frozen out of the garbage collector's scans."""
    import gc

    app = create_app(test_config={"BOOKREC_BACKGROUND": False})
    app.extensions["bookrec"].background = True
    gc.freeze()
    return app


def _configure_logging() -> None:
    """One JSON line per request on stdout (the ``bookrec.api`` logger, message only)."""
    logger = logging.getLogger("bookrec.api")
    if not any(getattr(h, "_bookrec", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._bookrec = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _start_request() -> None:
    """Stamp the request: start time, request id, and the model snapshot it will use."""
    ctx = g._get_current_object()  # plain objects: the proxies cost a lookup per access
    environ = request._get_current_object().environ
    svc = current_app.extensions["bookrec"]
    holder = svc.holder
    # One update of the namespace's dict: ``g`` sets attributes through a Python-level
    # ``__setattr__``, a call per attribute.
    vars(ctx).update(
        started=now(),
        request_id=request_id_of(environ),
        svc=svc,
        model=holder.model,
        variants=holder.variants,  # the rollout and its candidate, or None
        variant=None,  # set by a view that assigned the reader to a variant
        rollout_id=None,
        version_label=None,  # set when the answer is not one model's (interleaving)
        source=None,
        user_id=None,
    )


def _finish_request(response: Response) -> Response:
    """Add the version and request-id headers, count the request, log it."""
    ctx = g._get_current_object()
    req = request._get_current_object()
    attrs = vars(ctx)
    started = attrs.get("started")  # None: refused before _start_request ran
    if started is not None:
        svc = attrs["svc"]
        model = attrs["model"]
        variant = attrs["variant"]
    else:
        svc = current_app.extensions["bookrec"]
        model = svc.holder.model
        variant = None
    version = model.version if model is not None else "none"
    if variant is not None:
        version = attrs["version_label"] or version
    request_id = attrs.get("request_id") or _new_request_id()
    headers = response.headers
    # Headers the response cannot have yet (no view or error handler sets them): ``add``
    # appends, where item assignment scans the list for an existing value first.
    headers.add("X-Model-Version", version)
    headers.add("X-Request-Id", request_id)
    if variant is not None:
        headers.add("X-Variant", variant)
    rule = req.url_rule
    route = rule.rule if rule is not None else "<unmatched>"
    elapsed = now() - started if started is not None else 0.0
    status = response.status_code
    method = req.method
    svc.metrics.observe_request(route, method, status, elapsed, variant)
    if status == 429:
        # Refusals are counted (bookrec_rate_limited_total and the request counter), not
        # logged one by one: a flood must not grow the logs it is refused from.
        return response
    svc.apilog.request(
        request_id=request_id,
        method=method,
        route=route,
        path=req.path,
        status=status,
        elapsed=elapsed,
        version=version,
        source=attrs.get("source"),
        user_id=attrs.get("user_id"),
        client=req.remote_addr,
        variant=variant,
        rollout_id=attrs.get("rollout_id"),
    )
    return response
