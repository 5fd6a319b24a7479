"""bench/replay.py's client against a real gunicorn: readers fetch their lists and rate
held-out books with an API key, every rating is attributed to the list it came from, and
no request fails."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from bench.replay import Replayer, TokenBucket
from tests.utils.frames import genre_isbns


def test_replayed_readers_rate_what_they_were_shown_and_nothing_fails(
    start_gunicorn, serving_settings, engine, key_headers
):
    server = start_gunicorn(serving_settings, workers=2)
    key = key_headers["Authorization"].removeprefix("Bearer ")
    # every reader's held-out truth: the whole of their own genre (users read mostly one)
    genres = ["dragon", "manor", "herbs"]
    truth = {uid: {isbn: 9 for isbn in genre_isbns(genres[uid % 3])} for uid in range(1, 61)}
    replayer = Replayer(server.url, key, truth, rate=60.0, p_shown=1.0, ratings_per_reader=2,
                        threads=4, seed=3)
    report = replayer.run(threading.Event(), max_readers=60)
    out = report.to_json()
    assert out["readers"] >= 60
    assert out["failures"] == 0 and out["transport_errors"] == {} and out["injected_faults"] == 0
    assert out["by_kind"]["GET 200"] >= 60 and out["by_kind"]["POST 201"] >= 100
    assert out["ratings_of_shown_books"] > 0
    assert set(out["lists_by_version"]) == {"20260101T000000Z-aaaaaa"}
    with engine.connect() as conn:
        events, attributed = conn.execute(sa.text(
            "SELECT count(*), count(impression_request_id) FROM rating_events")).one()
        named = conn.execute(sa.text(
            "SELECT count(*) FROM rating_events WHERE request_id IS NOT NULL")).scalar()
    assert events == out["by_kind"]["POST 201"] == named  # every rating names its list
    # ratings of shown books are attributed at once or by the writer's retry; the rest may
    # match an earlier list of the same reader that showed the book
    assert attributed >= out["ratings_of_shown_books"] * 0.9


def test_token_bucket_paces_requests():
    import time

    bucket = TokenBucket(50.0)
    stop = threading.Event()
    started = time.monotonic()
    for _ in range(76):  # one second of burst, then 25 more at 50/s
        assert bucket.take(stop)
    assert 0.4 <= time.monotonic() - started <= 1.6
    stop.set()
    assert bucket.take(stop) is False


def test_the_test_fault_switch_is_off_by_default_and_refused_in_production():
    import pydantic
    import pytest

    from bookrec.settings import Settings
    from serving.faults import FaultSwitch, parse_rates
    from serving.validation import ApiError

    assert parse_rates(None) == {} and parse_rates(" ") == {}
    assert parse_rates("v1=0.05, v2=1") == {"v1": 0.05, "v2": 1.0}
    for bad in ("v1", "v1=2", "=0.1", "v1=x"):
        with pytest.raises(ValueError, match="expected VERSION=RATE"):
            parse_rates(bad)
    FaultSwitch(None).check("v1")  # unset: never fails
    always = FaultSwitch("v1=1")
    always.check("v2")
    with pytest.raises(ApiError) as failed:
        always.check("v2", "v1")
    assert (failed.value.status, failed.value.code) == (500, "injected_fault")
    sometimes = FaultSwitch("v1=0.05", seed=1)
    fails = 0
    for _ in range(4000):
        try:
            sometimes.check("v1")
        except ApiError:
            fails += 1
    assert 120 <= fails <= 280  # 5% of 4000 is 200
    assert Settings().test_fault_version_error_rate is None
    with pytest.raises(pydantic.ValidationError, match="refused in production"):
        Settings(environment="production", admin_token="x" * 32,
                 test_fault_version_error_rate="v1=0.05")
