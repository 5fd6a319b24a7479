"""``bookrec.rollout``: reader assignment, team-draft interleaving, and the figures of a
rollout read from a seeded PostgreSQL (api_logs, impressions, attributed rating events)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from bookrec import online, rollout

ROLLOUT = {
    "id": "a" * 32,
    "salt": "0123456789abcdef",
    "candidate": "B",
    "champion": "A",
    "interleave": 0.3,
    "canary": 0.1,
}


# -- assignment --------------------------------------------------------------------------------


def test_assign_follows_the_shares_and_is_stable() -> None:
    counts = Counter(rollout.assign(uid, ROLLOUT) for uid in range(1, 40_001))
    assert abs(counts["canary"] / 40_000 - 0.1) < 0.01
    assert abs(counts["interleave"] / 40_000 - 0.3) < 0.01
    assert abs(counts["champion"] / 40_000 - 0.6) < 0.01
    assert [rollout.assign(u, ROLLOUT) for u in range(1, 200)] == [
        rollout.assign(u, dict(ROLLOUT)) for u in range(1, 200)
    ]
    # The point is the documented hash, so any process (or language) gets the same answer.
    import hashlib

    digest = hashlib.sha256(b"0123456789abcdef:42").digest()
    assert rollout.bucket("0123456789abcdef", 42) == int.from_bytes(digest[:8], "big") / 2**64
    assert rollout.assign(None, ROLLOUT) == "champion"
    assert rollout.assign(42, None) == "champion"
    assert {rollout.assign(u, {**ROLLOUT, "canary": 0.0, "interleave": 0.0}) for u in range(500)} \
        == {"champion"}
    assert {rollout.assign(u, {**ROLLOUT, "canary": 1.0, "interleave": 0.0}) for u in range(500)} \
        == {"canary"}
    # A new salt deals the readers again (a new rollout is a new draw).
    other = {**ROLLOUT, "salt": "fedcba9876543210"}
    assert [rollout.assign(u, ROLLOUT) for u in range(300)] != [
        rollout.assign(u, other) for u in range(300)
    ]
    # Shares grow without moving readers between the two candidate variants' boundaries:
    # a canary reader stays canary when the interleave share grows.
    wider = {**ROLLOUT, "interleave": 0.5}
    assert all(
        rollout.assign(u, wider) == "canary" for u in range(2000) if rollout.assign(u, ROLLOUT) == "canary"
    )


# -- team draft -------------------------------------------------------------------------------


def test_team_draft_known_lists() -> None:
    a = ["a1", "a2", "a3", "s1"]
    b = ["s1", "b1", "b2", "b3"]
    out = rollout.team_draft(a, b, 6, "seed-1")
    assert len(out) == 6 and len({i for i, _ in out}) == 6
    assert out == rollout.team_draft(a, b, 6, "seed-1")  # deterministic
    teams = [t for _, t in out]
    for n in range(1, len(out) + 1):  # picks stay balanced in every prefix
        assert abs(teams[:n].count(0) - teams[:n].count(1)) <= 1
    assert [i for i, t in out if t == 0] == [x for x in a if (x, 0) in out]
    assert [i for i, t in out if t == 1] == [x for x in b if (x, 1) in out]
    # The first two picks are the two lists' heads, in the order of the first coin.
    assert {out[0][0], out[1][0]} == {"a1", "s1"}
    seen = {tuple(rollout.team_draft(a, b, 4, f"seed-{n}")) for n in range(40)}
    assert len(seen) > 1  # the coin matters
    # Identical rankings interleave to the ranking itself.
    same = rollout.team_draft(a, list(a), 4, "x")
    assert [i for i, _ in same] == a
    # One list empty: the other alone, credited to its team.
    assert rollout.team_draft([], b, 3, "x") == [("s1", 1), ("b1", 1), ("b2", 1)]
    assert rollout.team_draft(a, [], 2, "x") == [("a1", 0), ("a2", 0)]
    assert rollout.team_draft(a, b, 0, "x") == []
    assert len(rollout.team_draft(a, b, 100, "x")) == 7  # the union, no more
    with pytest.raises(ValueError):
        rollout.team_draft(a, b, -1, "x")


def test_team_draft_keeps_one_edition_per_work() -> None:
    a = ["hobbit-uk", "dune", "emma"]
    b = ["hobbit-us", "emma-2", "ulysses"]
    works = {"hobbit-uk": "hobbit", "hobbit-us": "hobbit", "emma": "emma", "emma-2": "emma",
             "dune": "dune", "ulysses": ""}  # "" = no title: a work of its own
    for n in range(30):
        out = rollout.team_draft(a, b, 6, f"s{n}", work=works)
        names = [i for i, _ in out]
        assert len({works[i] or i for i in names}) == len(names)
        assert not {"hobbit-uk", "hobbit-us"} <= set(names)
        assert not {"emma", "emma-2"} <= set(names)
        assert len(names) == 4  # hobbit, dune, emma, ulysses
        # works given as a function behave the same
        assert out == rollout.team_draft(a, b, 6, f"s{n}", work=works.get)


# The same 200 examples on every run (a FlakyStrategyDefinition seen once in CI, with these
# pure strategies, could not be reproduced with any seed).
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    a=st.lists(st.sampled_from([f"i{n}" for n in range(15)]), max_size=12, unique=True),
    b=st.lists(st.sampled_from([f"i{n}" for n in range(15)]), max_size=12, unique=True),
    k=st.integers(0, 20),
    seed=st.text(max_size=8),
)
def test_team_draft_properties(a: list[str], b: list[str], k: int, seed: str) -> None:
    out = rollout.team_draft(a, b, k, seed)
    items = [i for i, _ in out]
    assert len(items) == len(set(items)) == min(k, len(set(a) | set(b)))
    assert out == rollout.team_draft(a, b, k, seed)
    for team, ranking in ((0, a), (1, b)):
        mine = [i for i, t in out if t == team]
        assert all(i in ranking for i in mine)
        assert mine == sorted(mine, key=ranking.index)  # each team keeps its own order
    # While both teams still have unseen items, their pick counts differ by at most one.
    teams = [t for _, t in out]
    for n in range(1, len(out) + 1):
        prefix = set(items[:n])
        if set(a) - prefix and set(b) - prefix:
            assert abs(teams[:n].count(0) - teams[:n].count(1)) <= 1
    # Every item of a team's ranking above its lowest pick is in the list (skipped only if
    # the other team took it first).
    for team, ranking in ((0, a), (1, b)):
        mine = [i for i, t in out if t == team]
        if mine:
            for i in ranking[: ranking.index(mine[-1])]:
                assert i in items


# -- figures on a seeded database ---------------------------------------------------------------


def _seed(engine) -> dict:
    """A rollout's rows: api_logs, impressions and ratings with known answers."""
    rid = uuid.uuid4().hex
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    record = {**ROLLOUT, "id": rid, "started_at": start.isoformat()}
    shown = now - timedelta(minutes=10)
    logs = []
    for n in range(10):  # champion: 10 requests, one 500, latencies 10..100
        logs.append(("champion", 500 if n == 3 else 200, 10.0 * (n + 1), rid))
    for status in (200, 503, 500, 200):
        logs.append(("canary", status, 40.0, rid))
    for _ in range(5):
        logs.append(("interleave", 200, 20.0, rid))
    logs.append(("canary", 500, 999.0, uuid.uuid4().hex))  # another rollout's row
    with engine.begin() as conn:
        for n, (variant, status, latency, rollout_id) in enumerate(logs):
            conn.execute(
                sa.text(
                    "INSERT INTO api_logs (logged_at, request_id, method, route, status, "
                    "latency_ms, model_version, variant, rollout_id) VALUES (:t, :r, 'GET', "
                    "'/v1/users/<user_id>/recommendations', :s, :l, 'A', :v, :rid)"
                ),
                {"t": shown, "r": f"log{n}", "s": status, "l": latency, "v": variant,
                 "rid": rollout_id},
            )
        conn.execute(  # before the rollout started: not counted
            sa.text(
                "INSERT INTO api_logs (logged_at, request_id, method, route, status, latency_ms, "
                "variant, rollout_id) VALUES (:t, 'old', 'GET', 'x', 500, 1, 'canary', :rid)"
            ),
            {"t": start - timedelta(minutes=5), "rid": rid},
        )
        lists = [
            ("c1", 9001, "A", "champion", ["x1", "x2", "x3"], None),
            ("c2", 9001, "A", "champion", ["x1", "x4", "x5"], None),
            ("k1", 9002, "B", "canary", ["y1", "y2"], None),
            ("i1", 9003, "A+B", "interleave", ["a1", "b1", "a2", "b2"], [0, 1, 0, 1]),
            ("i2", 9004, "A+B", "interleave", ["b3", "a3"], [1, 0]),
            ("i3", 9005, "A+B", "interleave", ["a4", "b4"], [0, 1]),  # no hit
            ("n1", 9006, "A", None, ["x2"], None),  # outside any rollout
        ]
        for request_id, user, version, variant, isbns, teams in lists:
            conn.execute(
                sa.text(
                    "INSERT INTO impressions (shown_at, request_id, user_id, model_version, "
                    "kind, isbns, variant, rollout_id, teams) VALUES (:t, :r, :u, :m, 'user', "
                    ":i, :v, :rid, :teams)"
                ),
                {"t": shown if request_id != "c1" else shown - timedelta(minutes=1),
                 "r": request_id, "u": user, "m": version, "i": isbns, "v": variant,
                 "rid": rid if variant else None, "teams": teams},
            )
        ratings = [
            (9001, "x2"), (9001, "x2"), (9001, "zz"),  # one hit (twice is one), one elsewhere
            (9002, "y1"),
            (9003, "b1"), (9003, "a2"), (9003, "b2"),
            (9004, "a3"),
            (9006, "x2"),
        ]
        found = {}
        for user, isbn in ratings:
            att = online.record_rating_event(
                conn, user_id=user, isbn=isbn, rating=8, api_key_id=None, request_id=None,
                window_s=86400.0,
            )
            found[(user, isbn)] = att
    return {"record": record, "found": found}


