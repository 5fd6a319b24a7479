"""Impressions, attribution and the online report, on a real model, PostgreSQL and gunicorn."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa

from bookrec import online, partitions
from bookrec.settings import Settings
from cli.main import main
from serving.impressions import ImpressionWriter
from serving.metrics import Metrics
from tests.utils.frames import genre_isbns
from tests.utils.serving import metric_total


def _flush(client) -> None:
    client.application.extensions["bookrec"].impressions.flush()


def _rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def _age(engine, request_id: str, days: float) -> None:
    """Move an impression ``days`` into the past."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE impressions SET shown_at = shown_at - make_interval(secs => :s) "
                "WHERE request_id = :r"
            ),
            {"s": days * 86400, "r": request_id},
        )


def _rate(client, key_headers, user: int, isbn: str, **extra) -> dict:
    response = client.post(
        f"/v1/users/{user}/ratings", json={"isbn": isbn, "rating": 8, **extra}, headers=key_headers
    )
    assert response.status_code == 201, response.data
    return response.get_json()


def test_every_list_shown_is_remembered_cached_or_not(client, engine, model_set):
    version = model_set.versions[0]
    isbn = genre_isbns("dragon")[0]
    paths = {
        "user": "/v1/users/3/recommendations?k=5",
        "similar": f"/v1/books/{isbn}/similar?k=4",
        "popular": "/v1/books/popular?k=3",
    }
    shown = {}
    for kind, path in paths.items():
        for n in range(2):  # the second answer comes from the cache
            response = client.get(path, headers={"X-Request-Id": f"{kind}-{n}"})
            assert response.status_code == 200
            shown[f"{kind}-{n}"] = (kind, [i["isbn"] for i in response.get_json()["items"]])
    assert client.get("/v1/books/popular?k=0").status_code == 400  # no list, no impression
    _flush(client)
    rows = _rows(engine, "SELECT request_id, user_id, model_version, kind, isbns FROM impressions")
    assert {r.request_id: (r.kind, list(r.isbns)) for r in rows} == shown
    assert {r.model_version for r in rows} == {version}
    assert {(r.kind, r.user_id) for r in rows} == {
        ("user", 3),
        ("similar", None),
        ("popular", None),
    }
    metrics = client.get("/metrics").get_data(as_text=True)
    for kind in paths:
        assert metric_total(metrics, "bookrec_impressions_total", kind=kind) == 2
    assert metric_total(metrics, "bookrec_impressions_total", model_version=version) == 6


def test_ratings_are_attributed_inside_the_window_only(client, engine, key_headers):
    first = client.get("/v1/users/3/recommendations?k=5", headers={"X-Request-Id": "old"})
    old_list = [i["isbn"] for i in first.get_json()["items"]]
    _flush(client)
    _age(engine, "old", days=8)  # the default window is 7 days
    assert _rate(client, key_headers, 3, old_list[1])["attribution"] is None

    second = client.get("/v1/users/3/recommendations?k=5", headers={"X-Request-Id": "recent"})
    recent = [i["isbn"] for i in second.get_json()["items"]]
    _flush(client)
    _age(engine, "recent", days=6)
    target = recent[2]
    got = _rate(client, key_headers, 3, target)["attribution"]
    assert got == {
        "request_id": "recent",
        "model_version": second.headers["X-Model-Version"],
        "kind": "user",
        "position": 3,
    }
    # Another reader rating a book of reader 3's list is not attributed to it.
    assert _rate(client, key_headers, 6, recent[3])["attribution"] is None
    events = _rows(
        engine, "SELECT user_id, isbn, impression_request_id, position FROM rating_events"
    )
    assert {(e.user_id, e.isbn): (e.impression_request_id, e.position) for e in events} == {
        (3, old_list[1]): (None, None),
        (3, target): ("recent", 3),
        (6, recent[3]): (None, None),
    }
    metrics = client.get("/metrics").get_data(as_text=True)
    assert metric_total(metrics, "bookrec_attributed_ratings_total") == 1


