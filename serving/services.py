"""The per-app service objects (model holder, cache, catalogue, metrics, API log) and helpers
the blueprints share to reach them and to build JSON responses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from flask import Response, current_app, g, request

from bookrec.settings import Settings
from serving.apikeys import ApiKeys
from serving.apilog import ApiLogWriter
from serving.cache import Cache
from serving.catalog import Catalog
from serving.faults import FaultSwitch
from serving.impressions import ImpressionWriter
from serving.metrics import Metrics
from serving.model_holder import ModelHolder
from serving.search_index import SearchIndexHolder
from serving.validation import ApiError

if TYPE_CHECKING:  # the bodies' types (serving/schemas.py)
    from serving.schemas import Recommendation


@dataclass
class Services:
    """Everything a request may need, created once per app by ``create_app``."""

    settings: Settings
    metrics: Metrics
    cache: Cache
    catalog: Catalog
    holder: ModelHolder
    apilog: ApiLogWriter
    apikeys: ApiKeys
    impressions: ImpressionWriter
    search: SearchIndexHolder
    faults: FaultSwitch = field(default_factory=lambda: FaultSwitch(None))  # test-only
    background: bool = False

    def __post_init__(self) -> None:
        from serving.prewarm import prewarm

        self.holder.prewarm = lambda model, previous: prewarm(self, model, previous)

    def start_background(self) -> None:
        """Start the model loader, pub/sub listener, API-log, impression, metrics, cache
        writer and search index threads."""
        self.background = True
        self.metrics.start()
        self.holder.start()
        self.search.start()
        self.apilog.start()
        self.impressions.start()
        self.cache.start()

    def after_fork(self) -> None:
        """In a freshly forked worker: drop inherited connections, re-mark the model version,
        and start the background threads (threads do not survive a fork)."""
        self.catalog.after_fork()
        self.holder.after_fork()
        if self.background:
            self.start_background()
            # A worker forked late (a restart) may hold an old preloaded model: check now.
            self.holder.request_reload()

    def close(self) -> None:
        """Stop background threads, flush logs and close connections."""
        self.holder.stop()
        self.search.stop()
        self.catalog.close()
        self.apilog.stop()
        self.impressions.stop()
        self.metrics.stop()
        self.cache.close()


def services() -> Services:
    """The services of the current app."""
    return current_app.extensions["bookrec"]


def shown(kind: str, body: bytes, user_id: int | None = None) -> None:
    """Record that this request showed a list (an impression, written in the background),
    with the reader's variant and the rollout while one runs."""
    attrs = vars(g._get_current_object())
    variant = attrs["variant"]
    version = (attrs["version_label"] if variant is not None else None) or attrs["model"].version
    attrs["svc"].impressions.record(
        attrs["request_id"], user_id, version, kind, body, variant, attrs["rollout_id"]
    )


NOT_PLAIN = object()  # plain_query_arg: the query string needs werkzeug's decoding


def plain_query_arg(query: str, name: str) -> str | None | object:
    """The first value of parameter ``name`` in a plain query string (ASCII, no escapes),
    None when it is absent, or ``NOT_PLAIN`` when the string has escapes or non-ASCII text."""
    if not query:
        return None
    if not query.isascii() or "%" in query or "+" in query:
        return NOT_PLAIN
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def query_arg(name: str) -> str | None:
    """The first value of query parameter ``name`` (``request.args.get(name)``), read from
    a plain query string without building ``request.args``."""
    value = plain_query_arg(request.environ.get("QUERY_STRING", ""), name)
    if value is NOT_PLAIN:
        return request.args.get(name)  # escapes or non-ASCII: werkzeug decodes them
    return value


def require_model() -> Any:
    """The model this request uses (one snapshot per request), or a 503 if none is loaded."""
    model = g.get("model")
    if model is None:
        raise ApiError(
            503,
            "model_not_loaded",
            "no model is loaded yet; try again shortly",
            headers={"Retry-After": "5"},
        )
    return model


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: several times faster than ``json`` on these payloads;
    NumPy scalars allowed, non-finite floats become null)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(body: bytes, status: int = 200) -> Response:
    """A response from an already-serialised JSON body (what the cache stores)."""
    return Response(body, status=status, content_type="application/json")


def rec_to_dict(rec: Any) -> Recommendation:
    """A ``Recommendation`` as the API's JSON object."""
    return {
        "isbn": rec.isbn,
        "title": rec.title,
        "author": rec.author,
        "image_url": rec.image_url,
        "score": _finite(rec.score),
        "source": rec.source,
        "reason": rec.reason,
    }


def _finite(value: Any) -> float:
    """A JSON-safe score (NaN and infinities become 0)."""
    number = float(value)
    return round(number, 6) if math.isfinite(number) else 0.0
