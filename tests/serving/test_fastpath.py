"""Cached reads answered before Flask (serving/fastpath.py) give what Flask gives: the same
status, body and headers, the same API-log row, impression and metrics, and the same rate
limit; every other request still reaches Flask."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.utils.serving import metric_total

USER = 3  # a reader the model was trained on


def _build(make_app, settings, redis_url: str, fast: bool):
    """An app with Redis and the readers' generations kept (as under gunicorn), and a count
    of the requests that reached Flask's hooks."""
    app = make_app(
        settings.model_copy(update={"redis_url": redis_url, "fast_cached_reads": fast}),
        TESTING=True,
    )
    svc = app.extensions["bookrec"]
    svc.cache.start()
    deadline = time.monotonic() + 30
    while not svc.cache.generations.trusted:
        assert time.monotonic() < deadline, "the generations listener did not join"
        time.sleep(0.05)
    app.flask_requests = 0

    @app.before_request
    def count() -> None:
        app.flask_requests += 1

    return app


@pytest.fixture
def apps(make_app, serving_settings, redis_url):
    """(fast, flask-only) apps on the same database, registry and Redis."""
    return (
        _build(make_app, serving_settings, redis_url, True),
        _build(make_app, serving_settings, redis_url, False),
    )


def _paths(client) -> list[str]:
    isbns = [item["isbn"] for item in client.get("/v1/books/popular?k=3").get_json()["items"]]
    return [
        "/v1/books/popular",
        "/v1/books/popular?k=5",
        f"/v1/users/{USER}/recommendations?k=5",
        f"/v1/users/{USER}/recommendations",
        f"/v1/books/{isbns[0]}/similar?k=4",
        f"/v1/books/{isbns[1]}",
    ]


def _rows(engine, table: str, request_id: str) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                sa.text(f"SELECT * FROM {table} WHERE request_id = :r"), {"r": request_id}
            )
        ]


def test_a_cached_read_answers_as_flask_would(apps, engine):
    fast, flask_only = apps
    paths = _paths(fast.test_client())
    answers: dict[str, list] = {}
    texts_before: dict[str, str] = {}
    for name, app in (("fast", fast), ("flask", flask_only)):
        client = app.test_client()
        for path in paths:
            assert client.get(path).status_code == 200  # computed and cached by the view
        before = app.flask_requests
        svc = app.extensions["bookrec"]
        texts_before[name] = svc.metrics.exposition()[0].decode()
        for n, path in enumerate(paths):
            response = client.get(path, headers={"X-Request-Id": f"{name}-{n}"})
            answers.setdefault(path, []).append(response)
        reached_flask = app.flask_requests - before
        assert reached_flask == (0 if name == "fast" else len(paths))
        svc.apilog.flush()
        svc.impressions.flush()
    for n, path in enumerate(paths):
        got, want = answers[path]
        assert got.status_code == want.status_code == 200
        assert got.data == want.data
        assert got.headers["X-Request-Id"] == f"fast-{n}"
        assert want.headers["X-Request-Id"] == f"flask-{n}"
        assert sorted((k, v) for k, v in got.headers if k != "X-Request-Id") == sorted(
            (k, v) for k, v in want.headers if k != "X-Request-Id"
        )
        for table, skip in (("api_logs", {"logged_at", "latency_ms", "id"}),
                            ("impressions", {"shown_at", "id"})):
            fast_rows = _rows(engine, table, f"fast-{n}")
            flask_rows = _rows(engine, table, f"flask-{n}")
            assert len(fast_rows) == len(flask_rows) == (
                0 if table == "impressions" and "similar" not in path
                and "recommendations" not in path and "popular" not in path else 1
            ), (table, path)
            for a, b in zip(fast_rows, flask_rows, strict=True):
                a = {k: v for k, v in a.items() if k not in skip | {"request_id"}}
                b = {k: v for k, v in b.items() if k not in skip | {"request_id"}}
                assert a == b, (table, path)
    # the metrics of the second round of requests: the same on both paths
    texts = [app.extensions["bookrec"].metrics.exposition()[0].decode() for app in apps]

    def delta(i: int, name: str, **labels: str) -> float:
        before = texts_before["fast" if i == 0 else "flask"]
        return metric_total(texts[i], name, **labels) - metric_total(before, name, **labels)

    for kind, n in (("popular", 2), ("user", 2), ("similar", 1), ("book", 1)):
        assert [delta(i, "bookrec_cache_hits_total", kind=kind) for i in (0, 1)] == [n, n]
        assert [delta(i, "bookrec_cache_misses_total", kind=kind) for i in (0, 1)] == [0, 0]
    for route, n in (("/v1/books/popular", 2), ("/v1/users/<user_id>/recommendations", 2),
                     ("/v1/books/<isbn>/similar", 1), ("/v1/books/<isbn>", 1)):
        for i in (0, 1):
            assert delta(i, "bookrec_http_requests_total", route=route, status="200") == n
            assert delta(i, "bookrec_http_request_duration_seconds_count", route=route) == n


def test_everything_else_reaches_flask(apps):
    fast, flask_only = apps
    client = fast.test_client()
    paths = _paths(client)
    for path in paths:
        client.get(path)  # cached now
    for path, status in (
        ("/v1/books/popular?k=0", 400),  # an invalid k: Flask writes the error
        ("/v1/books/popular?k=%35", 200),  # an escape: werkzeug decodes the query
        ("/v1/users/0/recommendations", 400),
        ("/v1/books/not-an-isbn/similar", 400),
        ("/v1/books/popular/", 404),
    ):
        before = fast.flask_requests
        response = client.get(path)
        assert response.status_code == status, (path, response.data)
        assert fast.flask_requests == before + 1, path
        want = flask_only.test_client().get(path)
        assert (response.status_code, response.get_json()) == (
            want.status_code, want.get_json()
        )
    before = fast.flask_requests
    assert client.head(paths[0]).status_code == 200
    assert client.get(paths[0], headers={"Authorization": "Bearer nope"}).status_code == 200
    assert fast.flask_requests == before + 2  # HEAD and a keyed request: Flask
    # a posted rating changes the reader's generation: the next list is computed again
    svc = fast.extensions["bookrec"]
    assert svc.cache.bump_user_generation(USER)
    before = fast.flask_requests
    assert client.get(paths[2]).status_code == 200
    assert fast.flask_requests == before + 1


def test_the_rate_limit_counts_each_cached_read_once(make_app, serving_settings, redis_url):
    settings = serving_settings.model_copy(update={"rate_limit": "4 per minute"})
    app = _build(make_app, settings, redis_url, True)
    client = app.test_client()
    statuses = [client.get("/v1/books/popular?k=5").status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    # Only the first (a miss) passed Flask's hooks; the refusals were Flask's too (the rate
    # check raises before the later hooks), with the verdict the fast path had counted.
    assert app.flask_requests == 1
    refused = client.get("/v1/books/popular?k=5")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.get_json()["error"]["code"] == "too_many_requests"
    text = app.extensions["bookrec"].metrics.exposition()[0].decode()
    assert metric_total(text, "bookrec_rate_limited_total") == 3