def test_a_request_id_attributes_to_lists_without_a_reader(client, engine, key_headers):
    popular = client.get("/v1/books/popular?k=5", headers={"X-Request-Id": "pop-1"})
    books = [i["isbn"] for i in popular.get_json()["items"]]
    mine = client.get("/v1/users/3/recommendations?k=5", headers={"X-Request-Id": "rec-3"})
    theirs = [i["isbn"] for i in mine.get_json()["items"]]
    _flush(client)
    got = _rate(client, key_headers, 50, books[2], request_id="pop-1")["attribution"]
    assert (got["request_id"], got["kind"], got["position"]) == ("pop-1", "popular", 3)
    assert _rate(client, key_headers, 50, books[3])["attribution"] is None  # no reader on it
    # Naming another reader's list does not make it yours.
    assert _rate(client, key_headers, 51, theirs[0], request_id="rec-3")["attribution"] is None
    bad = client.post(
        "/v1/users/50/ratings",
        json={"isbn": books[0], "rating": 5, "request_id": "no spaces"},
        headers=key_headers,
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "request_id"


def test_a_rating_posted_before_its_list_is_written_is_attributed_later(
    client, engine, key_headers
):
    isbn = genre_isbns("manor")[0]
    similar = client.get(f"/v1/books/{isbn}/similar?k=5", headers={"X-Request-Id": "sim-1"})
    book = similar.get_json()["items"][4]["isbn"]
    # The list is still queued in this worker: no attribution yet ...
    assert _rate(client, key_headers, 70, book, request_id="sim-1")["attribution"] is None
    _flush(client)  # ... the writer stores it, then retries the pending rating
    events = _rows(engine, "SELECT impression_request_id, kind, position FROM rating_events")
    assert [tuple(e) for e in events] == [("sim-1", "similar", 5)]


def test_impressions_reach_postgres_from_every_gunicorn_worker(
    start_gunicorn, serving_settings, engine, key_headers
):
    server = start_gunicorn(serving_settings, workers=2)
    ids = []
    for n in range(12):
        response = requests.get(
            f"{server.url}/v1/users/{n % 4 + 1}/recommendations?k=5",
            headers={"X-Request-Id": f"g-{n}"},
            timeout=10,
        )
        assert response.status_code == 200
        ids.append(response.headers["X-Request-Id"])
    # Rate right away, naming the list: it may still be in the other worker's queue.
    last = response.json()["items"][0]["isbn"]
    rated = requests.post(
        f"{server.url}/v1/users/4/ratings",
        json={"isbn": last, "rating": 9, "request_id": "g-11"},
        headers=key_headers,
        timeout=10,
    )
    assert rated.status_code == 201
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stored = _rows(engine, "SELECT request_id FROM impressions")
        events = _rows(engine, "SELECT impression_request_id FROM rating_events")
        if len(stored) == 12 and events and events[0][0]:
            break
        time.sleep(0.2)
    assert sorted(r[0] for r in stored) == sorted(ids)
    assert [e[0] for e in events] == ["g-11"]
    time.sleep(1.5)  # every worker folds its metric samples within a second
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric_total(metrics, "bookrec_impressions_total", kind="user") == 12
    assert metric_total(metrics, "bookrec_attributed_ratings_total") == 1


def _impression(conn, when: datetime, rid: str, user: int | None, version: str, isbns) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO impressions (shown_at, request_id, user_id, model_version, kind, isbns) "
            "VALUES (:t, :r, :u, :v, :k, :i)"
        ),
        {
            "t": when,
            "r": rid,
            "u": user,
            "v": version,
            "k": "user" if user else "popular",
            "i": list(isbns),
        },
    )


def _event(conn, when, user, isbn, rid, shown, version, position) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO rating_events (posted_at, user_id, isbn, rating, "
            "impression_request_id, shown_at, model_version, kind, position) "
            "VALUES (:p, :u, :i, 8, :r, :s, :v, 'user', :pos)"
        ),
        {"p": when, "u": user, "i": isbn, "r": rid, "s": shown, "v": version, "pos": position},
    )


@pytest.fixture
def known_online_data(serving_settings, engine) -> datetime:
    """Version A: 4 lists in the period (3 readers, one popular list) with hits at places
    1 and 4 of one list (the second rated twice) and 12 of another; one older list. Version
    B: 2 lists, 2 readers, no hit. Returns the start of the period."""
    since = datetime(2026, 3, 2, tzinfo=UTC)
    books = [f"b{n}" for n in range(15)]
    t = since + timedelta(hours=1)
    with engine.begin() as conn:
        _impression(conn, since - timedelta(hours=3), "a0", 1, "A", books)  # before the period
        _impression(conn, t, "a1", 1, "A", books)
        _impression(conn, t, "a2", 2, "A", books)
        _impression(conn, t, "a3", 3, "A", books)
        _impression(conn, t, "a4", None, "A", books)
        _impression(conn, t, "b1", 1, "B", books)
        _impression(conn, t, "b2", 4, "B", books)
        later = t + timedelta(hours=2)
        _event(conn, later, 1, "b0", "a1", t, "A", 1)
        _event(conn, later, 1, "b3", "a1", t, "A", 4)
        _event(conn, later + timedelta(hours=1), 1, "b3", "a1", t, "A", 4)  # rated again
        _event(conn, later, 2, "b11", "a2", t, "A", 12)
        _event(conn, since - timedelta(hours=1), 1, "b5", "a0", since - timedelta(hours=3), "A", 6)
    return since


