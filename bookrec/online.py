"""Online signal: impressions (lists the API showed), ratings attributed to them, and the
per-model report that ``bookrec online`` prints and a canary rollout can judge models by.

An API rating is attributed to the most recent list shown to the same reader within the
window that contained the book; a rating that names the ``request_id`` of a list it came
from is attributed to that list first (also a popular or similar list, which has no reader,
but never another reader's list). The attribution is copied onto the rating event (list
version, kind, shown time, 1-based position), so the report reads one small table and the
impressions' counts, never joins the two. During a rollout (``bookrec.rollout``) the list's
variant and rollout are copied too, with the version credited with the hit: the list's
version, or for an interleaved list (whose version is "<champion>+<candidate>") the version
of the team that contributed the book (``credited_team``: 0 champion, 1 candidate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

KINDS = ("user", "similar", "popular")

# The impression a rating event belongs to (``e`` is the event): its request id if it was
# given and names a list with the book, else the latest list shown to the reader with it.
_MATCH = """
    SELECT i.request_id, i.shown_at, i.model_version, i.kind, i.variant, i.rollout_id,
           array_position(i.isbns, e.isbn) AS position, i.teams
    FROM impressions i
    WHERE i.shown_at <= e.posted_at
      AND i.shown_at > e.posted_at - make_interval(secs => :window_s)
      AND i.isbns @> ARRAY[e.isbn]
      AND (i.user_id = e.user_id
           OR (e.request_id IS NOT NULL AND i.request_id = e.request_id AND i.user_id IS NULL))
      AND (NOT :named_only OR e.request_id IS NULL OR i.request_id = e.request_id)
    ORDER BY (i.request_id IS NOT DISTINCT FROM e.request_id) DESC, i.shown_at DESC
    LIMIT 1
