"""``bookrec up`` and ``bookrec down``: the whole system on one machine, and back off.

``up`` prepares the database (the embedded PostgreSQL unless ``BOOKREC_DATABASE_URL`` is
set), starts a Prefect server with its UI (unless ``BOOKREC_PREFECT_API_URL`` points at
one, or a flow command already started the local one), creates the ``local-process`` work
pool, starts a worker, registers the ``local`` deployments from prefect.yaml and the
watchdog automations, starts the API, runs the nightly flow on the bundled sample when no
model is promoted yet, and waits until the API serves the champion.
Background processes write ``<home>/logs/<name>.log`` and ``<home>/run/<name>.pid``;
running ``up`` again reuses whatever is still alive. ``down`` stops them all.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cli import processes
from cli.processes import ROOT, Clock

WORK_POOL = "local-process"


def default_source() -> Path:
    """The bundled sample: ``data/sample/original`` (Book-Crossing's own file layout) when
    present, else ``data/sample``."""
    sample = ROOT / "data" / "sample"
    return sample / "original" if (sample / "original").is_dir() else sample


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``up`` and ``down`` verbs."""
    up = subparsers.add_parser("up", help="start PostgreSQL, Prefect, a worker and the API")
    up.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder the first nightly run ingests (default: the bundled sample, data/sample)",
    )
    up.add_argument("--api-port", type=int, default=None,
                    help="API port (default BOOKREC_API_PORT, 8000)")
    up.add_argument("--prefect-port", type=int, default=None,
                    help="Prefect port (default BOOKREC_PREFECT_PORT, 4200)")
    up.add_argument("--workers", type=int, default=None, help="API worker processes")
    up.add_argument(
        "--retrain",
        action="store_true",
        help="run the nightly flow even when a model is already promoted",
    )
    up.add_argument("--no-pipeline", action="store_true", help="start services only")
    up.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for the nightly run (default 1800)",
    )
    up.set_defaults(handler=_up)
    down = subparsers.add_parser("down", help="stop everything `bookrec up` started")
    down.add_argument("--keep-db", action="store_true", help="leave the embedded PostgreSQL up")
    down.set_defaults(handler=_down)