def test_online_report_figures_on_known_data(known_online_data, engine, cli_db, capsys):
    since = known_online_data
    rows = {r.model_version: r for r in online.report(engine, since, k=10)}
    a, b = rows["A"], rows["B"]
    assert (a.impressions, a.readers, a.attributed_ratings, a.lists_hit) == (4, 3, 3, 1)
    assert a.hit_rate == pytest.approx(1 / 4)
    assert a.mean_hit_position == pytest.approx((1 + 4 + 12) / 3, abs=1e-4)
    assert (b.impressions, b.readers, b.attributed_ratings, b.hit_rate) == (2, 2, 0, 0.0)
    assert b.mean_hit_position is None
    at_15 = {r.model_version: r for r in online.report(engine, since, k=15)}
    assert at_15["A"].hit_rate == pytest.approx(2 / 4)

    assert main(["online", "--since", since.isoformat(), "--json"]) == 0
    printed = {r["model_version"]: r for r in json.loads(capsys.readouterr().out)}
    assert printed["A"]["impressions"] == 4 and printed["A"]["hit_rate"] == 0.25
    assert main(["online", "--since", "2026-03-02", "--k", "15"]) == 0
    table = capsys.readouterr().out
    assert "hit rate@15" in table and "0.5000" in table
    assert main(["online", "--since", "yesterday-ish"]) == 2
    assert "--since" in capsys.readouterr().err


def test_impressions_and_rating_events_are_retained_like_api_logs(serving_settings, engine):
    """Both tables are in the housekeeping tuple: rows of a day land in (or are moved into)
    its partition, and retention drops the days older than it keeps."""
    assert {"impressions", "rating_events"} <= set(partitions.PARTITIONED_TABLES)
    with engine.begin() as conn:
        _impression(conn, datetime(2026, 1, 1, 5, tzinfo=UTC), "old", 1, "A", ["x"])
        _impression(conn, datetime(2026, 1, 3, 5, tzinfo=UTC), "kept", 1, "A", ["x"])
        _event(conn, datetime(2026, 1, 1, 6, tzinfo=UTC), 1, "x", "old", None, "A", 1)
    for table in ("impressions", "rating_events"):
        created = partitions.ensure_partitions(engine, table, 2, today=date(2026, 1, 1))
        assert f"{table}_p20260101" in created
    placed = _rows(engine, "SELECT tableoid::regclass::text, request_id FROM impressions")
    assert ("impressions_p20260101", "old") in [tuple(r) for r in placed]
    now = datetime(2026, 1, 4, 12, tzinfo=UTC)
    for table in ("impressions", "rating_events"):
        partitions.drop_partitions_older_than(engine, table, 2, now=now)
    kept = _rows(engine, "SELECT request_id FROM impressions WHERE shown_at < '2026-02-01'")
    assert [r[0] for r in kept] == ["kept"]
    assert _rows(engine, "SELECT * FROM rating_events WHERE posted_at < '2026-02-01'") == []


def test_the_queue_is_bounded_and_a_down_database_drops_and_counts(monkeypatch):
    metrics = Metrics()
    down = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none")
    writer = ImpressionWriter(Settings(), metrics, lambda: down)
    monkeypatch.setattr(writer, "max_queue", 3)
    body = b'{"items": [{"isbn": "0306406152"}]}'
    for n in range(5):
        writer.record(f"r{n}", None, "v", "popular", body)
    assert writer.flush() == 0
    text = metrics.exposition()[0].decode()
    assert metric_total(text, "bookrec_impressions_dropped_total") == 5  # 2 full + 3 failed
    assert metric_total(text, "bookrec_impressions_total", kind="popular") == 3


def test_the_least_privilege_api_role_shows_lists_and_attributes_ratings(
    make_app, serving_settings, engine, database_url
):
    """The API connected as ``bookrec db api-role``'s role: key lookup, impressions,
    rating with attribution, and the later retry all work with its grants alone."""
    import uuid

    from bookrec import dbroles
    from bookrec.apikeys import create_key

    role, password = f"bookrec_api_{uuid.uuid4().hex[:8]}", "a-long-enough-test-password"
    dbroles.ensure_api_role(engine, role, password)
    try:
        url = sa.engine.make_url(database_url).set(username=role, password=password)
        settings = serving_settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False)}
        )
        client = make_app(settings).test_client()
        auth = {"Authorization": f"Bearer {create_key(engine, 'role test')['key']}"}
        shown = client.get("/v1/users/3/recommendations?k=5", headers={"X-Request-Id": "role-1"})
        book = shown.get_json()["items"][1]["isbn"]
        posted = client.post(
            "/v1/users/3/ratings",
            json={"isbn": book, "rating": 7, "request_id": "role-1"},
            headers=auth,
        )
        assert posted.status_code == 201 and posted.get_json()["attribution"] is None
        _flush(client)  # writes the list, then attributes the pending rating
        events = _rows(engine, "SELECT impression_request_id, position FROM rating_events")
        assert [tuple(e) for e in events] == [("role-1", 2)]
    finally:
        from bookrec import db

        db.dispose_engines()
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
