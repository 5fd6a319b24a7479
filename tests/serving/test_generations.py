"""Readers' generations kept in each worker's memory (serving/generations.py): a write makes
every worker drop its copy, or evicts a worker that does not answer, before the 201."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import redis
import requests

from serving.generations import MEMBERS_KEY, LocalGenerations
from tests.serving.test_foldin_serving import _lists
from tests.utils.frames import rating_frame


def _started(redis_url: str, n: int) -> list[LocalGenerations]:
    """``n`` workers' generation copies, each with its listener running and its lease held."""
    gens = [LocalGenerations(redis_url, 0.05) for _ in range(n)]
    for g in gens:
        g.start()
    deadline = time.monotonic() + 30
    while not all(g.trusted for g in gens):
        assert time.monotonic() < deadline, "the listeners did not join"
        time.sleep(0.05)
    return gens


def _keep(g: LocalGenerations, user_id: int, generation: str) -> None:
    g.put(user_id, generation, g.mark())
    assert g.get(user_id) == generation


def test_a_write_drops_every_workers_copy_before_it_returns(redis_url):
    gens = _started(redis_url, 2)
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        for g in gens:
            _keep(g, 7, "old")
            _keep(g, 8, "other")
        outcome = gens[0].invalidate(client, 7)
        assert outcome["members"] == 2 and outcome["acked"] == 2 and not outcome["evicted"]
        for g in gens:
            assert g.get(7) is None  # dropped before the write returned
            assert g.get(8) == "other"  # other readers' copies stay
    finally:
        for g in gens:
            g.stop()
        client.close()
    assert client.zcard(MEMBERS_KEY) == 0  # a stopped worker leaves the membership


def test_a_value_read_before_an_invalidation_is_not_kept(redis_url):
    [g] = _started(redis_url, 1)
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        mark = g.mark()  # a request sends its read of reader 7's generation...
        g.invalidate(client, 7)  # ...a write for reader 7 is handled meanwhile...
        g.put(7, "read-before-the-write", mark)  # ...and its answer comes back
        assert g.get(7) is None
        g.put(7, "new", g.mark())
        assert g.get(7) == "new"
    finally:
        g.stop()
        client.close()


def test_a_member_that_does_not_acknowledge_is_evicted_and_clears(redis_url):
    gens = _started(redis_url, 2)
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    silent = gens[1]
    try:
        _keep(silent, 7, "old")
        silent._handle = lambda *args: None  # its listener stalls: no drop, no ack
        outcome = gens[0].invalidate(client, 7)
        assert outcome["evicted"] == [silent.member]
        assert outcome["waited_s"] > 0  # until the evicted member's lease had ended
        # By the time the write returned, the silent worker could not use its copy...
        assert silent.get(7) is None
        # ...and its next renewal finds it evicted: it clears before it trusts again.
        deadline = time.monotonic() + 30
        while not silent.trusted:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert silent.get(7) is None
        assert client.zscore(MEMBERS_KEY, silent.member) is not None  # joined again
    finally:
        for g in gens:
            g.stop()
        client.close()


def test_copies_are_not_used_without_a_current_lease(redis_url):
    g = LocalGenerations(redis_url, 0.05)
    g.put(7, "old", g.mark())  # never started: nothing is kept
    assert g.get(7) is None
    [g] = _started(redis_url, 1)
    try:
        _keep(g, 7, "old")
        redis.Redis.from_url(redis_url).delete(MEMBERS_KEY)  # e.g. Redis lost its data
        deadline = time.monotonic() + 30
        while g.get(7) is not None:  # the next renewal finds it was no member: it clears
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        g.stop()


@pytest.mark.parametrize("stop_a_worker", [False, True])
def test_read_your_writes_with_generations_kept_by_two_workers(
    start_gunicorn, serving_settings, redis_server, key_headers, stop_a_worker
):
    """Both workers hold the reader's generation (they answered the reader's list); after
    the POST, no GET on either lists the rated book. With one worker stopped (SIGSTOP)
    during the POST it cannot acknowledge: the POST evicts it, and once resumed it does
    not serve its old copy."""
    settings = serving_settings.model_copy(update={"redis_url": redis_server["url"]})
    server = start_gunicorn(settings, workers=2)
    user = 3
    url = f"{server.url}/v1/users/{user}/recommendations?k=5"
    workers: set[str] = set()
    before = _lists(url, workers=workers)
    assert len(workers) == 2  # both workers hold the generation now
    top = before[0]["items"][0]["isbn"]
    assert top not in set(rating_frame(seed=0).query("user_id == @user").isbn)
    client = redis.Redis.from_url(redis_server["url"])
    assert client.zcard(MEMBERS_KEY) == 2
    stopped = None
    if stop_a_worker:
        stopped = psutil.Process(server.proc.pid).children()[0].pid
        os.kill(stopped, signal.SIGSTOP)
    try:
        posted = requests.post(
            f"{server.url}/v1/users/{user}/ratings",
            json={"isbn": top, "rating": 9},
            headers=key_headers,
            timeout=30,
        )
        assert posted.status_code == 201
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
    workers.clear()
    after = _lists(url, workers=workers)
    assert len(workers) == 2
    stale = [body for body in after if top in {item["isbn"] for item in body["items"]}]
    assert not stale, f"{len(stale)} GETs still list the rated book"
    evicted = "did not acknowledge" in server.log_path.read_text()
    assert evicted == stop_a_worker  # the stopped worker was evicted; otherwise both acked
    client.close()