def test_attribution_credits_the_team_that_contributed_the_book(engine) -> None:
    seeded = _seed(engine)
    found = seeded["found"]
    assert found[(9003, "b1")].credited_team == 1 and found[(9003, "b1")].credited_version == "B"
    assert found[(9003, "a2")].credited_team == 0 and found[(9003, "a2")].credited_version == "A"
    assert found[(9004, "a3")].credited_team == 0 and found[(9004, "a3")].position == 2
    assert found[(9004, "a3")].model_version == "A+B"
    assert found[(9002, "y1")].credited_version == "B" and found[(9002, "y1")].credited_team is None
    assert found[(9002, "y1")].variant == "canary"
    assert found[(9001, "x2")].credited_version == "A" and found[(9001, "x2")].variant == "champion"
    assert found[(9001, "x2")].request_id == "c1"
    assert found[(9001, "zz")].request_id is None
    assert found[(9006, "x2")].variant is None and found[(9006, "x2")].credited_version == "A"
    assert found[(9003, "b1")].to_json()["credited_version"] == "B"
    rid = seeded["record"]["id"]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT user_id, isbn, variant, rollout_id, credited_version, credited_team "
                "FROM rating_events WHERE rollout_id = :r ORDER BY id"
            ),
            {"r": rid},
        ).all()
    assert [(r.user_id, r.isbn, r.credited_team) for r in rows] == [
        (9001, "x2", None), (9001, "x2", None), (9002, "y1", None),
        (9003, "b1", 1), (9003, "a2", 0), (9003, "b2", 1), (9004, "a3", 0),
    ]


