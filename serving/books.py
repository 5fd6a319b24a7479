"""Book endpoints: similar books, popular books, one book's details, and search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint, g, request

from serving import bodies
from serving import validation as v
from serving.cache import Cache
from serving.catalog import CatalogUnavailable, QueryFailed
from serving.openapi import operation
from serving.services import dumps, json_response, query_arg, require_model, services, shown

if TYPE_CHECKING:  # the bodies' types (serving/schemas.py)
    from serving.schemas import Book

bp = Blueprint("books", __name__)
_IMAGE_KEYS = ("image_url_s", "image_url_m", "image_url_l")


@bp.get("/v1/books/<isbn>/similar")
@operation(
    "Books similar to a book",
    tag="books",
    response="RecommendationList",
    params=[v.ISBN, v.K],
    errors=(400, 404, 429, 503),
)
def similar_books(isbn: str):
    """Books that readers of this book also liked, blended with content similarity."""
    canonical = v.parse_isbn(isbn)
    k = v.parse_k(query_arg("k"))
    model = require_model()
    svc = services()
    g.source = "cache"

    def compute() -> tuple[bytes, bool]:
        # A book the model was not trained with is read from PostgreSQL and gets content
        # neighbours from its text (the model's stored vocabulary).
        try:
            body, cacheable = bodies.similar_body(model, canonical, k, svc.catalog)
        except KeyError:
            raise v.ApiError(
                404, "unknown_book", f"isbn: {canonical} is not in the model", field="isbn"
            ) from None
        if not cacheable:
            svc.metrics.fallbacks.labels(reason="postgres_down").inc()
        g.source = "model"
        return body, cacheable

    key = Cache.key(model.version, "similar", canonical, k)
    body = svc.cache.get_or_compute("similar", key, compute)
    shown("similar", body)
    return json_response(body)


@bp.get("/v1/books/popular")
@operation(
    "Most popular books",
    tag="books",
    response="RecommendationList",
    params=[v.K],
    errors=(400, 429, 503),
)
def popular_books():
    """The most popular books (Bayesian-averaged ratings weighted by how many readers)."""
    k = v.parse_k(query_arg("k"))
    model = require_model()
    g.source = "cache"

    def compute() -> tuple[bytes, bool]:
        g.source = "model"
        return bodies.popular(model, k), True

    key = Cache.key(model.version, "popular", k)
    body = services().cache.get_or_compute("popular", key, compute)
    shown("popular", body)
    return json_response(body)


def _book_json(row: dict[str, Any], source: str) -> Book:
    book = {key: row.get(key) for key in ("isbn", "title", "author", "year", "publisher")}
    for key in _IMAGE_KEYS:
        book[key] = row.get(key)
    year = book["year"]
    book["year"] = int(year) if year is not None else None
    book["source"] = source
    return book


@bp.get("/v1/books/<isbn>")
@operation(
    "One book's details",
    tag="books",
    response="Book",
    params=[v.ISBN],
    errors=(400, 404, 429),
)
def book_details(isbn: str):
    """Title, author, year, publisher and cover URLs from the catalogue.

    With PostgreSQL down, the model's own copy of the metadata answers.
    """
    canonical = v.parse_isbn(isbn)
    svc = services()
    model = g.get("model")
    g.source = "cache"

    def compute() -> tuple[bytes, bool]:
        try:
            row = svc.catalog.book(canonical)
            source, cacheable = "database", True
        except CatalogUnavailable:
            svc.metrics.fallbacks.labels(reason="postgres_down").inc()
            row = model.book(canonical) if model is not None else None
            source, cacheable = "model", False
        if row is None:
            raise v.ApiError(404, "unknown_book", f"isbn: no book {canonical}", field="isbn")
        g.source = source
        return dumps(_book_json(row, source)), cacheable

    version = model.version if model is not None else "none"
    key = Cache.key(version, "book", canonical)
    return json_response(svc.cache.get_or_compute("book", key, compute))


@bp.get("/v1/books")
@operation(
    "Search books by title or author",
    tag="books",
    response="BookSearch",
    params=[v.QUERY],
    errors=(400, 429, 503),
)
def search_books():
    """Up to 20 books whose title and author hold every word of the text (the last as a
    prefix): titles starting with the text first, then by word-match rank.

    Found by the worker's in-memory index once it is built (the rows are then read from
    PostgreSQL by ISBN), by PostgreSQL's full-text index before that."""
    text = v.parse_query(request.args.get("q"))
    svc = services()
    g.source = "cache"

    def compute() -> tuple[bytes, bool]:
        index = svc.search.index  # None until built: the full-text query in PostgreSQL
        try:
            rows = svc.catalog.search(text, index=index)
        except QueryFailed:  # e.g. the search statement timeout: this request only
            raise v.ApiError(
                503,
                "search_failed",
                "q: this search could not be answered in time; try a more specific text",
                field="q",
                headers={"Retry-After": "1"},
            ) from None
        except CatalogUnavailable:
            svc.metrics.fallbacks.labels(reason="postgres_down").inc()
            raise v.ApiError(
                503,
                "search_unavailable",
                "search needs PostgreSQL, which is not answering",
                headers={"Retry-After": "5"},
            ) from None
        g.source = "database" if index is None else "index"
        svc.metrics.searches.labels(path=g.source).inc()
        items = [_book_json(r, "database") for r in rows]
        return dumps({"q": text, "count": len(items), "items": items}), True

    key = Cache.key("catalog", "search", text.casefold())
    return json_response(svc.cache.get_or_compute("search", key, compute))
