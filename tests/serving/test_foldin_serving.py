"""Fold-in through the API on a real two-worker gunicorn: a posted rating counts on the next
request, whichever worker answers it, with the in-process cache alone and with Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests.utils.frames import genre_isbns, rating_frame

GETS = 12


def _lists(url: str, n: int = GETS, workers: set[str] | None = None) -> list[dict]:
    """``n`` bodies, each on a new connection (so they spread over the workers); the workers
    that answered (the per-process prefix of the request id) are added to ``workers``.

    Which worker accepts a fresh connection is the kernel's choice, and on a loaded machine
    one worker can take every connection for a while. So when ``workers`` is asked for, it
    goes on, in bursts of concurrent requests, until two workers have answered or 30 s have
    passed (the caller's assertion then says how many did)."""

    def get() -> tuple[dict, str]:
        response = requests.get(url, timeout=10, headers={"Connection": "close"})
        assert response.status_code == 200
        return response.json(), response.headers["X-Request-Id"][:16]

    bodies: list[dict] = []
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=4) as pool:
        while len(bodies) < n or (
            workers is not None and len(workers) < 2 and time.monotonic() < deadline
        ):
            burst = 1 if len(bodies) < n else 4  # the first n one at a time, then concurrent
            for body, worker in pool.map(lambda _: get(), range(burst)):
                bodies.append(body)
                if workers is not None:
                    workers.add(worker)
    return bodies


def _settings(serving_settings, backend: str, redis_server):
    if backend == "memory":
        return serving_settings
    return serving_settings.model_copy(update={"redis_url": redis_server["url"]})


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    """The cache setup: the default in-process cache per worker, or Redis in front."""
    return request.param


@pytest.fixture
def maybe_redis(backend, request):
    """A private Redis for the "redis" setup (none otherwise)."""
    return request.getfixturevalue("redis_server") if backend == "redis" else None


def test_read_your_writes_across_workers(
    start_gunicorn, serving_settings, backend, maybe_redis, key_headers
):
    server = start_gunicorn(_settings(serving_settings, backend, maybe_redis), workers=2)
    user = 3  # a dragon reader the model was trained on
    url = f"{server.url}/v1/users/{user}/recommendations?k=5"
    before = _lists(url)  # every worker now holds (or has read) the cached list
    top = before[0]["items"][0]["isbn"]
    assert all(body["items"][0]["isbn"] == top for body in before)
    rated = set(rating_frame(seed=0).query("user_id == @user").isbn)
    assert top not in rated

    posted = requests.post(
        f"{server.url}/v1/users/{user}/ratings",
        json={"isbn": top, "rating": 9},
        headers=key_headers,
        timeout=10,
    )
    assert posted.status_code == 201
    workers: set[str] = set()
    after = _lists(url, workers=workers)
    assert len(workers) == 2  # both workers answered after the POST
    stale = [body for body in after if top in {item["isbn"] for item in body["items"]}]
    assert not stale, f"{len(stale)} of {GETS} GETs still list the rated book"
    for body in after:
        assert not rated & {item["isbn"] for item in body["items"]}
    if backend == "redis":
        client = redis.Redis.from_url(maybe_redis["url"])
        assert client.get(f"bookrec:ugen:{user}") is not None
        client.close()


def test_a_new_reader_gets_cf_on_the_next_request(
    start_gunicorn, serving_settings, backend, maybe_redis, key_headers
):
    server = start_gunicorn(_settings(serving_settings, backend, maybe_redis), workers=2)
    user = 500_001  # not in the training data
    url = f"{server.url}/v1/users/{user}/recommendations?k=4"
    for body in _lists(url, 4):
        assert body["known_user"] is False
        assert {item["source"] for item in body["items"]} == {"popular"}

    book = genre_isbns("dragon")[2]
    posted = requests.post(
        f"{server.url}/v1/users/{user}/ratings",
        json={"isbn": book, "rating": 10},
        headers=key_headers,
        timeout=10,
    )
    assert posted.status_code == 201
    title = requests.get(f"{server.url}/v1/books/{book}", timeout=10).json()["title"]
    dragons = set(genre_isbns("dragon"))
    for body in _lists(url):
        assert body["known_user"] is True
        items = body["items"]
        assert [item["source"] for item in items] == ["cf"] * 4
        assert all(item["reason"] == f"because you rated {title}" for item in items)
        assert {item["isbn"] for item in items} <= dragons - {book}