def test_figures_per_variant_and_per_reader(engine) -> None:
    seeded = _seed(engine)
    figs = rollout.figures(engine, seeded["record"])
    v = figs["variants"]
    assert figs["rollout_id"] == seeded["record"]["id"]
    assert v["champion"]["requests"] == 10 and v["champion"]["errors"] == 1
    assert v["champion"]["error_rate"] == pytest.approx(0.1)
    assert v["champion"]["p50_ms"] == pytest.approx(55.0)
    assert v["champion"]["p95_ms"] == pytest.approx(95.5)
    assert (v["canary"]["requests"], v["canary"]["errors"]) == (4, 2)
    assert v["canary"]["error_rate"] == pytest.approx(0.5)
    assert (v["interleave"]["requests"], v["interleave"]["errors"]) == (5, 0)
    assert v["champion"]["impressions"] == 2 and v["champion"]["readers"] == 1
    assert v["champion"]["hits"] == 1 and v["champion"]["hit_rate"] == pytest.approx(0.5)
    assert (v["canary"]["impressions"], v["canary"]["hits"], v["canary"]["hit_rate"]) == (1, 1, 1.0)
    assert v["interleave"]["impressions"] == 3 and v["interleave"]["readers"] == 3
    assert v["interleave"]["hits"] == 4
    assert v["interleave_champion"] == {
        "impressions": 3, "shown": 4, "readers": 2, "hits": 2, "hit_rate": pytest.approx(2 / 3)
    }
    assert v["interleave_candidate"] == {
        "impressions": 3, "shown": 4, "readers": 1, "hits": 2, "hit_rate": pytest.approx(2 / 3)
    }
    assert figs["readers"]["interleave"] == {
        "user_id": [9003, 9004, 9005],
        "impressions": [1, 1, 1],
        "champion": [1, 1, 0],
        "candidate": [2, 0, 0],
    }
    assert figs["readers"]["champion"] == {"user_id": [9001], "impressions": [2], "hits": [1]}
    assert figs["readers"]["canary"] == {"user_id": [9002], "impressions": [1], "hits": [1]}
    # A window that ends before anything happened counts nothing.
    early = rollout.figures(
        engine, seeded["record"],
        until=datetime.fromisoformat(seeded["record"]["started_at"]) + timedelta(minutes=1),
    )
    assert early["variants"]["champion"]["requests"] == 0
    assert early["variants"]["champion"]["p50_ms"] is None
    assert early["readers"]["interleave"]["user_id"] == []


def test_figures_read_the_rollout_indexes(engine) -> None:
    """The rollout's rows are found through the partial (rollout_id, time) indexes."""
    seeded = _seed(engine)
    rid = seeded["record"]["id"]
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        for table, column in (("impressions", "shown_at"), ("rating_events", "shown_at"),
                              ("api_logs", "logged_at")):
            plan = "\n".join(
                r[0] for r in conn.execute(
                    sa.text(
                        f"EXPLAIN SELECT count(*) FROM {table} WHERE rollout_id = :r "
                        f"AND {column} >= now() - interval '1 day'"
                    ),
                    {"r": rid},
                )
            )
            assert f"ix_{table}_rollout" in plan or "_rollout_" in plan or "rollout_id_" in plan, plan
