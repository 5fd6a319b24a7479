"""The warm flow runner: flow commands without paying for Prefect's import each time.

A flow command (``bookrec rollback``, ``promote``, ``ingest``...) runs its flow in the
command's own process, so the flow run lands on the long-lived Prefect server with its
logs and artifacts. Importing Prefect and the flows costs 2-4 s of CPU on this project's
2-core machine, more than a rollback's own work. The runner is a background process
(``python -m cli.warm``, started next to the local Prefect server by ``bookrec up`` and by
the first flow command, stopped by ``bookrec down``) that imports them once and then, for
each command, forks a child that is that command: the client hands over its argv, working
folder, environment and its stdin/stdout/stderr (``SCM_RIGHTS`` over a Unix socket in
``<home>/run``, mode 0600), and gets the exit status back. Ctrl-C is forwarded.

The child is the same code with the same Prefect settings, or the command runs cold:
the runner refuses a request whose ``PREFECT_*`` environment or Python differ from its
own (Prefect reads part of its settings at import), and exits when any source file of the
project changed since it started (the next command starts a new one). ``BOOKREC_WARM=0``
turns it off for one command.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

SERVICE = "flow-runner"
SOCKET_NAME = "flow-runner.sock"
MARKER = "cli.warm"
# What every flow verb imports: the flows and Prefect's client side; what a flow run
# imports on its way (Prefect serialises parameters with FastAPI's encoder, the flows
# migrate the database with Alembic), ~0.5 s of a command's CPU otherwise.
PRELOAD = (
    "prefect", "prefect.flow_runs", "prefect.deployments", "flows.ingest", "flows.train",
    "flows.promote", "flows.rollback", "flows.reload", "flows.nightly", "flows.approval",
    "flows.rollout", "bookrec.models.persist", "cli.main", "alembic.command",
    "alembic.runtime.environment", "alembic.runtime.migration", "alembic.ddl.postgresql",
)
_CODE_DIRS = ("cli", "flows", "tasks", "bookrec", "serving")
_ROOT = Path(__file__).resolve().parent.parent
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 1 << 20


def socket_path(home: Path) -> Path:
    """``<home>/run/flow-runner.sock``."""
    return home / "run" / SOCKET_NAME


def code_stamp() -> str:
    """Number and newest modification time of the project's Python files."""
    count, newest = 0, 0
    for name in _CODE_DIRS:
        for path in (_ROOT / name).rglob("*.py"):
            count += 1
            newest = max(newest, path.stat().st_mtime_ns)
    return f"{count}:{newest}"


def prefect_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """The part of an environment that Prefect may have read at import time."""
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


# ---------------------------------------------------------------- client
def _same_python(request: dict) -> bool:
    """Whether the command was started by this interpreter in this environment: the same
    binary behind the name (a venv's ``python`` and ``python3`` are links to one) and the
    same ``sys.prefix`` (two venvs link to one binary)."""
    python = request.get("python")
    if not isinstance(python, str) or request.get("prefix") != sys.prefix:
        return False
    return os.path.realpath(python) == os.path.realpath(sys.executable)


def run(argv: list[str], home: Path, timeout: float = 1.0) -> int | None:
    """Run the command ``argv`` in the runner; its exit status, or None to run it here
    (no runner, a runner with other settings or older code, or ``BOOKREC_WARM=0``)."""
    if os.environ.get("BOOKREC_WARM", "1") == "0":
        return None
    path = socket_path(home)
    if not path.exists():
        return None
    request = json.dumps({
        "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
        "python": sys.executable, "prefix": sys.prefix, "prefect_env": prefect_env(os.environ),
    }).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        sock.sendall(request)
        sock.settimeout(None)
        return _await_exit(sock)
    except OSError:
        return None
    finally:
        sock.close()


def _await_exit(sock: socket.socket) -> int | None:
    """Wait for ``{"exit": n}`` (or a refusal); forward Ctrl-C to the child."""
    buffer = b""
    interrupts = 0
    while True:
        try:
            chunk = sock.recv(4096)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                return 130
            sock.sendall(b"INT\n")
            continue
        if not chunk:
            raise OSError("the flow runner closed the connection")
        buffer += chunk
        if b"\n" in buffer:
            reply = json.loads(buffer.split(b"\n", 1)[0])
            return None if "refused" in reply else int(reply["exit"])


