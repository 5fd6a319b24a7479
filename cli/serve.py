"""``bookrec serve``: run the API under gunicorn with the project's configuration."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` verb."""
    parser = subparsers.add_parser("serve", help="run the HTTP API (gunicorn)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.set_defaults(handler=_serve)


def gunicorn_argv(host: str, port: int, workers: int | None) -> list[str]:
    """The gunicorn command line for the project's config (``serving/gunicorn_conf.py``)."""
    conf = Path(__file__).resolve().parents[1] / "serving" / "gunicorn_conf.py"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"{host}:{port}"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


def _serve(args: argparse.Namespace) -> int:
    from cli.main import CommandError

    if not 0 < args.port < 65536:
        raise CommandError(f"--port: {args.port} is not a TCP port", exit_code=2)
    if args.workers is not None and args.workers < 1:
        raise CommandError("--workers: must be at least 1", exit_code=2)
    argv = gunicorn_argv(args.host, args.port, args.workers)
    os.execv(argv[0], argv)  # noqa: S606 - become gunicorn, so signals reach it directly
    return 0  # pragma: no cover
