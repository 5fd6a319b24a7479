"""The ``bookrec`` command: one verb group per module in this package.

Each ``cli/<group>.py`` exposes ``register(subparsers)``; a handler returns an exit
code. Handlers import flows and servers lazily so that ``bookrec --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = ("db", "ingest", "train", "registry", "serve", "ops", "apikeys", "online")


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen handler; errors become a message and exit code 1/2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _prefect_defaults()
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CommandError as exc:
        print(f"bookrec {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _prefect_defaults() -> None:
    """The project's own Prefect defaults: state under <home>/prefect, telemetry off.

    Set only where the environment says nothing, so a configured PREFECT_API_URL or
    PREFECT_HOME wins.
    """
    import os

    from bookrec.settings import get_settings

    home = get_settings().home_dir
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class CommandError(Exception):
    """An expected failure: printed as one line, without a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