# ---------------------------------------------------------------- runner
def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    if len(data) != _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    (size,) = _HEADER.unpack(data)
    if size > _MAX_REQUEST:
        raise ValueError("request too large")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    return json.loads(body), fds


def _child(request: dict[str, Any], fds: list[int], listener: socket.socket) -> None:
    """In the forked child: become the command and exit with its status."""
    code = 1
    try:
        listener.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own fds
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["bookrec", *request["argv"]]
        from bookrec.settings import get_settings
        from cli import main

        get_settings.cache_clear()
        code = main.run_here(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - the child must exit, whatever happened
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _supervise(conn: socket.socket, pid: int, argv: list[str]) -> None:
    """Forward Ctrl-C to the child, reap it, send its exit status."""
    started = time.monotonic()
    status = None
    try:
        while status is None:
            ready, _, _ = select.select([conn], [], [], 0.05)
            if ready:
                data = conn.recv(64)
                if data.startswith(b"INT"):
                    os.kill(pid, signal.SIGINT)
                elif not data:  # the client went away: stop its command
                    os.kill(pid, signal.SIGTERM)
                    ready = None
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
        code = status if status >= 0 else 128 - status
        print(f"{argv[:1]} pid {pid} exit {code} in {time.monotonic() - started:.2f} s",
              flush=True)
        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


def serve(home: Path) -> int:
    """Import Prefect and the flows, then fork one child per command until the code changes."""
    import importlib

    from cli.prefect_server import FLOW_RUN_IMPORTS

    for module in (*PRELOAD, *FLOW_RUN_IMPORTS):
        importlib.import_module(module)
    from prefect.context import get_settings_context

    from cli.main import without_heartbeats

    without_heartbeats(get_settings_context().settings)  # built once, inherited by each fork
    stamp = code_stamp()
    own_env = prefect_env(os.environ)
    path = socket_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: (path.unlink(missing_ok=True), os._exit(0)))
    print(f"flow runner ready on {path} (pid {os.getpid()}, code {stamp})", flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            request, fds = _recv_request(conn)
        except (OSError, ValueError) as exc:
            print(f"refused a request: {exc}", flush=True)
            conn.close()
            continue
        reason = None
        if not _same_python(request):
            reason = "another Python"
        elif request.get("prefect_env") != own_env:
            reason = "other PREFECT_* settings"
        elif code_stamp() != stamp:
            reason = "the code changed"
        if reason:
            for fd in fds:
                os.close(fd)
            print(f"refused {request.get('argv', [])[:1]}: {reason}", flush=True)
            try:
                conn.sendall(json.dumps({"refused": reason}).encode() + b"\n")
            finally:
                conn.close()
            if reason == "the code changed":
                path.unlink(missing_ok=True)
                return 0
            continue
        pid = os.fork()
        if pid == 0:
            _child(request, fds, listener)
        for fd in fds:
            os.close(fd)
        threading.Thread(target=_supervise, args=(conn, pid, request["argv"]),
                         daemon=True).start()


def ensure_started(settings, env: dict[str, str] | None = None) -> None:
    """Start the runner for this home in the background unless one runs (returns at once);
    ``env``: its environment (default: this process's)."""
    from cli import processes

    service = processes.services(settings)[SERVICE]
    if service.pid() is not None:
        return
    env = dict(os.environ if env is None else env)
    env.pop("BOOKREC_WARM", None)
    service.start([sys.executable, "-m", MARKER], env, processes.ROOT)


def start_for(env: dict[str, str], timeout: float = 120.0) -> Path:
    """Start the runner a quiet flow command run with ``env`` would leave, and wait until it
    listens (benchmarks and tests; a user's first flow command does the same). Its socket."""
    import argparse

    from bookrec.settings import get_settings
    from cli import main as cli_main
    from cli import prefect_server

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        get_settings.cache_clear()
        settings = get_settings()
        cli_main._prefect_defaults()
        prefect_server.quiet_logs(settings)  # a quiet command sets it before importing Prefect
        cli_main._find_local_system(argparse.Namespace(verbose=False, preload=()))
        ensure_started(settings)
        path = socket_path(settings.home_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the flow runner did not start within {timeout:.0f} s")
        time.sleep(0.1)
    return path


def main() -> int:
    """``python -m cli.warm``: serve the home that the settings name."""
    from bookrec.settings import get_settings

    return serve(get_settings().home_dir)


if __name__ == "__main__":
    sys.exit(main())
