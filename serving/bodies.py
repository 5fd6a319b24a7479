"""Response bodies computed from a model: shared by the views and by the cache pre-warming
that runs before a reload swaps models (``serving/prewarm.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bookrec.models.works import work_key
from bookrec.rollout import team_draft
from serving.catalog import CatalogUnavailable
from serving.services import Services, dumps, rec_to_dict

if TYPE_CHECKING:  # the bodies' types (serving/schemas.py)
    from serving.schemas import RecommendationList


def popular(model: Any, k: int) -> bytes:
    """The popular list of ``model``."""
    items = [rec_to_dict(r) for r in model.popular(k)]
    payload: RecommendationList = {"model_version": model.version, "k": k, "items": items}
    return dumps(payload)


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
    payload: RecommendationList = {
        "model_version": model.version,
        "isbn": isbn,
        "k": k,
        "items": [rec_to_dict(r) for r in recs],
    }
    return dumps(payload), cacheable


def _history(svc: Services, user_id: int, count: bool) -> tuple[dict[str, int], bool]:
    """The reader's ratings in PostgreSQL and whether an answer built on them may be cached
    (not when PostgreSQL is down: then the training history alone is used)."""
    try:
        return svc.catalog.user_ratings(user_id), True
    except CatalogUnavailable:
        if count:
            svc.metrics.fallbacks.labels(reason="postgres_down").inc()
        return {}, False


def _known(svc: Services, models: tuple[Any, ...], history: dict, user_id: int, count: bool):
    known = bool(history) or any(bool(m.knows_user(user_id)) for m in models)
    if not known and count:
        svc.metrics.fallbacks.labels(reason="unknown_user").inc()
    return known


def user(
    svc: Services, model: Any, user_id: int, k: int, count: bool = True
) -> tuple[bytes, bool, str]:
    """A user's recommendations: (body, cacheable, source).

    Fold-in: the reader's ratings as they are now in PostgreSQL (API writes and ingests
    since the model's snapshot) are added to their training history and scored by the
    model (``recommend_history``). Without PostgreSQL the training history alone is used
    and the answer is not cached. ``count`` says whether the fallbacks are counted in the
    metrics (not for pre-warming)."""
    history, cacheable = _history(svc, user_id, count)
    known = _known(svc, (model,), history, user_id, count)
    recs = model.recommend_history(history, k=k, user_id=user_id)
    payload: RecommendationList = {
        "model_version": model.version,
        "user_id": user_id,
        "k": k,
        "known_user": known,
        "items": [rec_to_dict(r) for r in recs],
    }
    return dumps(payload), cacheable, "model" if known else "popular"


def _work(rec: Any) -> str:
    """The work key of a recommended book (editions of one book share it)."""
    return work_key(rec.title, rec.author)


def interleaved(
    svc: Services, champion: Any, candidate: Any, rollout: dict, user_id: int, k: int
) -> tuple[bytes, bool, str]:
    """A user's team-draft interleaved list of ``champion`` (team 0) and ``candidate``
    (team 1): (body, cacheable, source).

    Both lists are folded in from the same ratings (read once) with the same exclusions;
    the draft's coin is seeded by the rollout's salt and the reader, so a reader sees the
    same interleaving of the same two lists. ``teams`` in the body gives the team of each
    position (impressions record it; attribution credits the team of the rated book)."""
    history, cacheable = _history(svc, user_id, True)
    known = _known(svc, (champion, candidate), history, user_id, True)
    lists = [m.recommend_history(history, k=k, user_id=user_id) for m in (champion, candidate)]
    by_isbn = [{r.isbn: r for r in recs} for recs in lists]
    works = {r.isbn: _work(r) for recs in lists for r in recs}
    drafted = team_draft(
        [r.isbn for r in lists[0]],
        [r.isbn for r in lists[1]],
        k,
        f"{rollout['salt']}:{user_id}",
        work=works,
    )
    payload: RecommendationList = {
        "model_version": champion.version,
        "variant": "interleave",
        "model_versions": {"champion": champion.version, "candidate": candidate.version},
        "user_id": user_id,
        "k": k,
        "known_user": known,
        "items": [rec_to_dict(by_isbn[team][isbn]) for isbn, team in drafted],
        "teams": [team for _, team in drafted],
    }
    return dumps(payload), cacheable, "model" if known else "popular"
