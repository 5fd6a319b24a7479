"""Which Prefect server a flow command talks to, and where Prefect's logs go.

The order: ``BOOKREC_PREFECT_API_URL``; then ``PREFECT_API_URL`` (the environment, the
Prefect profile under ``PREFECT_HOME``, or a test harness already in this process); then
the local server recorded in ``<home>/run/prefect-server.pid`` (started by ``bookrec up``
or by an earlier command) if its ``/api/health`` answers. With none, the local server is
started on ``BOOKREC_PREFECT_PORT`` and left running for the next command, as the embedded
PostgreSQL is; ``bookrec down`` stops it. Every flow run therefore lands in one server and
shows in the same UI as the scheduled runs, with its artifacts.

Unless ``--verbose`` is given, Prefect's own log lines go to ``<home>/logs/prefect.log``
instead of the terminal (``cli/prefect_logging.yml``); the run logs still reach the server.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from cli import processes

LOGGING_CONFIG = Path(__file__).with_name("prefect_logging.yml")
SERVICE = "prefect-server"
# What a flow run imports on its way, whatever the flow (Prefect's engine, its graph
# helper, FastAPI's encoder for the parameters): imported while a starting server boots,
# and by the warm flow runner before it forks.
FLOW_RUN_IMPORTS = ("prefect.flow_engine", "prefect.task_engine",
                    "prefect.utilities.visualization", "fastapi.encoders")


def _service(settings) -> processes.Service:
    """The pid and log files of the local Prefect server (the same ones ``up`` uses)."""
    return processes.services(settings)[SERVICE]


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True if ``<api_url>/health`` answers ``true``."""
    return processes.get_json(f"{api_url.rstrip('/')}/health", timeout=timeout) is True


def recorded_api_url(settings) -> str | None:
    """The API URL of the local server named by the pid file, if it is alive and healthy."""
    service = _service(settings)
    if service.pid() is None:
        return None
    try:
        url = json.loads(service.pid_file.read_text()).get("url")
    except (OSError, ValueError):
        return None
    return url if url and _healthy(url) else None


def server_argv(port: int) -> list[str]:
    """The server on loopback (``cli/prefect_serve.py``: what ``prefect server start`` runs,
    started ~0.9 s sooner); analytics are off in its environment (``server_env``)."""
    return [sys.executable, "-m", "cli.prefect_serve", "--host", "127.0.0.1", "--port", str(port)]


def server_env(settings) -> dict[str, str]:
    """The server's environment: Prefect state under ``<home>/prefect``, telemetry off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_")}
    env.update({
        "PREFECT_HOME": env.get("PREFECT_HOME") or str(settings.home_dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PREFECT_API_URL", None)
    return env


def start_local_server(settings, port: int, env: dict[str, str] | None = None,
                       timeout: float = 180.0, say=None, wait: bool = True):
    """Start the local server in a session of its own (it outlives this command) and record
    its pid and URL; returns ``(api_url, process)``. With ``wait`` (the default) it returns
    once the server is healthy; else call ``wait_healthy`` later, after doing other work
    while the server boots."""
    from cli.main import CommandError

    url = f"http://127.0.0.1:{port}/api"
    if processes.port_in_use(port):
        what = "a Prefect server" if _healthy(url) else "a process"
        raise CommandError(
            f"127.0.0.1:{port} is in use by {what} bookrec did not start; set "
            f"BOOKREC_PREFECT_API_URL={url} to use it, or BOOKREC_PREFECT_PORT to choose "
            "another port"
        )
    service = _service(settings)
    proc = service.start(server_argv(port), env or server_env(settings), processes.ROOT,
                         extra={"url": url})
    if say:
        say(f"Prefect server starting (pid {proc.pid}, log {service.log_file})")
    if wait:
        wait_healthy(settings, url, proc, timeout)
    return url, proc


def wait_healthy(settings, url: str, proc, timeout: float = 180.0) -> None:
    """Poll ``/api/health`` until the server started as ``proc`` answers, then wait for
    ``/api/ready``: a fresh server opens its database on the first request that needs it
    (~0.5 s on this machine), which would otherwise fall on the first flow run."""
    from cli.main import CommandError

    service = _service(settings)
    deadline = time.monotonic() + timeout
    while not _healthy(url, timeout=1.0):
        if proc.poll() is not None:
            service.pid_file.unlink(missing_ok=True)
            raise CommandError(
                f"the Prefect server exited ({proc.returncode}); see {service.log_file}"
            )
        if time.monotonic() > deadline:
            raise CommandError(f"the Prefect server is not ready after {timeout:.0f} s; "
                               f"see {service.log_file}")
        time.sleep(0.05)
    processes.get_json(f"{url.rstrip('/')}/ready", timeout=max(1.0, deadline - time.monotonic()))


def _is_loopback(url: str) -> bool:
    """True for a server on this machine (a remote one is not probed before use)."""
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _api_url_in_process() -> str | None:
    """PREFECT_API_URL as Prefect itself sees it (profile, temporary settings of a harness),
    only if Prefect is already imported: importing it here would freeze its settings before
    the server is chosen."""
    if "prefect.settings" not in sys.modules:
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _profile_api_url() -> str | None:
    """PREFECT_API_URL from the active profile in ``$PREFECT_HOME/profiles.toml``, if any."""
    import tomllib

    path = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "profiles.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    return (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL")


def choose_server(settings, note=None, preload: tuple[str, ...] = ()) -> str:
    """The API URL flow commands use (see the module docstring); sets ``PREFECT_API_URL``.

    When the local server has to be started, the modules in ``preload`` (the command's
    flows) and ``FLOW_RUN_IMPORTS`` are imported while it boots, so the wait overlaps the
    command's own start-up; ``note`` then receives one line saying so.
    """
    configured = settings.prefect_api_url or os.environ.get("PREFECT_API_URL")
    url = configured or _api_url_in_process() or _profile_api_url() or recorded_api_url(settings)
    if url:
        if configured and _is_loopback(url) and not _healthy(url):
            from cli.main import CommandError

            raise CommandError(f"no Prefect server answers at {url} (from "
                               f"{'BOOKREC_PREFECT_API_URL' if settings.prefect_api_url else 'PREFECT_API_URL'}"
                               "); start it, or unset the setting to use the local server")
        os.environ["PREFECT_API_URL"] = url
        return url
    started = time.monotonic()
    url, proc = start_local_server(settings, settings.prefect_port, wait=False)
    os.environ["PREFECT_API_URL"] = url
    for module in (*preload, *FLOW_RUN_IMPORTS):
        importlib.import_module(module)
    imported = time.monotonic()
    wait_healthy(settings, url, proc)
    if note:
        note(f"started the Prefect server at {url.removesuffix('/api')} (pid {proc.pid}; "
             f"ready after {time.monotonic() - started:.1f} s, "
             f"{time.monotonic() - imported:.1f} s of it waiting); it keeps running for the "
             "next commands, `bookrec down` stops it")
    return url


def quiet_logs(settings) -> Path:
    """Send Prefect's console log lines to ``<home>/logs/prefect.log``; returns that path.

    Must run before Prefect is imported (Prefect reads its logging setup once).
    """
    log = settings.log_dir / "prefect.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(LOGGING_CONFIG))
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_FILE_FILENAME", str(log))
    return log
