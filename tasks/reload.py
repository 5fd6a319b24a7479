"""Prefect tasks that tell the serving tier a new champion exists.

Two channels, both used: a Redis pub/sub message every worker of every instance hears
(when Redis is configured), and ``POST /admin/reload`` on each configured instance, which
answers 202 at once (a load can outlast a load balancer's idle timeout). The task then
polls ``GET /admin/model``, which lists the version every live worker of that instance
serves, until all of them serve the expected version or ``reload_deadline_s`` passes.
Workers also poll the champion pointer, so a missed signal only delays a reload by one
poll interval.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from prefect import task

from bookrec import discovery
from bookrec.settings import Settings, get_settings
from tasks.retries import IO_RETRIES, io_retries

REQUEST_TIMEOUT_S = 10.0  # the reload call answers at once; /admin/model too
POLL_INTERVAL_S = 0.5
# Shorter than IO_RETRIES: the pointer has already moved and instances poll it, so a dead
# instance should not hold the promotion up.
_INSTANCE_RETRIES = io_retries(retries=2, first_delay_s=1.0)


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


def _admin_call(settings: Settings, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    """One admin request with the bearer token; its JSON body (``InstanceRefused`` if not 2xx)."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not token:
        raise InstanceRefused("BOOKREC_ADMIN_TOKEN is not set; serving refuses admin calls")
    response = requests.request(
        method,
        url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT_S,
        **kwargs,
    )
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text[:500]}
    if not 200 <= response.status_code < 300:
        raise InstanceRefused(f"{url}: HTTP {response.status_code}: {body}")
    return body


def call_instance(settings: Settings, url: str, version: str | None) -> dict[str, Any]:
    """``POST <url>/admin/reload`` with the admin token; the answer (202, at once).

    Connection errors propagate (the task retries them); a refusal raises ``InstanceRefused``.
    """
    params = {"version": version} if version else None
    return _admin_call(settings, "POST", f"{url}/admin/reload", params=params)


def instance_workers(settings: Settings, url: str) -> dict[str, Any]:
    """``GET <url>/admin/model``: the answering worker's state and ``workers`` (pid ->
    version of every live worker of the instance)."""
    return _admin_call(settings, "GET", f"{url}/admin/model")


def _rollouts_match(info: dict[str, Any], workers: dict[str, str], rollout: str | None) -> bool:
    """Whether every live worker holds the candidate of rollout ``rollout`` (None: no worker
    holds any candidate)."""
    held = info.get("workers_rollouts") or {}
    if rollout is None:
        return not any(pid in held for pid in workers)
    return all(held.get(pid) == rollout for pid in workers)


def reload_and_wait(
    settings: Settings,
    url: str,
    version: str | None,
    deadline_s: float | None = None,
    *,
    check_rollout: bool = False,
    rollout: str | None = None,
) -> dict[str, Any]:
    """Ask ``url`` to reload, then poll until every worker serves ``version`` (or, with no
    version given, one and the same version) or the deadline passes. With
    ``check_rollout``, every worker must also hold the candidate of rollout ``rollout``
    (None: hold no candidate), as a rollout's start and end need.

    Returns ``status`` (``reloaded``, or ``timeout`` with ``matches`` False), the version,
    ``workers`` (and ``workers_rollouts`` with ``check_rollout``) and the seconds it took.
    """
    deadline_s = settings.reload_deadline_s if deadline_s is None else deadline_s
    started = time.monotonic()
    accepted = call_instance(settings, url, version)
    want = f"{version or 'one version'}"
    if check_rollout:
        want += f" with rollout {rollout}" if rollout else " with no rollout candidate"
    while True:
        info = instance_workers(settings, url)
        workers = info.get("workers") or {}
        served = set(workers.values())
        done = bool(workers) and (served == {version} if version else len(served) == 1)
        if done and check_rollout:
            done = _rollouts_match(info, workers, rollout)
        elapsed = round(time.monotonic() - started, 3)
        if done:
            answer = {
                "status": "reloaded",
                "pid": accepted.get("pid"),
                "version": next(iter(served)),
                "matches": True,
                "workers": workers,
                "seconds": elapsed,
            }
            if check_rollout:
                answer["workers_rollouts"] = info.get("workers_rollouts") or {}
            return answer
        if elapsed >= deadline_s:
            last = info.get("last_reload") or {}
            return {
                "status": "timeout",
                "pid": accepted.get("pid"),
                "version": info.get("version"),
                "matches": False,
                "workers": workers,
                "seconds": elapsed,
                "workers_rollouts": info.get("workers_rollouts") or {},
                "error": f"not every worker serves {want} after "
                f"{deadline_s:g} s (last reload here: {last.get('status')} "
                f"{last.get('error', '')})".strip(),
            }
        time.sleep(POLL_INTERVAL_S)