"""
_ATTRIBUTE = sa.text(
    f"""
    WITH m AS (
        SELECT e.id, x.* FROM rating_events e CROSS JOIN LATERAL ({_MATCH}) x
        WHERE e.id = ANY(:ids) AND e.impression_request_id IS NULL
    )
    UPDATE rating_events e
    SET impression_request_id = m.request_id, shown_at = m.shown_at,
        model_version = m.model_version, kind = m.kind, position = m.position,
        variant = m.variant, rollout_id = m.rollout_id,
        credited_team = m.teams[m.position],
        credited_version = CASE WHEN m.teams IS NULL THEN m.model_version
                                ELSE split_part(m.model_version, '+', m.teams[m.position] + 1)
                           END
    FROM m WHERE e.id = m.id
    RETURNING e.id, e.impression_request_id, e.model_version, e.kind, e.position,
              e.variant, e.credited_version, e.credited_team
    """
)
_INSERT_EVENT = sa.text(
    "INSERT INTO rating_events (user_id, isbn, rating, api_key_id, request_id) "
    "VALUES (:user_id, :isbn, :rating, :api_key_id, :request_id) RETURNING id"
)
_IMPRESSIONS = sa.text(
    """
    SELECT model_version, count(*) AS impressions, count(DISTINCT user_id) AS readers
    FROM impressions WHERE shown_at >= :since AND shown_at < :until
    GROUP BY model_version
    """
)
# One hit per (list, reader, book): rating the same book again is not a second hit.
_HITS = sa.text(
    """
    WITH hits AS (
        SELECT DISTINCT ON (impression_request_id, shown_at, user_id, isbn)
               model_version, impression_request_id, shown_at, position
        FROM rating_events
        WHERE shown_at >= :since AND shown_at < :until AND posted_at >= :since
        ORDER BY impression_request_id, shown_at, user_id, isbn, posted_at
    )
    SELECT model_version, count(*) AS attributed, avg(position)::float AS mean_position,
           count(DISTINCT (impression_request_id, shown_at)) FILTER (WHERE position <= :k)
               AS lists_hit
    FROM hits GROUP BY model_version
    """
)


@dataclass(frozen=True)
class Attribution:
    """A rating event and the list it was attributed to (all None: not attributed)."""

    event_id: int
    request_id: str | None = None
    model_version: str | None = None
    kind: str | None = None
    position: int | None = None
    variant: str | None = None
    credited_version: str | None = None
    credited_team: int | None = None

    def to_json(self) -> dict[str, Any] | None:
        """The attributed list as JSON, or None."""
        if self.request_id is None:
            return None
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "model_version": self.model_version,
            "kind": self.kind,
            "position": self.position,
        }
        if self.variant is not None:
            out["variant"] = self.variant
            out["credited_version"] = self.credited_version
        return out


def record_rating_event(
    conn: Connection,
    *,
    user_id: int,
    isbn: str,
    rating: int,
    api_key_id: int | None,
    request_id: str | None,
    window_s: float,
) -> Attribution:
    """Store one API rating as an event and attribute it if a shown list matches (in the
    caller's transaction, beside the rating itself)."""
    params = {
        "user_id": user_id,
        "isbn": isbn,
        "rating": rating,
        "api_key_id": api_key_id,
        "request_id": request_id,
    }
    event_id = int(conn.execute(_INSERT_EVENT, params).scalar_one())
    found = attribute(conn, [event_id], window_s, named_only=True)
    return found.get(event_id) or Attribution(event_id)


def attribute(
    conn: Connection, event_ids: list[int], window_s: float, *, named_only: bool = False
) -> dict[int, Attribution]:
    """Attribute the still unattributed events among ``event_ids``; those attributed now.

    ``named_only``: an event that names a request id matches that list only (it may not be
    written yet); the serving tier falls back to the reader's other lists after a while.
    """
    if not event_ids:
        return {}
    params = {"ids": list(event_ids), "window_s": float(window_s), "named_only": named_only}
    rows = conn.execute(_ATTRIBUTE, params)
    return {
        int(r.id): Attribution(
            int(r.id),
            r.impression_request_id,
            r.model_version,
            r.kind,
            int(r.position),
            r.variant,
            r.credited_version,
            None if r.credited_team is None else int(r.credited_team),
        )
        for r in rows
    }


@dataclass(frozen=True)
class VersionReport:
    """The online figures of one model version over the report's period."""

    model_version: str
    impressions: int
    readers: int
    attributed_ratings: int
    lists_hit: int
    hit_rate: float
    mean_hit_position: float | None


def report(
    engine: Engine, since: datetime, until: datetime | None = None, k: int = 10
) -> list[VersionReport]:
    """Per model version, for lists shown in [since, until): impressions, distinct readers,
    attributed ratings, hit rate@k (share of lists with an attributed rating in their first
    ``k`` places) and the mean 1-based position of the hits. Newest-looking versions first."""
    until = until or datetime.now(since.tzinfo) + timedelta(days=1)
    params = {"since": since, "until": until, "k": k}
    with engine.connect() as conn:
        shown = {r.model_version: r for r in conn.execute(_IMPRESSIONS, params)}
        hits = {r.model_version: r for r in conn.execute(_HITS, params)}
    out = []
    for version in sorted(set(shown) | set(hits), reverse=True):
        s, h = shown.get(version), hits.get(version)
        impressions = int(s.impressions) if s else 0
        lists_hit = int(h.lists_hit) if h else 0
        out.append(
            VersionReport(
                model_version=version,
                impressions=impressions,
                readers=int(s.readers) if s else 0,
                attributed_ratings=int(h.attributed) if h else 0,
                lists_hit=lists_hit,
                hit_rate=lists_hit / impressions if impressions else 0.0,
                mean_hit_position=round(float(h.mean_position), 4) if h else None,
            )
        )
    return out


def report_json(rows: list[VersionReport]) -> list[dict[str, Any]]:
    """The report as JSON-ready dictionaries."""
    return [asdict(r) for r in rows]

