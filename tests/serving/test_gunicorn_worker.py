"""The project's gunicorn worker spreads keep-alive connections over the workers."""

from __future__ import annotations

import http.client
import time
from collections import Counter

from tests.serving.test_serving_gunicorn import wait_for, worker_versions

WORKERS, THREADS = 3, 2


def _worker_of(conn: http.client.HTTPConnection) -> str:
    """Which worker answered on ``conn``: the per-process prefix of the request id."""
    conn.request("GET", "/livez")
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    return response.getheader("X-Request-Id")[:16]


def test_keepalive_connections_are_spread_over_the_workers(start_gunicorn, serving_settings):
    server = start_gunicorn(
        serving_settings, workers=WORKERS, extra_env={"BOOKREC_THREADS": str(THREADS)}
    )
    wait_for(lambda: len(worker_versions(server.url)) == WORKERS, 60)  # all workers booted
    for _ in range(3):
        # every connection is opened before any request: stock gthread lets the first worker
        # to wake accept most of them (e.g. 6/0/0 or 4/2/0) and keep them
        conns = [
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            for _ in range(WORKERS * THREADS)
        ]
        for conn in conns:
            conn.connect()
        owners = [_worker_of(conn) for conn in conns]
        assert sorted(Counter(owners).values()) == [THREADS] * WORKERS
        assert [_worker_of(conn) for conn in conns] == owners  # kept alive where they landed
        # one more connection while every worker holds its share is still served at once
        extra = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        started = time.monotonic()
        assert _worker_of(extra) in set(owners)
        assert time.monotonic() - started < 1.0
        for conn in [*conns, extra]:
            conn.close()
        time.sleep(0.3)  # the workers notice the closed connections
