"""Flow runs that outlive the caller: the approval run that waits for a human and the
rollout run that bakes a candidate, started by the promote flow or by a command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bookrec.settings import get_settings

_REPO = Path(__file__).resolve().parents[1]


def flow_run_url(flow_run_id: str) -> str | None:
    """The Prefect UI address of a flow run (from PREFECT_UI_URL or the API URL)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=flow_run_id)


def launch_flow_run(
    flow: Any, entrypoint: str, deployment: str, parameters: dict[str, Any], run_name: str
) -> dict[str, Any]:
    """Start a run of ``flow`` (``{"flow_run_id", "url", "via"}``).

    Uses the ``deployment`` (``<flow>/<name>``) when the server has it, so the run goes to
    a worker; otherwise creates the run and executes ``entrypoint`` in a detached process
    with Prefect's own engine (``python -m prefect.flow_engine``), logging to
    ``<home>/logs/<flow>-<run id>.log``.
    """
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
            found = True
        except ObjectNotFound:
            found = False
        if found:
            run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False)
            return {"flow_run_id": str(run.id), "url": flow_run_url(str(run.id)),
                    "via": f"deployment {deployment}"}
        run = client.create_flow_run(flow, parameters=parameters, name=run_name)
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": str(run.id)}
    api_url = get_current_settings().api.url
    if api_url:
        env["PREFECT_API_URL"] = api_url
    settings = get_settings()
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = settings.log_dir / f"{deployment.split('/')[0]}-{run.id}.log"
    with open(log, "ab") as out:
        subprocess.Popen(  # noqa: S603 - our own interpreter and Prefect's engine module
            [sys.executable, "-m", "prefect.flow_engine", entrypoint],
            cwd=_REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )
    return {"flow_run_id": str(run.id), "url": flow_run_url(str(run.id)),
            "via": f"local process (log {log})"}
