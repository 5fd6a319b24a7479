"""The reload flow: signal the serving tier that the champion changed.

An ad-hoc run (``bookrec reload``, the UI) signals the current champion again. Promotion,
rollback, approval, rollout and nightly runs run the same steps (``tasks.reload``) as
tasks of their own run after moving the champion pointer. Unreachable instances are reported, not fatal: they pick the new champion up from the
pointer on their next poll. An instance that answers but fails to load fails the flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.reload import reload_serving


@flow(name="reload")
def reload_flow(version: str | None = None) -> dict[str, Any]:
    """Publish the reload signal, call ``POST /admin/reload`` on every instance and wait
    until every worker of each serves ``version`` (within ``BOOKREC_RELOAD_DEADLINE_S``).

    ``version`` is the champion the caller expects; each answer says whether it matches.
    Returns ``{"signal": ..., "instances": {url: answer}}``. Promotions, rollbacks and the
    nightly run call the same steps in their own runs (``tasks.reload.run_reload``).
    """
    return reload_serving(version)
