"""API keys: the ``bookrec apikeys`` commands, and writes refused without a valid key on a
real multi-worker gunicorn (nothing stored), revocation, binding to readers, key rates."""

from __future__ import annotations

import hashlib
import json
import time

import requests
import sqlalchemy as sa

from bookrec.apikeys import create_key, find_key, revoke_key
from cli.main import main
from tests.utils.frames import genre_isbns


def _counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        ratings = conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar()
        events = conn.execute(sa.text("SELECT count(*) FROM rating_events")).scalar()
    return int(ratings), int(events)


def test_apikeys_create_list_revoke_commands(cli_db, engine, capsys):
    assert main(["apikeys", "create", "partner app", "--rate-per-minute", "7", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert set(created) >= {"id", "name", "key", "rate_per_minute"}
    assert (created["name"], created["rate_per_minute"]) == ("partner app", 7)
    key = created["key"]
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT * FROM api_keys WHERE id = :id"), {"id": created["id"]}
        ).one()
    # Only the hash is stored; the key appears nowhere in the row.
    assert stored.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in " ".join(str(v) for v in stored)
    assert find_key(engine, key).rate_per_minute == 7

    assert main(["apikeys", "list", "--json"]) == 0
    listed = {k["id"]: k for k in json.loads(capsys.readouterr().out)}
    mine = listed[created["id"]]
    assert mine["revoked_at"] is None and "key" not in mine and "key_sha256" not in mine
    assert main(["apikeys", "list"]) == 0
    assert key not in capsys.readouterr().out

    assert main(["apikeys", "revoke", str(created["id"])]) == 0
    assert f"API key {created['id']} revoked" in capsys.readouterr().out
    assert find_key(engine, key).revoked is True
    assert main(["apikeys", "revoke", "999999999"]) == 1
    assert "no API key 999999999" in capsys.readouterr().err
    assert main(["apikeys", "create", "x", "--rate-per-minute", "0"]) == 2
    assert "rate_per_minute" in capsys.readouterr().err


def test_writes_need_a_valid_key_on_every_worker(
    start_gunicorn, serving_settings, engine, model_set
):
    ttl_s = 1.0
    server = start_gunicorn(
        serving_settings, workers=2, extra_env={"BOOKREC_API_KEY_CACHE_TTL_S": str(ttl_s)}
    )
    url = f"{server.url}/v1/users/5/ratings"
    body = {"isbn": genre_isbns("manor")[0], "rating": 8}
    good = create_key(engine, "good", rate_per_minute=100_000)
    unknown = "bk_" + good["key"][3:11] + "_" + "A" * 43  # the right prefix, a wrong secret
    before = _counts(engine)
    refusals = [
        ({}, "needs an API key"),
        ({"Authorization": "Bearer not-a-key"}, "not valid"),
        ({"Authorization": f"Bearer {unknown}"}, "not valid"),
        ({"Authorization": f"Basic {good['key']}"}, "expected 'Bearer <key>'"),
    ]
    for _ in range(2):  # both workers (connections are not reused by requests.post)
        for headers, message in refusals:
            response = requests.post(url, json=body, headers=headers, timeout=10)
            assert response.status_code == 401, response.text
            error = response.json()["error"]
            assert error["code"] == "unauthorized" and message in error["message"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert _counts(engine) == before  # nothing stored

    auth = {"Authorization": f"Bearer {good['key']}"}
    for _ in range(4):
        assert requests.post(url, json=body, headers=auth, timeout=10).status_code == 201
    assert _counts(engine) == (before[0] + 1, before[1] + 4)  # one rating, four events
    # Reads stay open, with or without a key.
    assert requests.get(f"{server.url}/v1/books/popular", timeout=10).status_code == 200

    revoke_key(engine, good["id"])
    time.sleep(ttl_s + 0.5)
    after_revoke = _counts(engine)
    for _ in range(6):
        response = requests.post(url, json=body, headers=auth, timeout=10)
        assert response.status_code == 401
        assert "revoked" in response.json()["error"]["message"]
    assert _counts(engine) == after_revoke


def test_a_key_bound_to_readers_writes_only_for_them(client, engine):
    bound = create_key(engine, "reader 7's app", rate_per_minute=100, user_ids=[7])
    auth = {"Authorization": f"Bearer {bound['key']}"}
    body = {"isbn": genre_isbns("herbs")[1], "rating": 6}
    refused = client.post("/v1/users/8/ratings", json=body, headers=auth)
    assert refused.status_code == 403 and refused.get_json()["error"]["field"] == "user_id"
    assert client.post("/v1/users/7/ratings", json=body, headers=auth).status_code == 201
    with engine.connect() as conn:
        users = conn.execute(sa.text("SELECT user_id FROM rating_events")).scalars().all()
    assert users == [7]


def test_a_valid_key_is_limited_by_its_own_rate_only(
    start_gunicorn, serving_settings, engine, redis_server
):
    """The per-address limit is 3 per minute; two keys from the same address get their own
    rates (12 and 4) across two workers that share counts through Redis."""
    settings = serving_settings.model_copy(
        update={"rate_limit": "3 per minute", "redis_url": redis_server["url"]}
    )
    server = start_gunicorn(settings, workers=2)
    url = f"{server.url}/v1/users/9/ratings"
    body = {"isbn": genre_isbns("dragon")[2], "rating": 9}
    fast = create_key(engine, "fast", rate_per_minute=12)
    slow = create_key(engine, "slow", rate_per_minute=4)

    def statuses(key: dict | None, n: int) -> list[int]:
        headers = {"Authorization": f"Bearer {key['key']}"} if key else {}
        out = []
        for _ in range(n):
            out.append(requests.post(url, json=body, headers=headers, timeout=10).status_code)
            time.sleep(0.06)  # beyond the limiter's settling interval: counts are exact
        return out

    # readyz does not count; anonymous reads are limited per address.
    anonymous = []
    for _ in range(6):
        anonymous.append(requests.get(f"{server.url}/v1/books/popular", timeout=10).status_code)
        time.sleep(0.06)  # beyond the limiter's settling interval, as below
    assert anonymous.count(429) >= 1
    for key, sent in ((fast, 16), (slow, 8)):
        codes = statuses(key, sent)
        admitted = codes.count(201)
        # The workers settle their counts through Redis every 50 ms, so the other worker
        # may have admitted one more before this one learnt the global count.
        assert key["rate_per_minute"] <= admitted <= key["rate_per_minute"] + 1, codes
        assert codes == [201] * admitted + [429] * (sent - admitted)
    refused = requests.post(
        url, json=body, headers={"Authorization": f"Bearer {slow['key']}"}, timeout=10
    )
    assert f"4 per minute for API key {slow['id']}" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1