# ---------------------------------------------------------------- up
def write_secret(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only from the first byte (mode 0600 given to
    ``open``, never a chmod after writing); an existing file is not overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _environment(settings, args: argparse.Namespace, prefect_api: str) -> dict[str, str]:
    """The environment every process shares: absolute home, Prefect home and API, telemetry
    off, the admin token the reload flow and the API both need, where serving listens."""
    home = settings.home_dir
    env = dict(os.environ)
    env.update(
        {
            "BOOKREC_HOME": str(home),
            "PREFECT_HOME": env.get("PREFECT_HOME") or str(home / "prefect"),
            "PREFECT_API_URL": prefect_api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if "BOOKREC_SERVING_URLS" not in os.environ:
        env["BOOKREC_SERVING_URLS"] = f"http://127.0.0.1:{args.api_port}"
    if settings.admin_token is None:
        token_file = home / "admin-token"
        if not token_file.exists():
            write_secret(token_file, secrets.token_urlsafe(32))
        env["BOOKREC_ADMIN_TOKEN"] = token_file.read_text().strip()
    return env


def _database(settings, env: dict[str, str], clock: Clock) -> None:
    """Run ``bookrec db upgrade``, which starts the embedded server if none is configured.

    It runs in a session of its own so that the embedded PostgreSQL it starts is not in
    this terminal's process group: Ctrl-C on ``up`` must not stop the database.
    """
    from cli.main import CommandError

    where = "embedded PostgreSQL" if settings.uses_embedded_postgres else "PostgreSQL"
    clock.say(
        f"{where}: starting and migrating"
        if settings.uses_embedded_postgres
        else f"{where}: migrating"
    )
    log = settings.log_dir / "db.log"
    code, lines = processes.run_logged(
        [sys.executable, "-m", "cli.main", "db", "upgrade"], log, env, new_session=True
    )
    if code != 0:
        raise CommandError(f"bookrec db upgrade failed; {log}:\n" + "\n".join(lines[-30:]))
    clock.say(f"{where}: {lines[-1] if lines else 'ready'}")


def _prefect_server(settings, env, args, clock: Clock) -> None:
    """Start the local Prefect server (SQLite under PREFECT_HOME) and wait until it is ready."""
    from cli import prefect_server

    url, _ = prefect_server.start_local_server(settings, args.prefect_port, say=clock.say)
    clock.say(f"Prefect server ready at {url.removesuffix('/api')}")


def _work_pool_and_worker(services: dict, env, clock: Clock) -> None:
    """Create the ``local-process`` pool if missing and start a worker polling it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(WORK_POOL)
            clock.say(f"work pool {WORK_POOL} exists")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
            clock.say(f"work pool {WORK_POOL} created")
    service = services["worker"]
    if service.pid() is not None:
        clock.say(f"worker already running (pid {service.pid()})")
        return
    argv = [
        processes.bin_path("prefect"),
        "worker",
        "start",
        "--pool",
        WORK_POOL,
        "--type",
        "process",
        "--name",
        "bookrec-local",
        "--limit",
        "4",
    ]
    # Prefect's workers ask for scheduled runs every 10 s by default: an ad-hoc run started
    # in the UI waited 5 s on average before its process even started. Every 2 s costs the
    # local server one small query per 2 s. A value in the environment wins.
    worker_env = {"PREFECT_WORKER_QUERY_SECONDS": "2", **env}
    proc = service.start(argv, worker_env, ROOT)
    clock.say(f"worker starting (pid {proc.pid}, log {service.log_file})")

    def online() -> bool:
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(WORK_POOL)
        return any(w.name == "bookrec-local" and w.status == "ONLINE" for w in workers)

    processes.wait_for("worker", online, clock, 120, proc, service)
    clock.say("worker online")


def _deploy_fingerprint() -> str:
    """A hash of what the deployments are built from: prefect.yaml, the flows, the checkout."""
    import hashlib

    digest = hashlib.sha256(str(ROOT).encode())
    for path in [ROOT / "prefect.yaml", *sorted((ROOT / "flows").glob("*.py"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _deployments_exist() -> bool:
    """True if every local deployment of prefect.yaml is registered on the server."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            for name in _local_deployments():
                client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def _deploy(settings, env, clock: Clock) -> None:
    """``prefect deploy --name local``: register the local deployments from prefect.yaml
    (skipped when neither prefect.yaml nor the flows changed since the last registration)."""
    from cli.main import CommandError

    stamp = settings.home_dir / "run" / "deployed.sha256"
    fingerprint = _deploy_fingerprint()
    if stamp.exists() and stamp.read_text() == fingerprint and _deployments_exist():
        clock.say("deployments up to date (prefect.yaml and flows/ unchanged)")
        return
    log = settings.log_dir / "deploy.log"
    clock.say("registering deployments from prefect.yaml (prefect deploy --name local)")
    code, lines = processes.run_logged(
        [processes.bin_path("prefect"), "--no-prompt", "deploy", "--name", "local"], log, env
    )
    if code != 0:
        tail = "\n".join(lines[-30:])
        raise CommandError(f"prefect deploy failed (exit {code}); {log}:\n{tail}")
    stamp.write_text(fingerprint)
    clock.say(f"deployments registered: {', '.join(_local_deployments())}")


def _local_deployments() -> list[str]:
    """``<flow>/local`` names of the deployments prefect.yaml declares for laptops."""
    import yaml

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return [
        f"{Path(d['entrypoint'].split(':')[0]).stem}/local"
        for d in config["deployments"]
        if d["name"] == "local"
    ]


def _automations(settings, clock: Clock) -> None:
    """Create or update the watchdog automations (deployments/automations.yaml)."""
    from cli.watchdog import apply_automations

    applied = apply_automations(settings)
    target = "webhook BOOKREC_ALERT_WEBHOOK" if settings.alert_webhook else (
        "events only; set BOOKREC_ALERT_WEBHOOK for a webhook")
    clock.say(f"watchdog automations {', '.join(a['name'] for a in applied)} ({target})")


def _start_api(services: dict, env, args, clock: Clock) -> subprocess.Popen | None:
    """Start ``bookrec serve`` on 127.0.0.1 unless ours is already up (it needs no Prefect,
    so it boots while the Prefect server does)."""
    from cli.main import CommandError

    service = services["api"]
    if service.pid() is not None:
        clock.say(f"API already running (pid {service.pid()})")
        return None
    if processes.port_in_use(args.api_port):
        raise CommandError(
            f"127.0.0.1:{args.api_port} is in use by a process bookrec did not "
            "start; stop it or pass --api-port"
        )
    argv = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(args.api_port)]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    proc = service.start(argv, env, ROOT, extra={"url": f"http://127.0.0.1:{args.api_port}"})
    clock.say(f"API starting (pid {proc.pid}, log {service.log_file})")
    return proc


def _wait_api(services: dict, proc, args, clock: Clock) -> None:
    """Wait until the API answers /livez."""
    livez = f"http://127.0.0.1:{args.api_port}/livez"
    processes.wait_for("API", lambda: processes.get_json(livez) is not None, clock, 120, proc, services["api"])
    clock.say(f"API alive at http://127.0.0.1:{args.api_port}")


def _last_decision(settings) -> str:
    """The newest promotion decision from the audit table, as one line."""
    from bookrec import audit, db

    decisions = audit.recent_decisions(db.get_engine(settings), limit=1)
    db.dispose_engines()
    if not decisions:
        return "no promotion decision recorded"
    last = decisions[0]
    return f"{last.candidate} {last.decision}: {last.reason}"


def _champion(settings) -> str | None:
    """The promoted version in the artifact store, if any."""
    from bookrec.registry import Registry

    champion = Registry.from_settings(settings).champion()
    return champion["version"] if champion else None


def _run_nightly(source: Path, timeout: float, clock: Clock) -> None:
    """Run ``nightly/local`` on ``source`` through the worker, printing each stage's state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from cli.main import CommandError

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly/local")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"source": str(source)}
        )
        clock.say(f"nightly run scheduled: ingest {source} -> train -> promote -> reload")
        seen: dict[str, str] = {}
        flow_names: dict[Any, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = client.read_flow_run(run.id)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                )
            )
            for item in sorted(
                [run, *children], key=lambda r: r.created.timestamp() if r.created else 0.0
            ):
                if item.flow_id not in flow_names:
                    flow_names[item.flow_id] = client.read_flow(item.flow_id).name
                indent = "" if item.id == run.id else "  "
                label = f"{indent}{flow_names[item.flow_id]} ({item.name})"
                state = item.state.name if item.state else "?"
                if seen.get(str(item.id)) != state:
                    seen[str(item.id)] = state
                    clock.say(f"{label}: {state}")
            if run.state and run.state.is_final():
                break
            time.sleep(1.0)
        else:
            raise CommandError(f"nightly run {run.name} not finished after {timeout:.0f} s")
    if not run.state.is_completed():
        raise CommandError(
            f"nightly run {run.name} ended {run.state.name}: "
            f"{run.state.message or ''} (see the worker log and the Prefect UI)"
        )


def _wait_for_version(args, version: str, clock: Clock) -> None:
    """Wait until several consecutive /readyz answers (any worker) report ``version``."""
    readyz = f"http://127.0.0.1:{args.api_port}/readyz"

    def serving() -> bool:
        answers = [processes.get_json(readyz) for _ in range(8)]
        return all(a and a.get("model_version") == version for a in answers)

    processes.wait_for(f"API to serve {version}", serving, clock, 120)
    clock.say(f"API serves model {version}")


def _up(args: argparse.Namespace) -> int:
    """Bring the whole system up (idempotent) and print where everything is."""
    from bookrec.settings import get_settings
    from cli.main import CommandError

    clock = processes.Clock()
    settings = get_settings()
    home = settings.home_dir
    for folder in (home, settings.log_dir, home / "run"):
        folder.mkdir(parents=True, exist_ok=True)
    from cli import prefect_server

    args.api_port = args.api_port or settings.api_port
    args.prefect_port = args.prefect_port or settings.prefect_port
    external_prefect = settings.prefect_api_url
    # a server started by an earlier `up` or flow command keeps serving, wherever it listens
    recorded = None if external_prefect else prefect_server.recorded_api_url(settings)
    prefect_api = external_prefect or recorded or f"http://127.0.0.1:{args.prefect_port}/api"
    token_note = "BOOKREC_ADMIN_TOKEN" if settings.admin_token else str(home / "admin-token")
    env = _environment(settings, args, prefect_api)
    os.environ.update(env)  # this process talks to the store and Prefect like its children
    get_settings.cache_clear()
    settings = get_settings()
    services = processes.services(settings)
    source = (args.source or default_source()).expanduser().resolve()
    if not args.no_pipeline and not (source.is_dir() and any(source.iterdir())):
        raise CommandError(f"--source {source}: not a folder with Book-Crossing CSV files")
    clock.say(f"bookrec up: home {home}")

    _database(settings, env, clock)
    api_proc = _start_api(services, env, args, clock)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if external_prefect:
        clock.say(f"using the Prefect server at {external_prefect}")
    elif recorded:
        clock.say(f"Prefect server already running at {recorded.removesuffix('/api')}")
    else:
        _prefect_server(settings, env, args, clock)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        _work_pool_and_worker(services, env, clock)
        _deploy(settings, env, clock)
        _automations(settings, clock)
        _wait_api(services, api_proc, args, clock)
        champion = _champion(settings)
        if args.no_pipeline:
            clock.say("skipping the nightly run (--no-pipeline)")
        elif champion and not args.retrain:
            clock.say(
                f"model {champion} already promoted; skipping the nightly run "
                "(--retrain runs it again)"
            )
        else:
            _run_nightly(source, args.timeout, clock)
            clock.say(f"promotion: {_last_decision(settings)}")
            champion = _champion(settings)
    if champion:
        _wait_for_version(args, champion, clock)

    ui = prefect_api.removesuffix("/api")
    print(
        f"""
bookrec is up ({time.monotonic() - clock.start:.0f} s)
  page and API    http://127.0.0.1:{args.api_port}/   (health: /readyz, OpenAPI: /openapi.json)
  Prefect UI      {ui}
  model           {champion or "none promoted yet (/readyz answers 503 until one is)"}
  logs            {settings.log_dir}/  (api, worker, prefect-server, deploy, prefect)
  pid files       {home / "run"}/
  admin token     {token_note}
Run a flow:       bookrec run nightly --param source=$PWD/data/sample/original
Stop everything:  bash scripts/down.sh   (or: bookrec down)""",
        flush=True,
    )
    return 0


# ---------------------------------------------------------------- down
def _down(args: argparse.Namespace) -> int:
    """Stop the API, the worker, the Prefect server and the embedded PostgreSQL."""
    from bookrec import db
    from bookrec.settings import get_settings

    settings = get_settings()
    stopped = []
    for name, service in processes.services(settings).items():
        if service.stop():
            stopped.append(name)
            print(f"stopped {name}", flush=True)
    if settings.uses_embedded_postgres and not args.keep_db and db.stop_embedded(settings):
        stopped.append("embedded PostgreSQL")
        print("stopped embedded PostgreSQL", flush=True)
    print("nothing was running" if not stopped else f"bookrec is down ({len(stopped)} stopped)")
    return 0
