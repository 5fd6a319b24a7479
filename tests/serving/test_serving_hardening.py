"""Issue 12's serving items: request bodies and ISBNs (4), full-match patterns and serving
internals (9), on the Flask test client or a real gunicorn."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time

import pytest
import requests
import sqlalchemy as sa

from bookrec.registry import RegistryError, check_version
from serving.metrics import MAX_PENDING_SAMPLES, Metrics
from serving.periodic import Periodic
from tests.utils.serving import ADMIN_TOKEN, metric_total

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BAD_CHECK_DIGIT = ("0306406153", "9780306406158", "9785612962444")  # ...152 / ...157 are right


def _is_json_error(response, status: int) -> dict:
    text = response.text if isinstance(response, requests.Response) else response.get_data(True)
    assert response.status_code == status, text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(text)["error"]
    assert body["status"] == status
    return body


# -- item 4: bodies that cannot be parsed are 4xx, never 5xx ---------------------------------
def _raw_post(
    url: str, path: str, body: bytes, chunked: bool = False, auth: str = ""
) -> tuple[int, bytes]:
    """POST ``body`` on a raw socket (chunked without a Content-Length when asked)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if auth:
        head += f"Authorization: {auth}\r\n"
    if chunked:
        payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n"
    else:
        payload = body
        head += f"Content-Length: {len(body)}\r\n"
    head += "Connection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        # the server may answer 413 and close before reading it all
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_unparseable_json_bodies_are_json_4xx_under_gunicorn(
    start_gunicorn, serving_settings, key_headers
):
    server = start_gunicorn(serving_settings, workers=1)
    url = f"{server.url}/v1/users/1/ratings"
    deep = b"[" * 5000 + b"]" * 5000  # 10 KB, 5,000 levels: a RecursionError in json.loads
    for body in (deep, b'{"isbn": "0306406152", "rating": ', b"\xff\xfe{}", b"{}" * 0):
        headers = {"Content-Type": "application/json", **key_headers}
        response = requests.post(url, data=body, headers=headers)
        error = _is_json_error(response, 400)
        assert error["field"] == "body"
    big = json.dumps({"isbn": "0306406152", "rating": 5, "pad": "x" * 100_000}).encode()
    for chunked in (False, True):
        status, body = _raw_post(
            server.url,
            "/v1/users/1/ratings",
            big,
            chunked=chunked,
            auth=key_headers["Authorization"],
        )
        assert status == 413, (chunked, body[:300])
        assert json.loads(body)["error"]["status"] == 413
    # the worker is still there and answers
    assert requests.get(f"{server.url}/livez", timeout=5).status_code == 200


def test_isbn_failing_its_check_digit_names_no_book(client, key_headers):
    for isbn in BAD_CHECK_DIGIT:
        for path in (f"/v1/books/{isbn}", f"/v1/books/{isbn}/similar"):
            error = _is_json_error(client.get(path), 404)
            assert (error["code"], error["field"]) == ("unknown_book", "isbn")
            assert "check-digit" in error["message"]
        posted = client.post(
            "/v1/users/5/ratings", json={"isbn": isbn, "rating": 5}, headers=key_headers
        )
        assert _is_json_error(posted, 404)["field"] == "isbn"
    # a wrong shape stays a 400
    assert _is_json_error(client.get("/v1/books/03064061"), 400)["field"] == "isbn"