@task(name="publish-reload-signal", **IO_RETRIES)
def publish_reload_signal(version: str | None = None) -> dict[str, Any]:
    """Tell every subscribed worker to check the champion pointer now."""
    return publish_signal(get_settings(), version)


@task(name="list-serving-instances", **_INSTANCE_RETRIES)
def list_serving_instances() -> list[str]:
    """The serving instances the reload flow calls: the settings' URLs, a ``dns+http://``
    one expanded to every address of its name (each API task in production)."""
    return discovery.expand_urls(serving_urls(get_settings()))


@task(name="reload-serving-instance", **_INSTANCE_RETRIES)
def reload_instance(url: str, version: str | None = None, check_rollout: bool = False,
                    rollout: str | None = None) -> dict[str, Any]:
    """Ask one instance to reload and wait until all its workers serve ``version`` (and,
    with ``check_rollout``, hold rollout ``rollout``'s candidate, or none)."""
    return reload_and_wait(get_settings(), url, version, check_rollout=check_rollout,
                           rollout=rollout)


def reload_serving(version: str | None = None, *, check_rollout: bool = False,
                   rollout: str | None = None) -> dict[str, Any]:
    """Publish the reload signal, call ``POST /admin/reload`` on every instance and wait
    until every worker of each serves ``version`` (within ``BOOKREC_RELOAD_DEADLINE_S``),
    as tasks of the flow that calls it (the reload flow, or a promotion's own run).

    ``version`` is the champion the caller expects; each answer says whether it matches.
    With ``check_rollout`` the wait also covers the rollout each worker follows: the
    candidate of ``rollout`` held by every worker (a rollout's start), or by none (None:
    a rollout's end).
    Unreachable instances are reported, not fatal: they pick the new champion up from the
    pointer on their next poll. An instance that answers but fails or refuses the reload
    raises ``RuntimeError``. Returns ``{"signal": ..., "instances": {url: answer}}``.
    """
    from prefect import get_run_logger

    logger = get_run_logger()
    signal = publish_reload_signal(version)
    urls = list_serving_instances()
    futures = {url: reload_instance.submit(url, version, check_rollout, rollout)
               for url in urls}
    answers: dict[str, Any] = {}
    failed: list[str] = []
    for url, future in futures.items():
        future.wait()
        state = future.state
        if state.is_completed():
            answer = state.result()
            answers[url] = answer
            if answer.get("status") == "failed" or answer.get("matches") is False:
                failed.append(f"{url}: {answer.get('status')} {answer.get('error', '')}".strip())
        else:
            error = state.result(raise_on_failure=False)
            answers[url] = {"status": "unreachable", "error": f"{type(error).__name__}: {error}"}
            if isinstance(error, InstanceRefused):
                failed.append(f"{url}: {error}")
            else:
                logger.warning("%s unreachable (it will poll the pointer): %s", url, error)
    if failed:
        raise RuntimeError("serving instances did not reload: " + "; ".join(failed))
    logger.info("reload signal %s; instances: %s", signal, answers)
    return {"signal": signal, "instances": answers}


def run_reload(version: str, *, check_rollout: bool = False,
               rollout: str | None = None) -> dict[str, Any]:
    """``reload_serving`` inside the calling flow; its failure is reported, not raised,
    because the champion pointer has already moved and serving instances also poll it.

    Its steps are tasks of the caller's run, not a subflow: a subflow run costs a tracking
    task run and a second flow run on the server (about two seconds of a rollback that
    otherwise takes one).

    Returns ``{"status": "ok", "result": ...}`` or ``{"status": "failed", "error": ...}``.
    """
    try:
        return {"status": "ok", "result": reload_serving(version, check_rollout=check_rollout,
                                                          rollout=rollout)}
    except Exception as exc:  # noqa: BLE001 - reported in the result and the CLI's JSON
        from prefect import get_run_logger

        get_run_logger().error("serving did not reload: %s", exc)
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
