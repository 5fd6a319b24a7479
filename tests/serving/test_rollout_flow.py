"""Each decision path of the rollout flow on a small replay: Prefect's test harness, a real
gunicorn (2 workers) with Redis, PostgreSQL, and readers replayed by ``bench/replay.py``.

The champion is a small hybrid; the candidate the same package with popularity only
(``bench.replay.fit_most_popular``), so the two lists differ. Each reader's held-out truth
is chosen from what one model shows and the other does not, so the readers prefer a known
side: the candidate (promoted), the champion (rolled back). A candidate that fails half
its requests (the test-only fault switch) is rolled back at its first check; with no
readers at all the rule never sees the candidate better and rolls back after its
extensions; ``bookrec rollout --stop`` ends a rollout the flow then leaves alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.replay import FAULT_ENV, Replayer, fit_most_popular
from bookrec import audit
from bookrec.models.dataset import build_dataset
from bookrec.models.persist import load_model, save_model
from bookrec.registry import Registry
from bookrec.settings import get_settings
from tests.utils.frames import book_frame, rating_frame
from tests.utils.serving import ADMIN_TOKEN, settings_env

REPO = Path(__file__).resolve().parents[2]
CANDIDATE = "20260103T000000Z-cccccc"
READERS = list(range(1, 91))
FAST = {"bake_minutes": 0.2, "check_every_s": 2.0, "max_extensions": 1, "min_readers": 15,
        "min_informative": 8, "min_requests": 30, "bootstrap": 500, "smoke": False}


@pytest.fixture(scope="module")
def popular_folder(tmp_path_factory) -> Path:
    """The most-popular candidate fitted on the champion's ratings, as a version folder."""
    folder = tmp_path_factory.mktemp("rollout-models") / CANDIDATE
    model = fit_most_popular(build_dataset(rating_frame(seed=0), book_frame()))
    save_model(model, folder, extra={"version": CANDIDATE})
    return folder


@pytest.fixture
def rollout_env(serving_settings, redis_server, popular_folder, start_gunicorn, key_headers,
                monkeypatch, request):
    """The registry with the candidate, a 2-worker gunicorn, and the flows' environment."""
    settings = serving_settings.model_copy(update={"redis_url": redis_server["url"]})
    registry = Registry.from_settings(settings)
    registry.add_version(popular_folder, CANDIDATE)
    fault = getattr(request, "param", None)
    server = start_gunicorn(settings, workers=2,
                            extra_env={FAULT_ENV: f"{CANDIDATE}={fault}"} if fault else None)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BOOKREC_SERVING_URLS", server.url)
    monkeypatch.setenv("BOOKREC_ADMIN_TOKEN", ADMIN_TOKEN)
    get_settings.cache_clear()
    yield {"settings": settings, "registry": registry, "server": server,
           "key": key_headers["Authorization"].removeprefix("Bearer ")}
    get_settings.cache_clear()


def _lists(folder: Path) -> dict[int, list[str]]:
    """What a model shows each reader (no ratings in PostgreSQL: the training history)."""
    model = load_model(folder)
    return {u: [r.isbn for r in model.recommend_history({}, k=10, user_id=u)] for u in READERS}


def _truth(prefer: str, champion_folder: Path, candidate_folder: Path) -> dict[int, dict]:
    """Held-out books only ``prefer``'s lists show (each reader likes what that side shows)."""
    champ, cand = _lists(champion_folder), _lists(candidate_folder)
    liked = {u: [b for b in (cand[u] if prefer == "candidate" else champ[u])
                 if b not in (champ[u] if prefer == "candidate" else cand[u])]
             for u in READERS}
    return {u: {b: 9 for b in books[:4]} for u, books in liked.items() if books}


def _replay(env, truth, stop: threading.Event) -> threading.Thread:
    replayer = Replayer(env["server"].url, env["key"], truth, rate=40.0, p_shown=1.0,
                        ratings_per_reader=2, threads=4, seed=11)
    thread = threading.Thread(target=replayer.run, args=(stop,), daemon=True)
    thread.start()
    thread.replayer = replayer  # type: ignore[attr-defined]
    return thread


def _rows(engine, rollout_id: str) -> list:
    """The audit rows of one rollout (earlier tests' rows of the same version stay)."""
    return [r for r in audit.decisions_for(engine, CANDIDATE)
            if ((r.online_figures or {}).get("rollout") or {}).get("id") == rollout_id]


def _served_versions(url: str) -> set[str]:
    return {requests.get(f"{url}/livez", timeout=5).headers["X-Model-Version"]
            for _ in range(20)}


def _run(env, truth, **params):
    from flows.rollout import rollout_flow

    stop = threading.Event()
    thread = _replay(env, truth, stop) if truth else None
    try:
        result = rollout_flow(version=CANDIDATE,
                              **{"interleave": 0.5, "canary": 0.0, **FAST, **params})
    finally:
        stop.set()
        if thread:
            thread.join(timeout=30)
    report = thread.replayer.report.to_json() if thread else None  # type: ignore[attr-defined]
    return result, report


