"""Response bodies computed from a model: shared by the views and by the cache pre-warming
that runs before a reload swaps models (``serving/prewarm.py``)."""

from __future__ import annotations

from typing import Any

from serving.catalog import CatalogUnavailable
from serving.services import Services, dumps, rec_to_dict


def popular(model: Any, k: int) -> bytes:
    """The popular list of ``model``."""
    items = [rec_to_dict(r) for r in model.popular(k)]
    return dumps({"model_version": model.version, "k": k, "items": items})


def similar(model: Any, isbn: str, k: int, catalog: Any = None) -> bytes:
    """Books similar to ``isbn`` (a canonical ISBN); KeyError if the model does not know it."""
    return similar_body(model, isbn, k, catalog)[0]


def similar_body(model: Any, isbn: str, k: int, catalog: Any = None) -> tuple[bytes, bool]:
    """``(body, cacheable)`` of the books similar to ``isbn``.

    A book ingested after the model was trained (or rated then, but catalogued later) is
    read from PostgreSQL through ``catalog`` and its text transformed with the model's
    stored vocabulary (``model.needs_book_row``). KeyError if the model does not know the
    ISBN and the catalogue has no row for it (or the artifact has no vocabulary). With
    PostgreSQL down the model answers alone, not cached."""
    book, cacheable = None, True
    if catalog is not None and model.needs_book_row(isbn):
        try:
            book = catalog.book(isbn)
        except CatalogUnavailable:
            cacheable = False
    recs = model.similar(isbn, k=k, book=book)
    payload = {
        "model_version": model.version,
        "isbn": isbn,
        "k": k,
        "items": [rec_to_dict(r) for r in recs],
    }
    return dumps(payload), cacheable


def user(
    svc: Services, model: Any, user_id: int, k: int, count: bool = True
) -> tuple[bytes, bool, str]:
    """A user's recommendations: (body, cacheable, source).

    Fold-in: the reader's ratings as they are now in PostgreSQL (API writes and ingests
    since the model's snapshot) are added to their training history and scored by the
    model (``recommend_history``). Without PostgreSQL the training history alone is used
    and the answer is not cached. ``count`` says whether the fallbacks are counted in the
    metrics (not for pre-warming)."""
    history: dict[str, int] = {}
    cacheable = True
    try:
        history = svc.catalog.user_ratings(user_id)
    except CatalogUnavailable:
        if count:
            svc.metrics.fallbacks.labels(reason="postgres_down").inc()
        cacheable = False
    known = bool(history) or bool(model.knows_user(user_id))
    if not known and count:
        svc.metrics.fallbacks.labels(reason="unknown_user").inc()
    recs = model.recommend_history(history, k=k, user_id=user_id)
    payload = {
        "model_version": model.version,
        "user_id": user_id,
        "k": k,
        "known_user": known,
        "items": [rec_to_dict(r) for r in recs],
    }
    return dumps(payload), cacheable, "model" if known else "popular"
