"""The watchdog automations (deployments/automations.yaml) on a real Prefect server, with a
real HTTP receiver behind the Webhook block: a failed nightly run fires the failure alert
at once and, not having completed within the deadline, the proactive one; a completed
nightly run fires neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bookrec.settings import Settings
from cli import watchdog
from tests.conftest import REPO

_NIGHTLY = """
import sys
from prefect import flow

@flow(name="nightly")
def nightly(fail: bool) -> str:
    if fail:
        raise RuntimeError("the nightly run broke")
    return "ok"

state = nightly(fail=sys.argv[1] == "fail", return_state=True)
print(state.state_details.flow_run_id)
"""


class _Receiver(ThreadingHTTPServer):
    """Collects the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/alert"


@pytest.fixture
def receiver():
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _start_nightly(spawn, api_url: str, tmp_path, outcome: str) -> subprocess.Popen:
    """Start a flow named ``nightly`` against the server in a fresh process (``spawn``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env.update({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(tmp_path / f"client-{outcome}")})
    return spawn([sys.executable, "-c", _NIGHTLY, outcome], env=env, cwd=REPO,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_id(proc: subprocess.Popen) -> str:
    """The run id the process printed (it must have succeeded)."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


def test_declared_automations_are_valid_prefect_automations():
    settings = Settings(nightly_deadline_s=4 * 3600)
    built = {a.name: a for a in watchdog.build_automations(settings)}
    assert set(built) == {"bookrec-nightly-not-completed", "bookrec-nightly-failed"}
    late = built["bookrec-nightly-not-completed"].trigger
    assert late.posture == "Proactive" and late.within.total_seconds() == 4 * 3600
    assert late.expect == {"prefect.flow-run.Completed"}
    failed = built["bookrec-nightly-failed"].trigger
    assert failed.posture == "Reactive"
    assert failed.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert all(a.actions[0].type == "do-nothing" for a in built.values())  # no webhook set


def test_watchdog_alerts_reach_the_webhook(up_prefect_server, receiver, tmp_path, spawn):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = up_prefect_server["url"]
    proactive_s = up_prefect_server["proactive_s"]  # how often the server evaluates deadlines
    deadline_s = 10  # the shortest deadline the settings accept
    settings = Settings(home=tmp_path / "home", alert_webhook=receiver.url,
                        nightly_deadline_s=deadline_s)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        first = watchdog.apply_automations(settings)
        again = watchdog.apply_automations(settings)  # idempotent: updated in place
        from prefect.automations import Automation

        stored = Automation.read(name="bookrec-nightly-failed")
    assert [a["action"] for a in first] == ["created", "created"]
    assert [a["action"] for a in again] == ["updated", "updated"]
    assert [a["id"] for a in again] == [a["id"] for a in first]
    assert stored.actions[0].type == "call-webhook"

    # the triggers service reloads changed automations on its periodic evaluation
    time.sleep(proactive_s + 1)
    completed_started = time.monotonic()  # the completed run's events all come after this
    failing = _start_nightly(spawn, url, tmp_path, "fail")  # both runs at once, each in its process
    completing = _start_nightly(spawn, url, tmp_path, "complete")
    failed_run, completed_run = _run_id(failing), _run_id(completing)

    def alerts_for(run_id: str) -> set[str]:
        return {b["alert"] for b in receiver.bodies if b.get("flow_run", "").endswith(run_id)}

    deadline = time.monotonic() + 120
    want = {"bookrec-nightly-failed", "bookrec-nightly-not-completed"}
    while time.monotonic() < deadline and alerts_for(failed_run) != want:
        time.sleep(0.5)
    assert alerts_for(failed_run) == want, receiver.bodies
    failure = next(b for b in receiver.bodies if b["alert"] == "bookrec-nightly-failed")
    assert failure["last_state"] == "prefect.flow-run.Failed"
    # past the completed run's deadline too, with two evaluations and a margin to spare
    time.sleep(max(0.0, completed_started + deadline_s + 2 * proactive_s + 2 - time.monotonic()))
    assert alerts_for(completed_run) == set(), receiver.bodies
