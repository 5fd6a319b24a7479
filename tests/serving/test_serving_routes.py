"""Routes through the Flask test client, on a real fitted model, registry and PostgreSQL."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from bookrec.registry import Registry
from bookrec.settings import Settings
from serving import bodies
from tests.utils.frames import genre_isbns, rating_frame
from tests.utils.isbn import isbn13_of
from tests.utils.serving import ADMIN_TOKEN, metric_total

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def error_of(response) -> dict:
    """The JSON error object, after checking the error contract (JSON, 4xx/503, no trace)."""
    assert response.is_json, response.data[:200]
    assert "Traceback" not in response.get_data(as_text=True)
    body = response.get_json()["error"]
    assert body["status"] == response.status_code
    assert body["message"]
    return body


def test_known_user_gets_cf_recommendations_without_rated_books(client, model_set):
    user = 3  # reads the "dragon" genre (user % 3 == 0)
    rated = set(rating_frame(seed=0).query("user_id == @user").isbn)
    response = client.get(f"/v1/users/{user}/recommendations?k=5", headers={"X-Request-Id": "t-1"})
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == model_set.versions[0]
    assert response.headers["X-Request-Id"] == "t-1"
    body = response.get_json()
    assert body["known_user"] is True and body["k"] == 5 and len(body["items"]) == 5
    isbns = [item["isbn"] for item in body["items"]]
    assert not rated & set(isbns)
    assert all(item["source"] in ("cf", "content") and item["reason"] for item in body["items"])
    # The neighbours of a dragon reader are dragon books.
    assert isbns[0] in genre_isbns("dragon")
    assert {"title", "author", "image_url", "score"} <= set(body["items"][0])


def test_unknown_user_gets_popular_books(client):
    body = client.get("/v1/users/2147483647/recommendations?k=3").get_json()
    assert body["known_user"] is False
    assert [item["source"] for item in body["items"]] == ["popular"] * 3


def _ids_in_child(ids, queue) -> None:
    queue.put([ids() for _ in range(100)])


def test_request_ids_are_unique_across_threads_and_forked_workers():
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from serving.app import RequestIds

    ids = RequestIds()
    with ThreadPoolExecutor(4) as pool:
        parent = [
            i for batch in pool.map(lambda _: [ids() for _ in range(500)], range(4)) for i in batch
        ]
    assert len(set(parent)) == 2000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in parent)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_ids_in_child, args=(ids, queue))
    child.start()
    in_child = queue.get(timeout=30)
    child.join(timeout=30)
    assert len(set(in_child)) == 100
    assert not set(in_child) & set(parent)
    assert {i[:16] for i in in_child}.isdisjoint({i[:16] for i in parent})


def test_request_id_is_generated_when_missing_or_unsafe(client):
    response = client.get("/livez", headers={"X-Request-Id": "bad id with spaces"})
    assert response.headers["X-Request-Id"] != "bad id with spaces"
    assert len(response.headers["X-Request-Id"]) == 32


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/users/0/recommendations", "user_id"),
        ("/v1/users/-4/recommendations", "user_id"),
        ("/v1/users/2147483648/recommendations", "user_id"),
        ("/v1/users/12abc/recommendations", "user_id"),
        ("/v1/users/1e3/recommendations", "user_id"),
        ("/v1/users/1/recommendations?k=0", "k"),
        ("/v1/users/1/recommendations?k=101", "k"),
        ("/v1/users/1/recommendations?k=ten", "k"),
        ("/v1/books/popular?k=-1", "k"),
        ("/v1/books/B000123456", "isbn"),
        ("/v1/books?q=" + "x" * 201, "q"),
        ("/v1/books?q=ab", "q"),  # search needs 3 characters
        ("/v1/books?q=%20a%01%20", "q"),
        ("/v1/books", "q"),
    ],
)
def test_invalid_input_is_a_json_400_naming_the_field(client, path, field):
    response = client.get(path)
    assert response.status_code == 400
    assert error_of(response)["field"] == field


def test_isbn_forms_are_normalised(client, model_set):
    isbn = model_set.books.isbn[0]
    hyphenated = f"{isbn[0]}-{isbn[1:4]}-{isbn[4:9]}-{isbn[9]}"
    for form in (isbn, hyphenated, isbn13_of(isbn)):
        response = client.get(f"/v1/books/{form}")
        assert response.status_code == 200, form
        assert response.get_json()["isbn"] == isbn


def test_book_details_come_from_postgresql(client, model_set):
    book = model_set.books.iloc[5]
    body = client.get(f"/v1/books/{book.isbn}").get_json()
    assert body["source"] == "database"
    assert (body["title"], body["author"], body["year"]) == (book.title, book.author, book.year)


def test_unknown_but_valid_isbn_is_404(client):
    for path in ("/v1/books/0306406152", "/v1/books/0306406152/similar"):
        response = client.get(path)
        assert response.status_code == 404
        assert error_of(response)["code"] == "unknown_book"


def test_similar_books_share_the_genre(client):
    isbn = genre_isbns("herbs")[0]
    body = client.get(f"/v1/books/{isbn}/similar?k=4").get_json()
    assert len(body["items"]) == 4
    assert isbn not in [i["isbn"] for i in body["items"]]
    assert {i["isbn"] for i in body["items"]} <= set(genre_isbns("herbs"))


def test_search_ranks_prefix_matches_and_escapes_wildcards(client):
    body = client.get("/v1/books?q=murder AT").get_json()
    assert body["count"] == 12
    assert body["items"][0]["title"] == "Murder at the Manor 1"
    assert client.get("/v1/books?q=cy chef").get_json()["count"] == 12
    assert client.get("/v1/books?q=%25%25%25").get_json()["count"] == 0
    assert client.get("/v1/books?q=___").get_json()["count"] == 0
    assert client.get("/v1/books?q=%00dragon").get_json()["count"] == 12


def test_posted_rating_is_stored_and_excluded_from_recommendations(client, engine, key_headers):
    user = 3
    shown = client.get(f"/v1/users/{user}/recommendations?k=3")
    first = shown.get_json()["items"][0]["isbn"]
    client.application.extensions["bookrec"].impressions.flush()
    response = client.post(
        f"/v1/users/{user}/ratings", json={"isbn": first, "rating": 9}, headers=key_headers
    )
    assert response.status_code == 201
    assert response.get_json() == {
        "user_id": user,
        "isbn": first,
        "rating": 9,
        "status": "recorded",
        "attribution": {
            "request_id": shown.headers["X-Request-Id"],
            "model_version": shown.headers["X-Model-Version"],
            "kind": "user",
            "position": 1,
        },
    }
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT rating, source FROM ratings WHERE user_id = :u AND isbn = :i"),
            {"u": user, "i": first},
        ).one()
    assert tuple(row) == (9, "api")
    again = client.get(f"/v1/users/{user}/recommendations?k=3").get_json()
    assert first not in [i["isbn"] for i in again["items"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"isbn": "0306406152"}, "rating"),
        ({"isbn": "0306406152", "rating": 11}, "rating"),
        ({"isbn": "0306406152", "rating": "7"}, "rating"),
        ({"isbn": "0306406152", "rating": True}, "rating"),
        ({"rating": 5}, "isbn"),
        ({"isbn": "0306406152", "rating": 5, "extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_invalid_rating_bodies_are_refused(client, body, field, key_headers):
    response = client.post("/v1/users/5/ratings", json=body, headers=key_headers)
    assert response.status_code == 400
    assert error_of(response)["field"] == field


def test_rating_body_must_be_json(client, key_headers):
    response = client.post(
        "/v1/users/5/ratings", data="isbn=1", content_type="text/plain", headers=key_headers
    )
    assert response.status_code == 415
    bad = client.post(
        "/v1/users/5/ratings",
        data="{not json",
        content_type="application/json",
        headers=key_headers,
    )
    assert bad.status_code == 400


def test_unknown_route_and_method_are_json(client):
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    wrong = client.delete("/v1/books/popular")
    assert wrong.status_code == 405
    assert "GET" in wrong.headers["Allow"]
    error_of(wrong)


def test_admin_requires_the_bearer_token(client):
    assert client.get("/admin/model").status_code == 401
    refused = client.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/admin/model", headers={"Authorization": ADMIN_TOKEN}).status_code == 401
    info = client.get("/admin/model", headers=AUTH)
    assert info.status_code == 200
    assert info.get_json()["manifest"]["kind"] == "hybrid"


def test_admin_is_closed_without_a_configured_token(make_app, serving_settings):
    settings = serving_settings.model_copy(update={"admin_token": None})
    client = make_app(settings).test_client()
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 403
    assert error_of(response)["code"] == "admin_disabled"


def test_reload_swaps_to_the_new_champion_and_cache_keys_follow(
    client, serving_settings, model_set
):
    old, new = model_set.versions
    before = client.get("/v1/books/popular?k=3")
    assert before.get_json()["model_version"] == old
    Registry.from_settings(serving_settings).promote(new, by="test", reason="reload test")
    result = client.post(f"/admin/reload?version={new}", headers=AUTH).get_json()
    assert result["status"] == "reloaded" and result["previous"] == old
    assert result["version"] == new and result["matches"] is True
    after = client.get("/v1/books/popular?k=3")
    assert after.headers["X-Model-Version"] == new
    assert after.get_json()["model_version"] == new  # not the cached body of the old model
    unchanged = client.post("/admin/reload", headers=AUTH).get_json()
    assert unchanged["status"] == "unchanged"


def test_a_reload_prewarms_the_recently_used_entries_for_the_new_model(
    client, app, serving_settings, model_set
):
    old, new = model_set.versions
    isbn = genre_isbns("herbs")[0]
    paths = [
        "/v1/books/popular?k=3",
        "/v1/users/7/recommendations?k=2",
        f"/v1/books/{isbn}/similar?k=4",
        f"/v1/books/{isbn}",
    ]
    for path in paths:
        assert client.get(path).headers["X-Model-Version"] == old
    Registry.from_settings(serving_settings).promote(new, by="test", reason="prewarm test")
    result = client.post("/admin/reload", headers=AUTH).get_json()
    assert result["status"] == "reloaded" and result["prewarmed"] == len(paths)
    svc = app.extensions["bookrec"]
    assert len(svc.cache.memory.recent_keys(f"bookrec:api:{new}:", 10)) == len(paths)
    hits_before = _metric(client, "bookrec_cache_hits_total")
    misses_before = _metric(client, "bookrec_cache_misses_total")
    answers = [client.get(path) for path in paths]
    assert _metric(client, "bookrec_cache_misses_total") == misses_before  # all pre-warmed
    assert _metric(client, "bookrec_cache_hits_total") == hits_before + len(paths)
    assert all(a.status_code == 200 and a.headers["X-Model-Version"] == new for a in answers)
    # computed by the new model: the same body as computing it now
    assert answers[0].data == bodies.popular(svc.holder.model, 3)
    assert answers[1].get_json()["model_version"] == new
    assert answers[2].get_json()["model_version"] == new


def _metric(client, name: str) -> float:
    return metric_total(client.get("/metrics").get_data(as_text=True), name)


def test_a_failed_load_keeps_the_old_model(client, app, serving_settings, model_set):
    old, new = model_set.versions
    store_file = next((serving_settings.home.parent / "store" / "models" / new).glob("cf_data.npy"))
    Registry.from_settings(serving_settings).promote(new, by="test", reason="then damaged")
    store_file.write_bytes(store_file.read_bytes()[:-8] + b"tampered")
    result = client.post("/admin/reload", headers=AUTH).get_json()
    assert result["status"] == "failed" and "cf_data.npy" in result["error"]
    response = client.get("/v1/books/popular?k=2")
    assert response.status_code == 200 and response.headers["X-Model-Version"] == old
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'bookrec_model_reloads_total{outcome="failure"} 1.0' in metrics


def test_not_ready_without_a_champion(make_app, database_url, tmp_path):
    settings = Settings(database_url=database_url, home=tmp_path / "h", artifacts_uri=str(tmp_path))
    client = make_app(settings).test_client()
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = client.get("/v1/books/popular")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert error_of(response)["code"] == "model_not_loaded"
    assert response.headers["X-Model-Version"] == "none"


def test_cache_hits_and_metrics(client):
    for _ in range(3):
        assert client.get("/v1/books/popular?k=4").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'bookrec_cache_misses_total{kind="popular"} 1.0' in text
    assert 'bookrec_cache_hits_total{kind="popular"} 2.0' in text
    assert (
        'bookrec_http_requests_total{method="GET",route="/v1/books/popular",status="200"} 3.0'
        in text
    )
    assert "bookrec_http_request_duration_seconds_bucket" in text


def test_rate_limit_answers_429_with_retry_after(make_app, serving_settings):
    settings = serving_settings.model_copy(update={"rate_limit": "3 per minute"})
    client = make_app(settings).test_client()
    statuses = [client.get("/v1/books/popular").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/v1/books/popular")
    assert int(limited.headers["Retry-After"]) > 0
    assert error_of(limited)["code"] == "too_many_requests"
    assert client.get("/livez").status_code == 200  # health checks are never limited


def test_api_logs_are_written_in_batches(client, app, engine):
    ids = [f"log-{i}" for i in range(5)]
    for request_id in ids:
        client.get("/v1/users/7/recommendations?k=2", headers={"X-Request-Id": request_id})
    assert app.extensions["bookrec"].apilog.flush() == 5
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT request_id, route, status, user_id, model_version, latency_ms "
                "FROM api_logs ORDER BY id"
            )
        ).all()
    assert [r.request_id for r in rows] == ids
    assert {r.route for r in rows} == {"/v1/users/<user_id>/recommendations"}
    assert {(r.status, r.user_id) for r in rows} == {(200, 7)}
    assert all(r.latency_ms > 0 and r.model_version for r in rows)


def test_page_and_docs_render(client):
    page = client.get("/")
    assert page.status_code == 200 and b'id="search-form"' in page.data
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"/v1/users/{user_id}/recommendations" in docs.data
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    params = spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
    assert {p["name"] for p in params} == {"user_id", "k"}


def test_a_database_without_the_schema_degrades_like_a_down_one(
    make_app, serving_settings, pg_admin_url, model_set, key_headers
):
    """A reachable PostgreSQL that was never migrated: answers from the model, no 500."""
    import uuid

    name = f"bookrec_empty_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.engine.make_url(pg_admin_url).set(database=name)
        settings = serving_settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False)}
        )
        client = make_app(settings).test_client()
        user = int(rating_frame(seed=0)["user_id"].iloc[0])
        response = client.get(f"/v1/users/{user}/recommendations?k=5")
        assert response.status_code == 200, response.data[:300]
        assert len(response.get_json()["items"]) == 5
        response = client.post(
            f"/v1/users/{user}/ratings",
            json={"isbn": model_set.books["isbn"].iloc[0], "rating": 7},
            headers=key_headers,
        )
        assert response.status_code == 503  # the key cannot be checked: nothing is stored
        assert error_of(response)["code"] == "auth_unavailable"
        assert client.get("/readyz").status_code == 200
    finally:
        from bookrec import db

        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_rate_limit_with_redis_storage(make_app, serving_settings, redis_url):
    settings = serving_settings.model_copy(
        update={"rate_limit": "3 per minute", "redis_url": redis_url}
    )
    first, second = make_app(settings).test_client(), make_app(settings).test_client()
    assert [first.get("/v1/books/popular").status_code for _ in range(3)] == [200] * 3
    time.sleep(0.3)  # the first app settles its hits with Redis within the sync interval
    refused = second.get("/v1/books/popular")  # another worker: the same client's count
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0


def test_each_request_is_one_json_log_line(make_app, serving_settings, engine, caplog):
    """With the writer thread, lines and rows are written by it; a NUL in a path is kept."""
    import json
    import logging

    app = make_app(serving_settings)
    svc = app.extensions["bookrec"]
    svc.apilog.start()
    try:
        client = app.test_client()
        with caplog.at_level(logging.INFO, logger="bookrec.api"):
            client.get("/v1/books/popular?k=3", headers={"X-Request-Id": "line-1"})
            client.get("/v1/books/%00x", headers={"X-Request-Id": "line-2"})
            svc.apilog.stop()
        lines = [
            json.loads(line)
            for r in caplog.records
            if r.name == "bookrec.api"
            for line in r.getMessage().splitlines()
        ]
    finally:
        svc.apilog.stop()
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["line-1"]["route"] == "/v1/books/popular" and by_id["line-1"]["status"] == 200
    assert by_id["line-2"]["status"] == 400 and by_id["line-2"]["ts"]
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.text(
                    "SELECT request_id, path FROM api_logs WHERE request_id IN ('line-1', 'line-2')"
                )
            ).all()
        )
    assert rows == {"line-1": "/v1/books/popular", "line-2": "/v1/books/\ufffdx"}


def test_a_reload_waits_for_its_stagger_but_the_first_load_does_not(
    serving_settings, model_set, monkeypatch
):
    import serving.model_holder as holder_module
    from serving.metrics import Metrics
    from serving.model_holder import ModelHolder

    old, new = model_set.versions
    monkeypatch.setattr(holder_module.random, "uniform", lambda low, high: high)  # worst case
    holder = ModelHolder(serving_settings.model_copy(update={"reload_stagger_s": 0.6}), Metrics())
    first = holder.check(reason="startup")
    assert first["status"] == "reloaded" and first["version"] == old
    assert first["seconds"] < 0.6  # nothing to stagger against: serve as soon as loaded
    Registry.from_settings(serving_settings).promote(new, by="test", reason="stagger test")
    started = time.perf_counter()
    result = holder.check(reason="signal")
    assert result["status"] == "reloaded" and holder.version == new
    assert time.perf_counter() - started >= 0.6  # the swap waited for its turn
    holder.stop()
