"""A rollout on a real gunicorn: every worker picks up its start and its end (pub/sub, or
polling alone), a reader gets the same variant from every worker, and requests under
load never fail while the variants come and go."""

from __future__ import annotations

import re
import threading
from collections import defaultdict

import requests

from bookrec import rollout as ro
from bookrec.registry import Registry
from tasks.reload import publish_signal
from tests.serving.test_serving_gunicorn import wait_for, worker_versions
from tests.utils.serving import ADMIN_TOKEN

READERS = list(range(1, 41))


def worker_rollouts(url: str) -> dict[str, str]:
    """pid -> rollout id each live worker holds a candidate for, from the merged /metrics."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return {
        pid: rid
        for pid, rid, value in re.findall(
            r'bookrec_rollout_info\{pid="(\d+)",rollout_id="([0-9a-f]+)"\} ([0-9.]+)', text
        )
        if float(value) == 1.0
    }


class Load:
    """Readers' GETs in a loop on fresh connections (so they spread over the workers);
    every answer is kept: (reader, status, variant, model version, worker)."""

    def __init__(self, url: str, threads: int = 3):
        self.url = url
        self.answers: list[tuple[int, int, str | None, str, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        i = n
        while not self._stop.is_set():
            user = READERS[i % len(READERS)]
            i += 3
            try:
                r = requests.get(
                    f"{self.url}/v1/users/{user}/recommendations?k=5",
                    headers={"Connection": "close"},
                    timeout=10,
                )
                self.answers.append(
                    (user, r.status_code, r.headers.get("X-Variant"),
                     r.headers.get("X-Model-Version", ""), r.headers.get("X-Request-Id", "")[:16])
                )
            except requests.RequestException as exc:
                self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def _answers(url: str, rounds: int) -> list[tuple[int, str | None, str, str]]:
    out = []
    for _ in range(rounds):
        for user in READERS:
            r = requests.get(
                f"{url}/v1/users/{user}/recommendations?k=5",
                headers={"Connection": "close"},
                timeout=10,
            )
            assert r.status_code == 200
            out.append((user, r.headers.get("X-Variant"), r.headers["X-Model-Version"],
                        r.headers["X-Request-Id"][:16]))
    return out


def test_rollout_start_and_end_reach_every_worker_under_load(
    start_gunicorn, serving_settings, model_set, redis_server, key_headers
):
    champion, candidate = model_set.versions
    settings = serving_settings.model_copy(
        update={"redis_url": redis_server["url"], "model_poll_interval_s": 3600.0}
    )
    server = start_gunicorn(settings, workers=2)
    wait_for(lambda: len(worker_versions(server.url)) == 2, 60)
    registry = Registry.from_settings(settings)
    with Load(server.url) as load:
        wait_for(lambda: len(load.answers) > 20, 30)
        record = registry.start_rollout(
            candidate, interleave=0.4, canary=0.3, started_by="tests"
        )
        assert publish_signal(settings, None)["receivers"] == 2
        wait_for(lambda: set(worker_rollouts(server.url).values()) == {record["id"]}
                 and len(worker_rollouts(server.url)) == 2, 30)
        info = requests.get(
            f"{server.url}/admin/model", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
        ).json()
        assert len(info["workers_rollouts"]) == 2

        # Every worker now assigns each reader the same variant, every time.
        seen = _answers(server.url, 5)
        by_reader: dict[int, set] = defaultdict(set)
        workers_of: dict[int, set] = defaultdict(set)
        for user, variant, version, worker in seen:
            by_reader[user].add((variant, version))
            workers_of[user].add(worker)
        expected_version = {
            "champion": champion, "canary": candidate, "interleave": f"{champion}+{candidate}"
        }
        for user in READERS:
            variant = ro.assign(user, record)
            assert by_reader[user] == {(variant, expected_version[variant])}, user
        assert len(set().union(*workers_of.values())) == 2  # both workers answered
        assert sum(len(w) == 2 for w in workers_of.values()) >= 5  # many readers, both workers
        assert {v for v, _ in set().union(*by_reader.values())} == {
            "champion", "canary", "interleave"
        }

        # Read your writes in each variant (Redis cache, both workers).
        for variant in ("canary", "interleave"):
            user = next(u for u in READERS if ro.assign(u, record) == variant)
            url = f"{server.url}/v1/users/{user}/recommendations?k=5"
            top = requests.get(url, timeout=10).json()["items"][0]["isbn"]
            posted = requests.post(
                f"{server.url}/v1/users/{user}/ratings", json={"isbn": top, "rating": 9},
                headers=key_headers, timeout=10,
            )
            assert posted.status_code == 201
            for _ in range(12):  # fresh connections: both workers answer some
                r = requests.get(url, timeout=10, headers={"Connection": "close"})
                assert r.headers["X-Variant"] == variant
                assert top not in {i["isbn"] for i in r.json()["items"]}

        mark = len(load.answers)
        registry.end_rollout(record["id"], "rolled_back", "test")
        publish_signal(settings, None)
        wait_for(lambda: worker_rollouts(server.url) == {}, 30)
        after = _answers(server.url, 2)
        assert {(v, m) for _, v, m, _ in after} == {(None, champion)}
        wait_for(lambda: len(load.answers) > mark + 20, 30)
    assert not load.errors
    statuses = {status for _, status, _, _, _ in load.answers}
    assert statuses == {200}, f"{len(load.answers)} answers, statuses {statuses}"
    # The load saw all three variants while the rollout ran, and none before or after.
    assert {v for _, _, v, _, _ in load.answers} >= {None, "champion", "canary", "interleave"}


def test_polling_alone_starts_and_ends_the_rollout_on_every_worker(
    start_gunicorn, serving_settings, model_set
):
    champion, candidate = model_set.versions
    server = start_gunicorn(serving_settings, workers=2)  # no Redis: polls every 0.5 s
    wait_for(lambda: len(worker_versions(server.url)) == 2, 60)
    registry = Registry.from_settings(serving_settings)
    record = registry.start_rollout(candidate, interleave=0.0, canary=1.0, started_by="tests")
    wait_for(lambda: len(worker_rollouts(server.url)) == 2, 30)
    assert {m for _, _, m, _ in _answers(server.url, 1)} == {candidate}
    registry.end_rollout(record["id"], "rolled_back", "test")
    wait_for(lambda: worker_rollouts(server.url) == {}, 30)
    assert {m for _, _, m, _ in _answers(server.url, 1)} == {champion}

    # Promotion the way the rollout flow does it: the champion moves to the candidate while
    # the rollout still runs (every reader then gets the new champion, no variant), then
    # the rollout ends.
    record = registry.start_rollout(candidate, interleave=0.5, canary=0.5, started_by="tests")
    wait_for(lambda: set(worker_rollouts(server.url).values()) == {record["id"]}
             and len(worker_rollouts(server.url)) == 2, 30)
    assert {v for _, v, _, _ in _answers(server.url, 1)} == {"canary", "interleave"}
    registry.promote(candidate, by="tests", reason="rollout promoted")
    wait_for(lambda: set(worker_versions(server.url).values()) == {candidate}, 30)
    assert {(v, m) for _, v, m, _ in _answers(server.url, 1)} == {(None, candidate)}
    registry.end_rollout(record["id"], "promoted", "test")
    wait_for(lambda: worker_rollouts(server.url) == {}, 30)
    assert {(v, m) for _, v, m, _ in _answers(server.url, 1)} == {(None, candidate)}


def test_the_reload_wait_covers_the_rollout_every_worker_holds(
    start_gunicorn, serving_settings, model_set, redis_server
):
    """The rollout flow's reload (``check_rollout``) returns only once every worker holds
    the rollout's candidate at its start, and none at its end; a rollout no worker can
    hold times out, where a wait on the champion alone would have returned at once."""
    from tasks.reload import reload_and_wait

    champion, candidate = model_set.versions
    settings = serving_settings.model_copy(
        update={"redis_url": redis_server["url"], "model_poll_interval_s": 3600.0}
    )
    server = start_gunicorn(settings, workers=2)
    wait_for(lambda: len(worker_versions(server.url)) == 2, 60)
    registry = Registry.from_settings(settings)
    record = registry.start_rollout(candidate, interleave=0.5, canary=0.5, started_by="tests")

    stuck = reload_and_wait(settings, server.url, champion, deadline_s=3,
                            check_rollout=True, rollout="0" * 32)
    assert stuck["status"] == "timeout" and stuck["matches"] is False
    assert "with rollout " + "0" * 32 in stuck["error"]
    assert reload_and_wait(settings, server.url, champion, deadline_s=3)["status"] == "reloaded"

    assert publish_signal(settings, None)["receivers"] == 2
    started = reload_and_wait(settings, server.url, champion, check_rollout=True,
                              rollout=record["id"])
    assert started["status"] == "reloaded", started
    assert set(started["workers"]) == set(started["workers_rollouts"])
    assert set(started["workers_rollouts"].values()) == {record["id"]}
    assert worker_rollouts(server.url) == started["workers_rollouts"]

    registry.end_rollout(record["id"], "rolled_back", "test")
    publish_signal(settings, None)
    ended = reload_and_wait(settings, server.url, champion, check_rollout=True, rollout=None)
    assert ended["status"] == "reloaded" and ended["workers_rollouts"] == {}
    assert len(ended["workers"]) == 2 and worker_rollouts(server.url) == {}
