"""Prefect tasks that tell the serving tier a new champion exists.

Two channels, both used: a Redis pub/sub message every worker of every instance hears
(when Redis is configured), and ``POST /admin/reload`` on each configured instance, whose
answer says which version that worker now serves. Workers also poll the champion pointer,
so a missed signal only delays a reload by one poll interval.
"""

from __future__ import annotations

import json
from typing import Any

import requests
from prefect import task
from prefect.tasks import exponential_backoff

from bookrec import discovery
from bookrec.settings import Settings, get_settings

REQUEST_TIMEOUT_S = 70.0  # a worker answers after loading the model (a minute at most)


class InstanceRefused(RuntimeError):
    """A serving instance answered, but refused or failed the reload."""


def serving_urls(settings: Settings) -> list[str]:
    """The configured serving base URLs, without blanks or trailing slashes."""
    return [u.strip().rstrip("/") for u in settings.serving_urls.split(",") if u.strip()]


def publish_signal(settings: Settings, version: str | None) -> dict[str, Any]:
    """Publish a reload message on the Redis channel; how many subscribers heard it."""
    if not settings.redis_url:
        return {"published": False, "reason": "no BOOKREC_REDIS_URL configured"}
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        message = json.dumps({"version": version})
        receivers = client.publish(settings.reload_channel, message)
    finally:
        client.close()
    return {"published": True, "channel": settings.reload_channel, "receivers": int(receivers)}


def call_instance(settings: Settings, url: str, version: str | None) -> dict[str, Any]:
    """``POST <url>/admin/reload`` with the admin token; the worker's answer.

    Connection errors propagate (the task retries them); a refusal raises ``InstanceRefused``.
    """
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not token:
        raise InstanceRefused("BOOKREC_ADMIN_TOKEN is not set; serving refuses admin calls")
    params = {"version": version} if version else None
    response = requests.post(
        f"{url}/admin/reload",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT_S,
    )
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text[:500]}
    if response.status_code != 200:
        raise InstanceRefused(f"{url}: HTTP {response.status_code}: {body}")
    return body


@task(name="publish-reload-signal", retries=3, retry_delay_seconds=exponential_backoff(2))
def publish_reload_signal(version: str | None = None) -> dict[str, Any]:
    """Tell every subscribed worker to check the champion pointer now."""
    return publish_signal(get_settings(), version)


@task(name="list-serving-instances", retries=2, retry_delay_seconds=2)
def list_serving_instances() -> list[str]:
    """The serving instances the reload flow calls: the settings' URLs, a ``dns+http://``
    one expanded to every address of its name (each API task in production)."""
    return discovery.expand_urls(serving_urls(get_settings()))


def _retry_unless_refused(task: Any, task_run: Any, state: Any) -> bool:
    """Retry connection failures; a refusal (bad token, failed load) would fail again."""
    try:
        state.result()
    except InstanceRefused:
        return False
    except Exception:  # noqa: BLE001 - anything else is worth another try
        return True
    return False


@task(
    name="reload-serving-instance",
    retries=2,
    retry_delay_seconds=exponential_backoff(1),
    retry_condition_fn=_retry_unless_refused,
)
def reload_instance(url: str, version: str | None = None) -> dict[str, Any]:
    """Ask one instance to reload now; returns what it said (status, version, pid)."""
    return call_instance(get_settings(), url, version)