def test_the_document_names_the_isbn_format(client):
    spec = client.get("/openapi.json").get_json()
    path_param = spec["paths"]["/v1/books/{isbn}"]["get"]["parameters"][0]
    assert path_param["schema"]["format"] == "isbn"
    assert "check digit" in path_param["schema"]["description"]
    ratings = spec["paths"]["/v1/users/{user_id}/ratings"]["post"]
    body = ratings["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert body["properties"]["isbn"]["format"] == "isbn"
    assert "404" in ratings["responses"]


# -- item 9: full matches -----------------------------------------------------------------
def test_patterns_refuse_a_trailing_newline(client):
    response = client.get("/livez", environ_overrides={"HTTP_X_REQUEST_ID": "abc123\n"})
    assert response.headers["X-Request-Id"] != "abc123\n"
    assert len(response.headers["X-Request-Id"]) == 32
    kept = client.get("/livez", headers={"X-Request-Id": "abc123"})
    assert kept.headers["X-Request-Id"] == "abc123"
    reload = client.post("/admin/reload?version=v1%0A", headers=AUTH)
    assert _is_json_error(reload, 400)["field"] == "version"
    with pytest.raises(RegistryError):
        check_version("v1\n")
    assert check_version("v1") == "v1"


# -- item 9: background threads and buffers --------------------------------------------------
def test_periodic_logs_a_failing_step_and_keeps_running(caplog):
    calls = []

    def step():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("first step fails")

    periodic = Periodic("test-periodic", 0.02, step)
    with caplog.at_level(logging.ERROR, logger="serving.periodic"):
        periodic.start()
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = [t for t in threading.enumerate() if t.name == "test-periodic"]
        periodic.stop()
    assert len(calls) >= 3 and alive
    assert periodic.failures == 1
    failed = [r for r in caplog.records if "test-periodic" in r.getMessage()]
    assert failed and failed[0].exc_info[0] is RuntimeError


def test_periodic_first_final_and_nice_options():
    """``first`` steps before the first wait, ``final=False`` skips the step on stop, and
    ``nice`` lowers the thread's own priority, not the process's."""
    seen: list[tuple[str, int]] = []
    stepped = threading.Event()

    def step() -> None:
        seen.append((threading.current_thread().name,
                     os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        stepped.set()

    process_nice = os.getpriority(os.PRIO_PROCESS, 0)
    periodic = Periodic("test-first", 3600, step, first=True, final=False, nice=5)
    periodic.start()
    assert stepped.wait(5), "no step before the first (hour-long) wait"
    assert periodic.alive
    periodic.stop()
    assert not periodic.alive
    assert seen == [("test-first", min(process_nice + 5, 19))]  # one step: none on stop
    assert os.getpriority(os.PRIO_PROCESS, 0) == process_nice

    plain = Periodic("test-plain", 3600, step)
    plain.start()
    plain.stop()
    assert len(seen) == 2 and seen[-1][0] == "MainThread"  # the final step, in the caller


def test_pending_metric_samples_are_bounded(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics(flush_interval_s=3600)  # a folding thread that never gets to run
    metrics.start()
    try:
        n = MAX_PENDING_SAMPLES * 2 + 10
        for _ in range(n):
            metrics.observe_request("/a", "GET", 200, 0.001)
        counted = metrics.registry.get_sample_value(
            "bookrec_http_requests_total", {"route": "/a", "method": "GET", "status": "200"}
        )
        assert counted is not None and n - counted < MAX_PENDING_SAMPLES  # folded on the way
    finally:
        metrics.stop()
    total = metrics.registry.get_sample_value(
        "bookrec_http_requests_total", {"route": "/a", "method": "GET", "status": "200"}
    )
    assert total == n  # nothing lost


def test_a_damaged_local_copy_is_fetched_again(make_app, serving_settings, model_set):
    champion = model_set.versions[0]
    first = make_app(serving_settings)
    assert first.extensions["bookrec"].holder.version == champion
    local = serving_settings.home_dir / "serving" / "models" / champion
    array = next(local.glob("cf_data.npy"))
    array.write_bytes(array.read_bytes()[:-8] + b"damaged!")  # the manifest still matches

    second = make_app(serving_settings)  # a restarted worker finds the damaged copy
    holder = second.extensions["bookrec"].holder
    assert holder.last_result["status"] == "reloaded", holder.last_result
    assert holder.version == champion
    assert not array.read_bytes().endswith(b"damaged!")


# -- item 2: the client behind proxies; item 3 (serving part): refusals are counted ---------
def _statuses(client, n: int, forwarded: str | None, peer: str = "10.0.0.9") -> list[int]:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return [
        client.get("/v1/books/popular", headers=headers, environ_base={"REMOTE_ADDR": peer})
        .status_code
        for _ in range(n)
    ]


def test_without_trusted_proxies_a_spoofed_forwarded_for_changes_nothing(
    make_app, serving_settings, engine
):
    settings = serving_settings.model_copy(update={"rate_limit": "2 per minute"})
    app = make_app(settings)
    client = app.test_client()
    assert _statuses(client, 2, "203.0.113.1") == [200, 200]
    assert _statuses(client, 1, "203.0.113.2") == [429]  # a new spoofed address: same bucket
    app.extensions["bookrec"].apilog.flush()
    with engine.connect() as conn:
        clients = conn.execute(sa.text("SELECT DISTINCT client FROM api_logs")).scalars().all()
    assert clients == ["10.0.0.9"]


def test_trusted_proxy_hops_give_each_client_its_own_limit_and_log(
    make_app, serving_settings, engine
):
    settings = serving_settings.model_copy(
        update={"rate_limit": "2 per minute", "trusted_proxies": 1}
    )
    app = make_app(settings)
    client = app.test_client()
    # The load balancer appends the address it saw; a client-sent value before it is ignored.
    assert _statuses(client, 3, "198.51.100.7, 203.0.113.1") == [200, 200, 429]
    assert _statuses(client, 2, "203.0.113.2") == [200, 200]  # another client, another bucket
    # IPv6: one /64 is one client; the next /64 is another
    assert _statuses(client, 2, "2001:db8:0:1::1") == [200, 200]
    assert _statuses(client, 1, "2001:db8:0:1:ffff::2") == [429]
    assert _statuses(client, 1, "2001:db8:0:2::1") == [200]
    app.extensions["bookrec"].apilog.flush()
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT client, count(*) FROM api_logs GROUP BY client")
        ).all()
    # the real clients are logged, the refused requests are not
    assert dict(logged) == {"203.0.113.1": 2, "203.0.113.2": 2, "2001:db8:0:1::1": 2,
                            "2001:db8:0:2::1": 1}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert metric_total(metrics, "bookrec_rate_limited_total") == 2
    assert metric_total(metrics, "bookrec_http_requests_total", status="429") == 2


def test_forwarded_for_under_gunicorn(start_gunicorn, serving_settings, engine):
    settings = serving_settings.model_copy(update={"rate_limit": "2 per minute"})
    url = "/v1/books/popular?k=2"

    def statuses(server, forwarded: str, n: int) -> list[int]:
        headers = {"X-Forwarded-For": forwarded}
        return [
            requests.get(server.url + url, headers=headers, timeout=5).status_code
            for _ in range(n)
        ]

    plain = start_gunicorn(settings, workers=1)
    assert statuses(plain, "203.0.113.1", 2) == [200, 200]
    assert statuses(plain, "203.0.113.2", 1) == [429]  # spoofing does not buy a new bucket
    plain.stop()
    behind = start_gunicorn(settings, workers=1, extra_env={"BOOKREC_TRUSTED_PROXIES": "1"})
    assert statuses(behind, "203.0.113.3", 3) == [200, 200, 429]
    assert statuses(behind, "203.0.113.4", 1) == [200]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            logged = conn.execute(
                sa.text("SELECT client, status FROM api_logs WHERE route = '/v1/books/popular'")
            ).all()
        if len(logged) >= 5:
            break
        time.sleep(0.2)
    assert sorted(logged) == sorted(
        [("127.0.0.1", 200)] * 2 + [("203.0.113.3", 200)] * 2 + [("203.0.113.4", 200)]
    )


# -- item 5: slow statements vs lost connections; search from its index ---------------------
def test_a_statement_timeout_fails_one_search_and_opens_no_breaker(
    make_app, serving_settings, engine, model_set, monkeypatch, key_headers
):
    import serving.catalog

    monkeypatch.setattr(serving.catalog, "SEARCH_STATEMENT_TIMEOUT_MS", 300, raising=False)
    client = make_app(serving_settings).test_client()
    book = model_set.books.iloc[2]
    with engine.connect() as locker:  # holds books so that a search waits past its timeout
        locker.execute(sa.text("BEGIN; LOCK TABLE books IN ACCESS EXCLUSIVE MODE"))
        slow = client.get("/v1/books?q=dragon saga")
        locker.execute(sa.text("ROLLBACK"))
    assert _is_json_error(slow, 503)["code"] == "search_failed"
    assert int(slow.headers["Retry-After"]) >= 1
    # right after it (within the breaker's second) the database still answers everything
    details = client.get(f"/v1/books/{book.isbn}")
    assert details.status_code == 200 and details.get_json()["source"] == "database"
    rated = client.post(
        "/v1/users/3/ratings", json={"isbn": book.isbn, "rating": 7}, headers=key_headers
    )
    assert rated.status_code == 201
    assert client.get("/v1/books?q=dragon saga").get_json()["count"] == 12


def test_search_is_served_by_the_full_text_index(engine):
    from serving.catalog import _SEARCH_SELECT

    with engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                sa.text(f"EXPLAIN {_SEARCH_SELECT}"),
                {"tsquery": "'dragon' & 'sa':*", "prefix": "dragon sa%", "candidates": 200,
                 "limit": 20},
            ).scalars()
        )
    assert "ix_books_search_doc" in plan, plan


def test_search_matches_every_word_the_last_as_a_prefix(client):
    assert client.get("/v1/books?q=dragon sa").get_json()["count"] == 12
    assert client.get("/v1/books?q=saga dragon").get_json()["count"] == 12  # any order
    assert client.get("/v1/books?q=dragon chef").get_json()["count"] == 0  # every word
    first = client.get("/v1/books?q=ann archer").get_json()["items"][0]
    assert first["author"] == "Ann Archer"


# -- item 7: timeouts ----------------------------------------------------------------------
def test_gunicorn_keeps_idle_connections_longer_than_the_load_balancer(tmp_path):
    import re
    import subprocess
    import sys

    from tests.conftest import REPO

    template = (REPO / "deployments" / "aws" / "template.yaml").read_text()
    alb_idle = int(re.search(r"idle_timeout\.timeout_seconds, Value: \"(\d+)\"", template)[1])
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    keepalive = subprocess.run(
        [sys.executable, "-c", "import runpy; print(runpy.run_path("
         "'serving/gunicorn_conf.py')['keepalive'])"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert int(keepalive) > alb_idle


def _wait_for_startup_checks(url: str, workers: int) -> None:
    """Until every worker has made the pointer check it makes after the fork (its
    ``last_reload`` is no longer the initial load's). Asked on new connections, in bursts,
    since which worker accepts one is the kernel's choice."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(_: int) -> dict:
        headers = {**AUTH, "Connection": "close"}
        return requests.get(f"{url}/admin/model", headers=headers, timeout=10).json()

    checked: set[int] = set()
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(max_workers=4) as pool:
        while len(checked) < workers:
            assert time.monotonic() < deadline, f"startup checks seen: {sorted(checked)}"
            for info in pool.map(ask, range(4)):
                if (info.get("last_reload") or {}).get("reason") not in (None, "startup"):
                    checked.add(info["pid"])
            time.sleep(0.1)


def test_admin_reload_answers_at_once_and_the_caller_waits_for_every_worker(
    start_gunicorn, serving_settings, model_set
):
    from bookrec.registry import Registry
    from tasks.reload import instance_workers, reload_and_wait

    old, new = model_set.versions
    quiet = serving_settings.model_copy(update={"model_poll_interval_s": 3600.0})
    # No Redis and no polling: only the worker that gets the call reloads.
    server = start_gunicorn(quiet, workers=3, extra_env={"BOOKREC_RELOAD_STAGGER_S": "2"})
    deadline = time.monotonic() + 60
    while len(instance_workers(quiet, server.url)["workers"]) < 3:
        assert time.monotonic() < deadline, "workers did not all report a version"
        time.sleep(0.2)
    _wait_for_startup_checks(server.url, 3)  # or a late one would see the promotion below
    Registry.from_settings(quiet).promote(new, by="test", reason="reload")
    started = time.monotonic()
    answer = requests.post(f"{server.url}/admin/reload?version={new}", headers=AUTH, timeout=10)
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    assert time.monotonic() - started < 1.5  # not after the load and its stagger
    stuck = reload_and_wait(quiet, server.url, new, deadline_s=6)
    assert stuck["status"] == "timeout" and stuck["matches"] is False
    assert "not every worker serves" in stuck["error"]
    # each POST reached one worker (the task's own call too); at least one never heard of it
    assert old in stuck["workers"].values()
    while new not in instance_workers(quiet, server.url)["workers"].values():
        assert time.monotonic() - started < 60, "the called worker did not reload"
        time.sleep(0.2)
    server.stop()

    polling = start_gunicorn(serving_settings, workers=3)  # polls every 0.5 s
    Registry.from_settings(serving_settings).promote(old, by="test", reason="back")
    done = reload_and_wait(serving_settings, polling.url, old, deadline_s=60)
    assert done["status"] == "reloaded" and done["matches"] is True
    assert len(done["workers"]) == 3 and set(done["workers"].values()) == {old}
