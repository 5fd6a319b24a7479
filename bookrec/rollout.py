"""Judging a candidate by live readers: who sees which variant, the interleaved list, and
the online figures per variant that a rollout's decision reads.

A rollout (``Registry.start_rollout``) names a candidate, the champion at start, two shares
and a salt. Each reader is assigned by a stable hash of (salt, reader id), the same in
every worker and instance: a share ``canary`` of readers sees the candidate's list alone,
a share ``interleave`` sees a team-draft interleaving of both lists (Radlinski, Kurup and
Joachims, "How does clickthrough data reflect retrieval quality?", CIKM 2008), the rest
the champion's. Serving records the variant, the rollout and, for interleaved lists, the
team of every position on the impression; attribution copies them onto the rating event
with the version (and team) that contributed the rated book (``bookrec.online``), so
``figures`` reads the rollout's own rows of three tables and never joins them.

Domain code: no Prefect, no Flask.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

CHAMPION, INTERLEAVE, CANARY = "champion", "interleave", "canary"
VARIANTS = (CHAMPION, INTERLEAVE, CANARY)
TEAM_CHAMPION, TEAM_CANDIDATE = 0, 1
TEAM_KEYS = {TEAM_CHAMPION: "interleave_champion", TEAM_CANDIDATE: "interleave_candidate"}
_SCALE = float(1 << 64)


def bucket(salt: str, user_id: int) -> float:
    """The reader's point in [0, 1): the first 64 bits of sha256("<salt>:<user id>")."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign(user_id: int | None, rollout: Mapping[str, Any] | None) -> str:
    """The variant a reader sees: "canary" when their point is below the canary share,
    "interleave" below canary + interleave, else "champion" (also with no rollout, and for
    anonymous requests). Stable: the same reader gets the same answer for the whole
    rollout, in every process."""
    if rollout is None or user_id is None:
        return CHAMPION
    u = bucket(rollout["salt"], user_id)
    canary = float(rollout.get("canary") or 0.0)
    if u < canary:
        return CANARY
    if u < canary + float(rollout.get("interleave") or 0.0):
        return INTERLEAVE
    return CHAMPION


