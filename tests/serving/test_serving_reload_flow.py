"""The reload flow under Prefect's test harness, against a real gunicorn and Redis."""

from __future__ import annotations

import pytest
import redis
import requests
from pydantic import SecretStr

from bookrec.registry import Registry
from bookrec.settings import get_settings
from tasks.reload import InstanceRefused, call_instance, publish_signal, serving_urls
from tests.serving.test_serving_gunicorn import wait_for
from tests.utils.serving import ADMIN_TOKEN


@pytest.fixture
def flow_env(monkeypatch, serving_settings, redis_server):
    """Environment the flow's tasks read their settings from (get_settings is per process)."""
    settings = serving_settings.model_copy(
        update={"redis_url": redis_server["url"], "model_poll_interval_s": 3600.0}
    )
    get_settings.cache_clear()
    yield settings, monkeypatch
    get_settings.cache_clear()


def test_reload_flow_signals_and_reports_each_instance(
    prefect_harness, flow_env, start_gunicorn, model_set
):
    from flows.reload import reload_flow

    settings, monkeypatch = flow_env
    old, new = model_set.versions
    server = start_gunicorn(settings, workers=2)
    # each worker subscribes from a background thread after it has booted: wait until Redis
    # counts both (ready is about the model, not the subscription)
    client = redis.Redis.from_url(settings.redis_url)
    channel = settings.reload_channel
    wait_for(lambda: dict(client.pubsub_numsub(channel)).get(channel.encode()) == 2, 30)
    client.close()
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    monkeypatch.setenv("BOOKREC_SERVING_URLS", f"{server.url},{dead}")
    monkeypatch.setenv("BOOKREC_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BOOKREC_ADMIN_TOKEN", ADMIN_TOKEN)
    Registry.from_settings(settings).promote(new, by="test", reason="flow")

    result = reload_flow(version=new)
    assert result["signal"]["published"] is True and result["signal"]["receivers"] == 2
    answer = result["instances"][server.url]
    assert answer["version"] == new and answer["matches"] is True
    assert answer["status"] in ("reloaded", "unchanged")  # pub/sub may have been faster
    assert result["instances"][dead]["status"] == "unreachable"
    versions = {
        requests.get(f"{server.url}/livez", timeout=5).headers["X-Model-Version"] for _ in range(20)
    }
    assert versions == {new}


def test_instance_refusals_are_not_retried_as_outages(start_gunicorn, serving_settings):
    server = start_gunicorn(serving_settings, workers=1)
    wrong = serving_settings.model_copy(update={"admin_token": SecretStr("not-the-token")})
    with pytest.raises(InstanceRefused, match="HTTP 401"):
        call_instance(wrong, server.url, None)
    assert call_instance(serving_settings, server.url, None)["status"] == "accepted"


def test_signal_without_redis_and_url_parsing(serving_settings):
    assert publish_signal(serving_settings, "v1")["published"] is False
    settings = serving_settings.model_copy(update={"serving_urls": " http://a:1/ ,, http://b:2"})
    assert serving_urls(settings) == ["http://a:1", "http://b:2"]
