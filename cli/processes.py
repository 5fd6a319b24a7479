"""Background processes of ``bookrec up``: start one in its own session with a log and a
pid file, find it again, stop it with its children; wait for something to come up.

Each service writes ``<home>/logs/<name>.log`` and ``<home>/run/<name>.pid`` (JSON: pid,
argv, log, start time); a pid counts as ours only while its command line still holds the
service's marker, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Stop order for `down`: the API first (it holds no state), the database last.
SERVICES = ("api", "worker", "flow-runner", "prefect-server")


class Clock:
    """Prints progress lines with the seconds since ``up`` started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, message: str) -> None:
        """One progress line, flushed at once so a terminal never looks stuck."""
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


@dataclass
class Service:
    """A background process: its pid file, log file and what its command line contains."""

    name: str
    run_dir: Path
    log_dir: Path
    marker: str

    @property
    def pid_file(self) -> Path:
        """``<home>/run/<name>.pid`` (JSON: pid, argv, log, started_at)."""
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        """``<home>/logs/<name>.log``."""
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded pid if that process is still ours and alive, else None (and no file)."""
        try:
            pid = int(json.loads(self.pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if alive(pid, self.marker):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self, argv: list[str], env: dict[str, str], cwd: Path, extra: dict | None = None
    ) -> subprocess.Popen:
        """Start ``argv`` in its own session, output appended to the log, and record its pid
        (plus ``extra``, e.g. the URL it serves)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        log.write(f"\n=== {datetime.now(UTC).isoformat()} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        record = {
            "pid": proc.pid,
            "argv": argv,
            "log": str(self.log_file),
            "started_at": datetime.now(UTC).isoformat(),
            **(extra or {}),
        }
        self.pid_file.write_text(json.dumps(record))
        return proc

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process group, SIGKILL it after ``timeout``; True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid, self.marker):
            time.sleep(0.2)
        if alive(pid, self.marker):
            signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 25) -> str:
        """The end of the log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def run_logged(
    argv: list[str], log: Path, env: dict[str, str], *, new_session: bool = False
) -> tuple[int, list[str]]:
    """Run ``argv`` from the repository to completion, its output appended to ``log``;
    the exit code and the log's lines. ``new_session`` keeps what it starts (the embedded
    PostgreSQL) out of this terminal's process group, so Ctrl-C does not stop it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=new_session,
            check=False,
        )
    return proc.returncode, log.read_text(errors="replace").splitlines()


def alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs, is no zombie and (where /proc exists) its command has ``marker``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        if ") Z" in (proc / "stat").read_text():
            return False
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        return marker in cmdline.decode(errors="replace")
    except OSError:
        return False


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (its children too), or the process alone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def port_in_use(port: int) -> bool:
    """True if something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def get_json(url: str, timeout: float = 3.0) -> Any:
    """GET ``url`` and parse JSON; None on any connection or HTTP error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return json.loads(response.read() or b"null")
    except (OSError, ValueError, urllib.error.URLError):
        return None


def wait_for(what: str, check, clock: Clock, timeout: float, proc=None, service=None) -> Any:
    """Poll ``check()`` until it returns something truthy; say so every few seconds."""
    from cli.main import CommandError

    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise CommandError(
                f"{what}: the process exited ({proc.returncode}); end of "
                f"{service.log_file}:\n{service.tail()}"
            )
        if time.monotonic() - last_note > 10:
            clock.say(f"  still waiting for {what}")
            last_note = time.monotonic()
        time.sleep(0.5)
    detail = f"; end of {service.log_file}:\n{service.tail()}" if service else ""
    raise CommandError(f"{what}: not ready after {timeout:.0f} s{detail}")


def services(settings) -> dict[str, Service]:
    """The background services, keyed by name."""
    run_dir, log_dir = settings.home_dir / "run", settings.log_dir
    # "prefect" for the server: cli.prefect_serve, or `prefect server start` of older runs
    markers = {"api": "gunicorn", "worker": "worker", "flow-runner": "cli.warm",
               "prefect-server": "prefect"}
    return {name: Service(name, run_dir, log_dir, markers[name]) for name in SERVICES}


def bin_path(name: str) -> str:
    """A console script next to this interpreter (the project's virtualenv)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name
