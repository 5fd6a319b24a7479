"""``bookrec run DEPLOYMENT [--param k=v] [--wait]``: start a deployment's flow run on the
Prefect server the command finds itself (the one ``up`` started, or the configured one),
so it runs on the worker and shows in the UI like the scheduled runs.

``DEPLOYMENT`` is ``flow/deployment`` or just the flow's name, which means its ``local``
deployment (e.g. ``nightly`` is ``nightly/local``). Each ``--param`` value is read as JSON
when it parses (numbers, lists, ``null``), else as a string.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.main import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` verb, and the watchdog's ``automations`` verb."""
    parser = subparsers.add_parser(
        "run", help="start a deployment's flow run (e.g. `bookrec run nightly`) on the server"
    )
    parser.add_argument("deployment", help="flow/deployment, or a flow name for its local one")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a flow parameter (JSON value or string), repeatable")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the run to finish; exit 1 unless it Completed")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds --wait waits at most (default 3600)")
    parser.add_argument("--json", action="store_true", help="print the run as JSON")
    parser.set_defaults(handler=_run, prefect=True,
                        preload=("prefect.deployments",))
    from cli import watchdog

    watchdog.register(subparsers)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs to a dict; a value that is valid JSON is parsed."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--param {item!r}: expected NAME=VALUE", exit_code=2)
        try:
            params[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[name.strip()] = raw
    return params


def deployment_name(name: str) -> str:
    """``nightly`` -> ``nightly/local``; ``flow/deployment`` as given."""
    return name if "/" in name else f"{name}/local"


def _run(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    name = deployment_name(args.deployment)
    params = parse_params(args.param)
    api = PREFECT_API_URL.value()
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            known = sorted(f"{d.flow_name}/{d.name}" if hasattr(d, "flow_name") else d.name
                           for d in client.read_deployments())
            hint = ", ".join(known) if known else "none: `bookrec up` registers them"
            raise CommandError(f"no deployment {name} on {api} (deployments: {hint})") from None
        unknown = sorted(set(params) - set((deployment.parameter_openapi_schema or {})
                                           .get("properties", {})))
        if unknown:
            raise CommandError(f"{name} has no parameter {', '.join(unknown)}", exit_code=2)
        idle = _no_worker_note(client, deployment)
    run = run_deployment(name, parameters=params, timeout=(args.timeout if args.wait else 0),
                         poll_interval=1, as_subflow=False)
    ui = (PREFECT_UI_URL.value() or api.removesuffix("/api")).rstrip("/")
    out = {"deployment": name, "flow_run_id": str(run.id), "flow_run_name": run.name,
           "state": run.state.name if run.state else None, "parameters": params,
           "url": f"{ui}/runs/flow-run/{run.id}"}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{name}: flow run {run.name} {out['state']}  {out['url']}")
    if idle:
        print(f"bookrec run: note: {idle}", file=sys.stderr)
    if args.wait and not (run.state and run.state.is_completed()):
        message = (run.state.message or "") if run.state else ""
        raise CommandError(f"flow run {run.name} ended {out['state']}: {message}".strip(),
                           payload={k: out[k] for k in ("deployment", "flow_run_id", "url")})
    return 0


def _no_worker_note(client, deployment) -> str | None:
    """A note when no worker polls the deployment's work pool (the run would only wait)."""
    pool = deployment.work_pool_name
    if not pool:
        return None
    workers = client.read_workers_for_work_pool(pool)
    if any(w.status == "ONLINE" for w in workers):
        return None
    return f"no worker is polling work pool {pool}; the run starts when one does (`bookrec up`)"
