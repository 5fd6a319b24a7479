"""`prefect deploy --name local` against a real Prefect server (the test harness): the eight
deployments, their schedules, concurrency limit, parameter schemas and the reload trigger;
the ECS pool template is accepted by the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
# The real CLI imports every flow and registers eight deployments: about a minute here.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(prefect_harness, tmp_path_factory):
    """Run the real CLI once against the harness server; yield a sync client."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="local-process", type="process"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
        DO_NOT_TRACK="1",
    )
    proc = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with get_client(sync_client=True) as client:
        yield client
        # The server is the session's: leave it as it was, or later tests' approval runs
        # would go to an `approval/local` deployment that no worker serves.
        for deployment in client.read_deployments():
            if deployment.name != "local":
                continue
            resource = f"prefect.deployment.{deployment.id}"
            for automation in client.read_resource_related_automations(resource):
                client.delete_automation(automation.id)
            client.delete_deployment(deployment.id)
        client.delete_work_pool("local-process")
        assert not [d for d in client.read_deployments() if d.name == "local"]


def test_nine_local_deployments_run_in_the_checkout(deployed):
    names = {"ingest", "train", "promote", "approval", "rollback", "rollout", "reload",
             "nightly", "housekeeping"}
    for flow in names:
        deployment = deployed.read_deployment_by_name(f"{flow}/local")
        assert deployment.work_pool_name == "local-process"
        assert deployment.entrypoint == f"flows/{flow}.py:{flow}_flow"
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        assert deployment.enforce_parameter_schema


def test_nightly_schedule_concurrency_and_typed_parameters(deployed):
    nightly = deployed.read_deployment_by_name("nightly/local")
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        "0 2 * * *",
        "UTC",
        True,
    )
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    props = nightly.parameter_openapi_schema["properties"]
    assert set(props) == {"source", "layout", "baselines"}  # the UI run form
    for flow in ("ingest", "train", "promote", "approval", "rollback", "rollout", "reload"):
        assert not deployed.read_deployment_by_name(f"{flow}/local").schedules
    housekeeping = deployed.read_deployment_by_name("housekeeping/local")
    (schedule,) = housekeeping.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 1 * * *", "UTC")
    assert set(housekeeping.parameter_openapi_schema["properties"]) == {
        "retention_days",
        "days_ahead",
    }


def test_promotion_event_automation_runs_the_reload_deployment(deployed):
    reload_deployment = deployed.read_deployment_by_name("reload/local")
    automations = deployed.read_resource_related_automations(
        f"prefect.deployment.{reload_deployment.id}"
    )
    (automation,) = automations
    assert automation.enabled
    assert automation.trigger.expect == {"bookrec.model.promoted"}
    (action,) = automation.actions
    assert action.type == "run-deployment"
    assert action.deployment_id == reload_deployment.id


def test_ecs_work_pool_template_is_accepted_by_the_server(deployed):
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((REPO / "deployments/work-pools/ecs.json").read_text())
    pool = deployed.create_work_pool(
        WorkPoolCreate(name="bookrec-ecs-test", type="ecs", base_job_template=template)
    )
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["secrets"]["type"] == "array"
    assert variables["cpu"]["default"] == 1024
