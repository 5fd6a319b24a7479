"""The local Prefect server process: ``python -m cli.prefect_serve --host H --port P``.

It runs what ``prefect server start`` runs in the foreground (``create_app(final=True)``
under uvicorn, services included, settings from the environment) without loading Prefect's
command line first, and with the cyclic garbage collector paused while the server's
modules load: ready after ~3.6 s instead of ~4.4 s on this project's 2-core machine, which
a flow command started with no server running waits for.
"""

from __future__ import annotations

import argparse
import gc


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port`` and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m cli.prefect_serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    gc.disable()  # imports build hundreds of thousands of objects and no cycles to free
    try:
        import uvicorn
        from prefect.server.api.server import create_app
        from prefect.settings import get_current_settings
    finally:
        gc.enable()
    gc.freeze()  # and later collections need not walk them
    settings = get_current_settings().server
    uvicorn.run(
        create_app(final=True),
        host=args.host,
        port=args.port,
        timeout_keep_alive=settings.api.keepalive_timeout,
        ws_ping_interval=settings.api.websocket_ping_interval,
        ws_ping_timeout=settings.api.websocket_ping_timeout,
        log_level=settings.logging_level.lower(),
    )


if __name__ == "__main__":
    main()
