"""The approval run as a deployment run, as under `bookrec up` and in production: a real
process worker picks it up, the run suspends (its process exits, releasing the
infrastructure), `bookrec approve` resumes it and the worker starts it again to promote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookrec.registry import Registry
from cli.main import main
from flows.promote import promote_flow
from tests.conftest import REPO
from tests.registry.test_approval import wait_for
from tests.utils.versions import model_metrics

pytestmark = pytest.mark.slow  # a worker that starts flow runs in fresh processes: ~1-2 min


@pytest.fixture
def approval_deployment(flow_env, tmp_path: Path) -> Iterator[str]:
    """An ``approval/local`` deployment on a fresh process pool, and a worker serving it."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    pool = f"approval-{tmp_path.name[-12:]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("approval")
        client.create_deployment(
            flow_id=flow_id, name="local", entrypoint="flows/approval.py:approval_flow",
            work_pool_name=pool, path=str(REPO),
            pull_steps=[{"prefect.deployments.steps.set_working_directory":
                         {"directory": str(REPO)}}],
        )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool,
         "--type", "process"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    yield pool
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    log.close()
    with get_client(sync_client=True) as client:
        client.delete_deployment(client.read_deployment_by_name("approval/local").id)


def test_deployment_run_suspends_and_resumes_on_the_worker(
    approval_deployment, reg: Registry, save_hybrid, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BOOKREC_APPROVAL_TIMEOUT_S", "600")
    from bookrec.settings import get_settings

    get_settings.cache_clear()
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    promote_flow("v1")
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")
    asked = promote_flow("v2", require_approval=True)
    assert asked["decision"] == "awaiting_approval"
    assert asked["approval"]["via"] == "deployment approval/local"
    run_id = asked["approval"]["flow_run_id"]
    state = wait_for(run_id, lambda s: s.is_paused(), "suspended", timeout=240)
    assert state.name == "Suspended"  # the run's process is gone; nothing holds a slot

    assert main(["approve", "v2", "--reason", "ok on the worker", "--wait", "240",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["decision"], out["champion"]) == ("promoted", "v2")
    assert reg.champion()["version"] == "v2"
    assert wait_for(run_id, lambda s: s.is_final(), "finished").is_completed()
