"""End to end, the way a new user runs it: `bookrec up` on the bundled sample with an
embedded PostgreSQL, a Prefect server and worker, the deployments from prefect.yaml, a
nightly run to Completed, the promotion event triggering the reload deployment, the API
answering with the promoted version; `up` again is a no-op; `bookrec down` stops it all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_DIR
from tests.utils.ports import free_port

pytestmark = pytest.mark.slow
BOOKREC = [sys.executable, "-m", "cli.main"]


def _run(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        BOOKREC + args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n")
    return proc


def _get(url: str) -> tuple[int, dict, dict]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return response.status, dict(response.headers), json.loads(response.read())


def _pids(home: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in sorted((home / "run").glob("*.pid"))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z" in stat.read_text())


@pytest.fixture
def up_env(tmp_path: Path):
    """Environment of a fresh user: a new home, free ports, no BOOKREC_* or PREFECT_* set."""
    home = Path(os.environ.get("BOOKREC_E2E_HOME") or tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env["BOOKREC_HOME"] = str(home)
    api_port, prefect_port = free_port(), free_port()
    yield env, home, api_port, prefect_port
    _run(["down"], env, timeout=120)


def test_up_runs_the_pipeline_and_serves_the_promoted_model(up_env):
    env, home, api_port, prefect_port = up_env
    ports = ["--api-port", str(api_port), "--prefect-port", str(prefect_port)]
    assert any(SAMPLE_DIR.rglob("*.csv*")), "data/sample holds no CSV files"

    started = time.monotonic()
    first = _run(["up", *ports], env, timeout=1500)  # the default source: the bundled sample
    first_seconds = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert re.search(r"^\[ *[\d.]+s\] nightly \(.+\): Completed$", first.stdout, flags=re.M)
    assert re.search(r"^\[ *[\d.]+s\] promotion: \S+ promoted", first.stdout, flags=re.M)
    print(f"bookrec up (services + nightly on the sample): {first_seconds:.1f} s")

    champion = json.loads((home / "artifacts" / "models" / "champion.json").read_text())
    version = champion["version"]
    status, headers, body = _get(f"http://127.0.0.1:{api_port}/readyz")
    assert status == 200 and body["model_version"] == version
    status, headers, body = _get(f"http://127.0.0.1:{api_port}/v1/books/popular?k=5")
    assert status == 200 and headers["X-Model-Version"] == version
    assert len(body["items"] if isinstance(body, dict) else body) == 5

    # Prefect: the deployments from prefect.yaml, the schedule, the concurrency limit, the
    # stages of the nightly run, and the reload run the promotion event triggered.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{prefect_port}/api"}),
        get_client(sync_client=True) as client,
    ):
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["local"]))
        )
        assert len(deployments) == 9  # six pipeline flows, approval, rollout, housekeeping
        nightly = client.read_deployment_by_name("nightly/local")
        (schedule,) = nightly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
        assert nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        runs = {r.name: r for r in client.read_flow_runs()}
        by_flow = {}
        for run in runs.values():
            flow = client.read_flow(run.flow_id).name
            by_flow.setdefault(flow, []).append(run)
        for flow in ("nightly", "ingest", "train", "promote"):
            assert any(r.state.is_completed() for r in by_flow[flow]), flow
        reload_deployment = client.read_deployment_by_name("reload/local")
        deadline = time.monotonic() + 120
        triggered = []
        while time.monotonic() < deadline and not triggered:
            triggered = [
                r
                for r in client.read_flow_runs()
                if r.deployment_id == reload_deployment.id and r.state.is_completed()
            ]
            time.sleep(2)
        assert triggered, "the bookrec.model.promoted event did not run reload/local"

    # The watchdog automations, and the CLI on this machine: it finds up's server, token and
    # API by itself (no PREFECT_API_URL in env), and `bookrec run` starts a deployment run.
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{prefect_port}/api"}):
        from prefect.automations import Automation

        for name in ("bookrec-nightly-not-completed", "bookrec-nightly-failed"):
            assert Automation.read(name=name).enabled
    ran = _run(["run", "reload", "--wait", "--json"], env, timeout=600)
    assert ran.returncode == 0 and json.loads(ran.stdout)["state"] == "Completed"
    refused = _run(["promote", "--json"], env, timeout=300)  # nothing left to promote
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert json.loads(refused.stdout)["error"].startswith("refused: no candidate")

    # Running up again reuses every process and does not retrain.
    pids = _pids(home)
    # (the warm flow runner was left by the first flow command above: `run`)
    assert set(pids) == {"api", "worker", "prefect-server", "flow-runner"}
    started = time.monotonic()
    again = _run(["up", *ports], env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already promoted; skipping the nightly run" in again.stdout
    assert _pids(home) == pids
    print(f"bookrec up again: {time.monotonic() - started:.1f} s")

    down = _run(["down"], env, timeout=120)
    assert down.returncode == 0
    assert "stopped embedded PostgreSQL" in down.stdout
    assert not any(_alive(pid) for pid in pids.values())
    assert not list((home / "run").glob("*.pid"))
    assert not (home / "pgdata" / "postmaster.pid").exists()
