"""The reload flow: signal the serving tier that the champion changed.

The promotion flow (and the nightly flow) call it after moving the champion pointer.
Unreachable instances are reported, not fatal: they pick the new champion up from the
pointer on their next poll. An instance that answers but fails to load fails the flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from tasks.reload import (
    InstanceRefused,
    list_serving_instances,
    publish_reload_signal,
    reload_instance,
)


@flow(name="reload")
def reload_flow(version: str | None = None) -> dict[str, Any]:
    """Publish the reload signal, call ``POST /admin/reload`` on every instance and wait
    until every worker of each serves ``version`` (within ``BOOKREC_RELOAD_DEADLINE_S``).

    ``version`` is the champion the caller expects; each answer says whether it matches.
    Returns ``{"signal": ..., "instances": {url: answer}}``.
    """
    logger = get_run_logger()
    signal = publish_reload_signal(version)
    urls = list_serving_instances()
    futures = {url: reload_instance.submit(url, version) for url in urls}
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
