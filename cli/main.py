"""The ``bookrec`` command: one verb group per module in this package.

Each ``cli/<group>.py`` exposes ``register(subparsers)``; a handler returns an exit
code. Handlers import flows and servers lazily so that ``bookrec --help`` is instant.
Verbs that run flows set ``prefect=True``: before they run, the command finds the
Prefect server (``cli/prefect_server.py``), the admin token and the API that ``up``
started, and sends Prefect's log lines to the log folder unless ``--verbose`` is given.
An expected error is one line on stderr (and a JSON object on stdout with ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

_COMMAND_MODULES = ("db", "ingest", "train", "registry", "serve", "ops", "apikeys", "online", "run",
                    "rollout")

# Domain errors that are the user's or the data's, not a bug: (module, class name). They
# are matched only if their module was imported (an error of a class never imported
# cannot have been raised).
_EXPECTED_ERRORS = (
    ("bookrec.registry", "RegistryError"),
    ("bookrec.artifacts", "ArtifactError"),
    ("bookrec.store", "StoreError"),
    ("bookrec.sources", "IngestFileError"),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every verb group that is installed."""
    parser = argparse.ArgumentParser(prog="bookrec", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        module_name = f"cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    for verb in subparsers.choices.values():
        if verb.get_default("prefect"):
            verb.add_argument("--verbose", action="store_true",
                              help="show Prefect's log lines here instead of <home>/logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen handler; errors become one line and exit code 1/2."""
    from_command_line = argv is None
    args = build_parser().parse_args(argv)

    def run() -> int:
        _prefect_defaults()
        if getattr(args, "prefect", False):
            _find_local_system(args)
            if from_command_line:
                return _run_warm(args)
        return _handle(args)

    with _scoped_environ():
        code = _guarded(args, run)
    if from_command_line:
        # The process ends next: without this, the interpreter's exit walks every object
        # Prefect, pandas and the flows made at import in its final collections, ~0.4 s
        # of each command on this project's 2-core machine. Finalizers and atexit still run.
        gc.freeze()
    return code


def _guarded(args: argparse.Namespace, run) -> int:
    """``run()``, with expected errors turned into one line (and a JSON object)."""
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CommandError as exc:
        return _fail(args, str(exc), exc.exit_code, exc.payload)
    except Exception as exc:
        if not _expected(exc):
            raise
        return _fail(args, str(exc) or type(exc).__name__, 1, {})


def _handle(args: argparse.Namespace) -> int:
    """The verb's handler. Short flow commands (``heartbeats=False``) run without Prefect's
    flow heartbeat thread: it exists to mark runs that stop reporting as crashed after
    minutes, and joining it costs up to a second at the end of every flow run."""
    if getattr(args, "heartbeats", True):
        return int(args.handler(args) or 0)
    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    with SettingsContext(profile=context.profile, settings=without_heartbeats(context.settings)):
        return int(args.handler(args) or 0)


_NO_HEARTBEATS: dict[int, Any] = {}


def without_heartbeats(settings: Any) -> Any:
    """``settings`` with the flow heartbeat off, built once per settings object: validating
    a copy of Prefect's settings costs a few hundred milliseconds, so the warm flow runner
    builds it before it forks (``cli/warm.py``) and each short command reuses it."""
    key = id(settings)
    if key not in _NO_HEARTBEATS:
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

        _NO_HEARTBEATS[key] = (settings, settings.copy_with_update(
            updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
    return _NO_HEARTBEATS[key][1]


def _run_warm(args: argparse.Namespace) -> int:
    """A flow command typed by a user: run it in the warm flow runner when one serves this
    home with the same settings (``cli/warm.py``), else here, leaving a runner started for
    the next command when the Prefect server is the local one."""
    from bookrec.settings import get_settings
    from cli import warm

    home = get_settings().home_dir
    code = warm.run(sys.argv[1:], home)
    if code is not None:
        return code
    leave_runner = (not getattr(args, "verbose", False)
                    and os.environ.get("BOOKREC_WARM", "1") != "0" and _local_server(home))
    runner_env = dict(os.environ) if leave_runner else None  # as the command found it
    try:
        return _handle(args)
    finally:
        # Started after the command's own work, which its imports would otherwise slow
        # down on a 2-core machine; it is ready for the next command either way.
        if leave_runner:
            with contextlib.suppress(OSError):
                warm.ensure_started(get_settings(), runner_env)


def _local_server(home) -> bool:
    """True when the Prefect server in use is the one recorded in ``<home>/run``."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        recorded = json.loads((home / "run" / "prefect-server.pid").read_text())["url"]
        return recorded == os.environ.get("PREFECT_API_URL")
    return False


def run_here(argv: list[str]) -> int:
    """Run a command in this process with the environment as it is (the warm runner's
    forked child, whose environment the client already prepared)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        _prefect_defaults()
        return _handle(args)

    return _guarded(args, run)


def _fail(args: argparse.Namespace, message: str, code: int, payload: dict[str, Any]) -> int:
    """One line on stderr; with ``--json`` also ``{"error": ..., ...}`` on stdout."""
    line = " ".join(message.split()) if getattr(args, "prefect", False) else message
    print(f"bookrec {args.command}: error: {line}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": line, "command": args.command, "exit_code": code, **payload}))
    return code


def _expected(exc: BaseException) -> bool:
    """True for the domain's named errors (bad file, unknown version, refused store)."""
    for module_name, class_name in _EXPECTED_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module else None
        if cls is not None and isinstance(exc, cls):
            return True
    return False


@contextlib.contextmanager
def _scoped_environ() -> Iterator[None]:
    """Environment changes made for one command do not outlive it (``main`` may be called
    several times in one process, as the tests do)."""
    from bookrec.settings import get_settings

    saved = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != saved:
            os.environ.clear()
            os.environ.update(saved)
            get_settings.cache_clear()


def _prefect_defaults() -> None:
    """The project's own Prefect defaults: state under <home>/prefect, telemetry off.

    Set only where the environment says nothing, so a configured PREFECT_API_URL or
    PREFECT_HOME wins.
    """
    from bookrec.settings import get_settings

    home = get_settings().home_dir
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _find_local_system(args: argparse.Namespace) -> None:
    """What a flow command needs from the system ``up`` started: the admin token it made
    (so the reload flow's call to the API is authorised), the API it started (so reload
    calls that one), and the Prefect server (started here if none runs)."""
    from bookrec.settings import get_settings
    from cli import prefect_server, processes

    settings = get_settings()
    token_file = settings.home_dir / "admin-token"
    if settings.admin_token is None and token_file.is_file():
        os.environ["BOOKREC_ADMIN_TOKEN"] = token_file.read_text().strip()
    api = processes.services(settings)["api"]
    if "serving_urls" not in settings.model_fields_set and api.pid() is not None:
        with contextlib.suppress(OSError, ValueError):
            url = json.loads(api.pid_file.read_text()).get("url")
            if url:
                os.environ["BOOKREC_SERVING_URLS"] = url
    get_settings.cache_clear()
    if not getattr(args, "verbose", False) and "prefect" not in sys.modules:
        prefect_server.quiet_logs(settings)
    prefect_server.choose_server(settings, note=lambda line: print(line, file=sys.stderr),
                                 preload=getattr(args, "preload", ()))
    get_settings.cache_clear()


class CommandError(Exception):
    """An expected failure: printed as one line, without a traceback; ``payload`` goes into
    the ``--json`` error object."""

    def __init__(self, message: str, exit_code: int = 1, payload: dict[str, Any] | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.payload = payload or {}


if __name__ == "__main__":  # pragma: no cover
    # `python -m cli.main`: run the imported module's main, so that the CommandError the
    # verb modules raise (cli.main.CommandError) is the class caught there, not __main__'s.
    from cli.main import main as _main

    sys.exit(_main())