def test_readers_who_prefer_the_candidate_promote_it(prefect_harness, rollout_env, model_set,
                                                     popular_folder, engine):
    champion, _ = model_set.versions
    truth = _truth("candidate", model_set.folders[champion], popular_folder)
    result, report = _run(rollout_env, truth)
    assert result["decision"] == "promoted", result["reason"]
    assert report["failures"] == 0 and report["transport_errors"] == {}
    arm = result["verdict"]["arms"][0]
    assert arm["arm"] == "interleave" and arm["verdict"] == "better" and arm["low"] > 0
    registry = rollout_env["registry"]
    pointer = registry.champion()
    assert pointer["version"] == CANDIDATE and pointer["previous"] == [champion]
    assert registry.current_rollout() is None
    assert registry.rollout(result["rollout_id"])["decision"] == "promoted"
    rows = _rows(engine, result["rollout_id"])
    assert [(r.decision, r.decided_by) for r in rows] == [("rolling_out", "rollout"),
                                                          ("promoted", "rollout")]
    online = rows[-1].online_figures
    assert online["rollout"]["id"] == result["rollout_id"] and len(online["checks"]) >= 2
    assert online["checks"][-1]["interleave_credits"]["candidate"] > 0
    assert audit.champion_history(engine)[-1].version == CANDIDATE
    deadline = time.monotonic() + 30
    while _served_versions(rollout_env["server"].url) != {CANDIDATE}:
        assert time.monotonic() < deadline, "serving did not move to the promoted candidate"
        time.sleep(0.5)


def test_readers_who_prefer_the_champion_roll_the_candidate_back(
    prefect_harness, rollout_env, model_set, popular_folder, engine
):
    champion, _ = model_set.versions
    truth = _truth("champion", model_set.folders[champion], popular_folder)
    result, report = _run(rollout_env, truth)
    assert result["decision"] == "rolled_back", result["reason"]
    assert "candidate is worse" in result["reason"]
    assert report["failures"] == 0
    registry = rollout_env["registry"]
    assert registry.champion()["version"] == champion
    assert registry.status(CANDIDATE)["status"] == "rejected"
    assert registry.rollout(result["rollout_id"])["decision"] == "rolled_back"
    last = audit.decisions_for(engine, CANDIDATE)[-1]
    assert (last.decision, last.champion_before, last.champion_after) == (
        "rollout_rolled_back", champion, champion)
    assert last.online_figures["verdict"]["arms"][0]["verdict"] == "worse"


@pytest.mark.parametrize("rollout_env", [0.5], indirect=True)
def test_a_failing_candidate_is_rolled_back_at_its_first_checks(
    prefect_harness, rollout_env, model_set, popular_folder, engine
):
    champion, _ = model_set.versions
    truth = _truth("candidate", model_set.folders[champion], popular_folder)
    result, report = _run(rollout_env, truth, bake_minutes=2.0, canary=0.2)
    assert result["decision"] == "rolled_back"
    assert "breach: candidate error rate" in result["reason"]
    assert result["elapsed_s"] < 60  # long before the two-minute bake ends
    assert report["injected_faults"] > 0 and report["failures"] == 0
    assert rollout_env["registry"].champion()["version"] == champion
    last = audit.decisions_for(engine, CANDIDATE)[-1]
    assert last.decision == "rollout_rolled_back" and last.online_figures["verdict"]["breach"]


def test_without_readers_the_rule_extends_then_rolls_back(prefect_harness, rollout_env,
                                                          model_set, engine):
    champion, _ = model_set.versions
    result, _ = _run(rollout_env, None, bake_minutes=0.05, check_every_s=1.0,
                     max_extensions=2, extend_minutes=0.03)
    assert result["decision"] == "rolled_back"
    assert "not shown better after 2 extension(s)" in result["reason"]
    assert result["verdict"]["details"]["look"] == 3
    assert rollout_env["registry"].champion()["version"] == champion


def _cli(args: list[str], settings, server_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.update(settings_env(settings))
    env["BOOKREC_SERVING_URLS"] = server_url
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_status_json_and_stop_from_the_command(prefect_harness, rollout_env, model_set,
                                               popular_folder, engine):
    champion, _ = model_set.versions
    settings = rollout_env["settings"]
    registry = rollout_env["registry"]
    url = rollout_env["server"].url
    seen: dict = {}

    def operator() -> None:
        deadline = time.monotonic() + 60
        while registry.current_rollout() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # let a few readers through
        seen["status"] = _cli(["rollout", "--status", "--json"], settings, url)
        rollout_id = registry.current_rollout()["id"]
        seen["stop"] = _cli(["rollout", "--stop", rollout_id, "--reason", "enough", "--json"],
                            settings, url)

    truth = _truth("candidate", model_set.folders[champion], popular_folder)
    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    result, report = _run(rollout_env, truth, bake_minutes=3.0, check_every_s=1.0)
    thread.join(timeout=60)
    assert seen["status"].returncode == 0, seen["status"].stderr
    status = json.loads(seen["status"].stdout)
    assert status["rollout"]["candidate"] == CANDIDATE and status["rollout"]["champion"] == champion
    assert set(status["variants"]) >= {"champion", "interleave", "interleave_candidate"}
    assert status["variants"]["interleave"]["impressions"] > 0
    assert status["rule_now"]["decision"] in ("extend", "promote", "rollback")
    assert seen["stop"].returncode == 0, seen["stop"].stderr
    stopped = json.loads(seen["stop"].stdout)
    assert stopped["decision"] == "stopped" and stopped["champion"] == champion
    assert stopped["reload"]["instances"] == {url: "accepted"}
    assert result["decision"] == "stopped" and result["rollout_id"] == stopped["rollout_id"]
    assert registry.champion()["version"] == champion
    rows = _rows(engine, stopped["rollout_id"])
    assert [r.decision for r in rows] == ["rolling_out", "rollout_rolled_back"]
    assert rows[-1].reason.startswith("stopped by ") and rows[-1].reason.endswith(": enough")
    none = _cli(["rollout", "--status", "--json"], settings, url)
    assert json.loads(none.stdout) == {"rollout": None}
    bad = _cli(["rollout", "--stop", stopped["rollout_id"], "--reason", "again", "--json"],
               settings, url)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "ended already" in json.loads(bad.stdout)["error"]