def team_draft(
    a: list[str],
    b: list[str],
    k: int,
    seed: str,
    *,
    work: Mapping[str, Hashable] | Callable[[str], Hashable] | None = None,
) -> list[tuple[str, int]]:
    """Team-draft interleaving of ranking ``a`` (team 0, the champion) and ``b`` (team 1,
    the candidate): up to ``k`` (item, team) pairs.

    Each round the team with fewer picks so far, or on a tie the one a coin drawn from
    ``seed`` names, adds its highest-ranked item not yet in the list; when one ranking has
    nothing left the other fills. Deterministic for a given seed, never a duplicate. With
    ``work`` (item -> work key, a mapping or a function), an item whose work is already in
    the list is skipped like a duplicate: two editions of one book never both appear, as
    in each model's own list. An empty or missing work key means the item is its own work.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    if work is None:
        key_of: Callable[[str], Hashable] = lambda item: item  # noqa: E731
    else:
        lookup = work.get if isinstance(work, Mapping) else work

        def key_of(item: str) -> Hashable:
            found = lookup(item)
            return ("work", found) if found not in (None, "") else ("item", item)

    rng = random.Random(seed)  # a str seed is hashed with SHA-512: the same in every process
    lists = (list(a), list(b))
    cursor = [0, 0]
    picks = [0, 0]
    taken: set[Hashable] = set()
    out: list[tuple[str, int]] = []

    def next_of(team: int) -> str | None:
        ranking = lists[team]
        while cursor[team] < len(ranking):
            item = ranking[cursor[team]]
            cursor[team] += 1
            key = key_of(item)
            if key not in taken:
                taken.add(key)
                return item
        return None

    exhausted = [False, False]
    while len(out) < k and not all(exhausted):
        if picks[0] < picks[1]:
            team = 0
        elif picks[1] < picks[0]:
            team = 1
        else:
            team = rng.randrange(2)
        if exhausted[team]:
            team = 1 - team
        item = next_of(team)
        if item is None:
            exhausted[team] = True
            continue
        out.append((item, team))
        picks[team] += 1
    return out


# -- figures ----------------------------------------------------------------------------------

_REQUESTS = sa.text(
    """
    SELECT variant, count(*) AS requests,
           count(*) FILTER (WHERE status >= 500) AS errors,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_ms
    FROM api_logs
    WHERE rollout_id = :rollout_id AND logged_at >= :since AND logged_at < :until
    GROUP BY variant
    """
)
# Per reader and variant: lists shown, and for interleaved lists the books each team put in.
_IMPRESSIONS = sa.text(
    """
    SELECT variant, user_id, count(*) AS impressions,
           coalesce(sum(cardinality(array_positions(teams, 0::smallint))), 0) AS shown_0,
           coalesce(sum(cardinality(array_positions(teams, 1::smallint))), 0) AS shown_1
    FROM impressions
    WHERE rollout_id = :rollout_id AND shown_at >= :since AND shown_at < :until
      AND user_id IS NOT NULL
    GROUP BY variant, user_id
    """
)
# Hits per reader, variant and team: one per (list, reader, book), as in ``bookrec online``.
_HITS = sa.text(
    """
    WITH hits AS (
        SELECT DISTINCT ON (impression_request_id, shown_at, user_id, isbn)
               variant, user_id, credited_team
        FROM rating_events
        WHERE rollout_id = :rollout_id AND shown_at >= :since AND shown_at < :until
          AND posted_at >= :since
        ORDER BY impression_request_id, shown_at, user_id, isbn, posted_at
    )
    SELECT variant, user_id, credited_team, count(*) AS hits
    FROM hits GROUP BY variant, user_id, credited_team
    """
)


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def figures(
    engine: Engine,
    rollout: Mapping[str, Any],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The online figures of ``rollout`` over [since, until) (default: from its start to
    its end, or to now while it runs).

    Returns ``{"rollout_id", "since", "until", "variants", "readers"}``:

    - ``variants[v]`` for v in "champion", "interleave", "canary": ``requests``,
      ``errors`` (5xx), ``error_rate``, ``p50_ms``, ``p95_ms`` (recommendation requests
      in ``api_logs``), ``impressions`` (lists), ``readers``, ``hits`` (attributed
      ratings, one per list, reader and book) and ``hit_rate`` (hits / impressions).
    - ``variants["interleave_champion"]`` and ``["interleave_candidate"]``: the two
      teams of the interleaved lists: ``impressions`` (the interleaved lists, the same for
      both), ``shown`` (books the team put in them), ``readers`` (readers with a hit
      credited to the team), ``hits`` (credited to the team) and ``hit_rate``.
    - ``readers["interleave"]``: the paired table, one entry per reader shown an
      interleaved list, as parallel lists ``user_id``, ``impressions``, ``champion`` and
      ``candidate`` (hits credited to each team). ``readers["champion"]`` and
      ``readers["canary"]``: ``user_id``, ``impressions``, ``hits`` per reader of that
      variant, for a bootstrap over readers. Readers are sorted by id.
    """
    since = _parse_time(since) or _parse_time(rollout["started_at"])
    until = _parse_time(until) or _parse_time(rollout.get("ended_at"))
    if until is None:
        until = datetime.now(UTC) + timedelta(seconds=1)
    params = {"rollout_id": rollout["id"], "since": since, "until": until}
    with engine.connect() as conn:
        requests = {r.variant: r for r in conn.execute(_REQUESTS, params)}
        shown = list(conn.execute(_IMPRESSIONS, params))
        hits = list(conn.execute(_HITS, params))

    per_reader: dict[str, dict[int, list[int]]] = {v: {} for v in VARIANTS}
    shown_by_team = [0, 0]
    for row in shown:
        if row.variant not in per_reader:
            continue
        per_reader[row.variant][int(row.user_id)] = [int(row.impressions), 0, 0]
        if row.variant == INTERLEAVE:
            shown_by_team[0] += int(row.shown_0)
            shown_by_team[1] += int(row.shown_1)
    for row in hits:
        if row.variant not in per_reader:
            continue
        entry = per_reader[row.variant].setdefault(int(row.user_id), [0, 0, 0])
        team = row.credited_team if row.variant == INTERLEAVE else 0
        if team in (0, 1):
            entry[1 + int(team)] += int(row.hits)

    variants: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        req = requests.get(variant)
        readers = per_reader[variant]
        impressions = sum(v[0] for v in readers.values())
        n_hits = sum(v[1] + v[2] for v in readers.values())
        n_requests = int(req.requests) if req else 0
        n_errors = int(req.errors) if req else 0
        variants[variant] = {
            "requests": n_requests,
            "errors": n_errors,
            "error_rate": _rate(n_errors, n_requests),
            "p50_ms": float(req.p50_ms) if req and req.p50_ms is not None else None,
            "p95_ms": float(req.p95_ms) if req and req.p95_ms is not None else None,
            "impressions": impressions,
            "readers": sum(1 for v in readers.values() if v[0]),
            "hits": n_hits,
            "hit_rate": _rate(n_hits, impressions),
        }
    inter = per_reader[INTERLEAVE]
    lists = variants[INTERLEAVE]["impressions"]
    for team, name in TEAM_KEYS.items():
        team_hits = sum(v[1 + team] for v in inter.values())
        variants[name] = {
            "impressions": lists,
            "shown": shown_by_team[team],
            "readers": sum(1 for v in inter.values() if v[1 + team]),
            "hits": team_hits,
            "hit_rate": _rate(team_hits, lists),
        }

    def table(variant: str, columns: tuple[str, ...]) -> dict[str, list[int]]:
        rows = sorted(per_reader[variant].items())
        out: dict[str, list[int]] = {"user_id": [uid for uid, _ in rows]}
        for i, column in enumerate(columns):
            out[column] = [values[i] for _, values in rows]
        return out

    champion = table(CHAMPION, ("impressions", "hits"))
    canary = table(CANARY, ("impressions", "hits"))
    return {
        "rollout_id": rollout["id"],
        "since": since.isoformat(),
        "until": until.isoformat(),
        "variants": variants,
        "readers": {
            "interleave": table(INTERLEAVE, ("impressions", "champion", "candidate")),
            "champion": champion,
            "canary": canary,
        },
    }
