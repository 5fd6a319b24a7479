"""The operations files agree with the tools that read them and with each other:
GitHub's workflow schema, hadolint, prefect.yaml against the flows and Prefect's own models,
the ECS work pool template against prefect-aws, deploy.yml against the stack outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .cfn_helpers import load_template

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
FLOWS = {
    "ingest": "flows/ingest.py:ingest_flow",
    "train": "flows/train.py:train_flow",
    "promote": "flows/promote.py:promote_flow",
    "approval": "flows/approval.py:approval_flow",
    "rollback": "flows/rollback.py:rollback_flow",
    "rollout": "flows/rollout.py:rollout_flow",
    "reload": "flows/reload.py:reload_flow",
    "nightly": "flows/nightly.py:nightly_flow",
    "housekeeping": "flows/housekeeping.py:housekeeping_flow",
}
PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Z0-9_]+)\s*\}\}")


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _deployments(config: dict, name: str) -> dict[str, dict]:
    """The deployments called ``name``, keyed by the flow of their entrypoint."""
    by_flow = {}
    for deployment in config["deployments"]:
        if deployment["name"] == name:
            flow = next(k for k, v in FLOWS.items() if v == deployment["entrypoint"])
            by_flow[flow] = deployment
    return by_flow


# ---------------------------------------------------------------- workflows and Dockerfile
def test_workflows_match_githubs_schema():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "deploy.yml"}
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_lint_and_tests_with_service_containers_on_every_push():
    ci = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())
    triggers = ci[True]  # YAML 1.1 reads the key `on` as True
    assert "push" in triggers and triggers["push"] is None  # every branch
    steps = " ".join(s.get("run", "") for s in ci["jobs"]["lint"]["steps"])
    assert "ruff check" in steps
    test = ci["jobs"]["test"]
    assert {"postgres", "redis"} <= set(test["services"])
    assert "pytest" in " ".join(s.get("run", "") for s in test["steps"])
    assert test["env"]["BOOKREC_TEST_DATABASE_URL"].endswith("@127.0.0.1:5432/postgres")


def test_deploy_runs_on_main_after_ci_and_rolls_both_services():
    deploy = yaml.safe_load((REPO / ".github/workflows/deploy.yml").read_text())
    assert deploy[True]["push"]["branches"] == ["main"]
    assert deploy["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yml"
    job = deploy["jobs"]["deploy"]
    assert job["needs"] == "ci"
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("aws-actions/amazon-ecr-login") for u in uses)
    assert sum(u.startswith("aws-actions/amazon-ecs-deploy-task-definition") for u in uses) == 2
    runs = " ".join(s.get("run", "") for s in job["steps"])
    assert "docker push" in runs and "prefect --no-prompt deploy --name production" in runs
    last = job["steps"][-1]  # the watchdog, after the deployments it watches
    assert last["run"] == "bookrec automations"
    assert last["env"]["BOOKREC_ALERT_WEBHOOK"] == "${{ secrets.BOOKREC_ALERT_WEBHOOK }}"


def test_dockerfile_passes_hadolint():
    proc = subprocess.run(
        [str(BIN / "hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, flags=re.M)
    assert stages == [
        ("${PYTHON_IMAGE}", "build"),
        ("${PYTHON_IMAGE}", "runtime"),
        ("runtime", "worker"),
        ("runtime", "api"),  # last, so a plain `docker build .` gives the API
    ]
    assert "slim" in re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M).group(1)
    # The runtime drops root before the api and worker targets are built on it.
    runtime = text.split("AS runtime", 1)[1].split("AS worker", 1)[0]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M)
    api = text.split("AS api", 1)[1]
    assert "/livez" in re.search(r"^HEALTHCHECK.*(\n\s+.*)*", api, flags=re.M).group(0)
    assert '"bookrec", "serve"' in api
    worker = text.split("AS worker", 1)[1].split("AS api", 1)[0]
    assert '"prefect", "worker", "start"' in worker
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".bookrec", ".git", "tests"} <= set(ignored)


# ---------------------------------------------------------------- prefect.yaml
def test_prefect_yaml_parses_with_prefects_model(prefect_yaml):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert len(model.deployments) == 2 * len(FLOWS)
    assert set(_deployments(prefect_yaml, "local")) == set(FLOWS)
    assert set(_deployments(prefect_yaml, "production")) == set(FLOWS)


@pytest.mark.parametrize("flow_name", sorted(FLOWS))
def test_every_entrypoint_is_a_real_flow(flow_name):
    from prefect.flows import load_flow_from_entrypoint

    # No placeholder: the module must really import (a placeholder flow is built from the AST).
    flow = load_flow_from_entrypoint(str(REPO / FLOWS[flow_name]), use_placeholder_flow=False)
    assert flow.name == flow_name
    assert flow.description  # the UI shows the docstring


def test_local_and_production_deployments_differ_only_in_infrastructure(prefect_yaml):
    local, prod = _deployments(prefect_yaml, "local"), _deployments(prefect_yaml, "production")
    for flow in FLOWS:
        for key in ("schedules", "concurrency_limit", "triggers", "parameters", "description"):
            assert local[flow].get(key) == prod[flow].get(key), (flow, key)
        assert local[flow]["work_pool"]["name"] == "local-process"
        assert prod[flow]["pull"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}
        ]


def test_nightly_schedule_and_concurrency(prefect_yaml):
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    nightly = _deployments(prefect_yaml, "local")["nightly"]
    (schedule,) = nightly["schedules"]
    built = _schedule_config_to_deployment_schedule(schedule)["schedule"]
    assert (built.cron, built.timezone) == ("0 2 * * *", "UTC")
    config = ConcurrencyLimitConfig.model_validate(nightly["concurrency_limit"])
    assert config.limit == 1 and config.collision_strategy.value == "CANCEL_NEW"
    clocked = {"nightly", "housekeeping"}
    others = [d for f, d in _deployments(prefect_yaml, "local").items() if f not in clocked]
    assert not any(d.get("schedules") for d in others)  # only these run on a clock


def test_housekeeping_runs_daily_in_both_deployments(prefect_yaml):
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    for name in ("local", "production"):
        housekeeping = _deployments(prefect_yaml, name)["housekeeping"]
        (schedule,) = housekeeping["schedules"]
        built = _schedule_config_to_deployment_schedule(schedule)["schedule"]
        assert (built.cron, built.timezone) == ("30 1 * * *", "UTC")  # daily, before nightly
        config = ConcurrencyLimitConfig.model_validate(housekeeping["concurrency_limit"])
        assert config.limit == 1


def test_promotion_event_triggers_the_reload_deployment(prefect_yaml):
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.events.schemas.events import Resource

    for name in ("local", "production"):
        deployments = _deployments(prefect_yaml, name)
        assert [f for f, d in deployments.items() if d.get("triggers")] == ["reload"]
        (trigger,) = _initialize_deployment_triggers(
            "reload", json.loads(json.dumps(deployments["reload"]["triggers"]))
        )
        assert trigger.expect == {"bookrec.model.promoted"}
        # The resource tasks.registry.announce_champion puts on the event.
        resource = Resource({"prefect.resource.id": "bookrec.model.20261126-0200-abc"})
        assert trigger.match.matches(resource)
        assert not trigger.match.matches(Resource({"prefect.resource.id": "bookrec.other.x"}))


def test_announce_champion_emits_what_the_trigger_expects():
    source = (REPO / "tasks" / "registry.py").read_text()
    assert 'event="bookrec.model.promoted"' in source
    assert '"prefect.resource.id": f"bookrec.model.{version}"' in source


def test_local_pull_step_runs_flows_in_the_checkout(prefect_yaml):
    (build,) = prefect_yaml["build"]
    step = build["prefect.deployments.steps.run_shell_script"]
    assert step["script"] == "pwd" and step["id"] == "checkout"
    (pull,) = prefect_yaml["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "{{ checkout.stdout }}"
    )


# ---------------------------------------------------------------- ECS pool and deploy.yml
def _placeholders(node) -> set[str]:
    return set(PLACEHOLDER.findall(json.dumps(node)))


def test_ecs_base_job_template_covers_prefect_aws(prefect_yaml):
    from prefect_aws.workers.ecs_worker import ECSWorker

    ours = json.loads((REPO / "deployments/work-pools/ecs.json").read_text())
    default = ECSWorker.get_default_base_job_template()
    declared = set(ours["variables"]["properties"])
    assert set(default["variables"]["properties"]) <= declared
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(ours["job_configuration"])))
    assert used <= declared
    container = ours["job_configuration"]["task_definition"]["containerDefinitions"][0]
    assert container["secrets"] == "{{ secrets }}"
    # Every job variable a production deployment sets is a variable of the pool.
    for deployment in _deployments(prefect_yaml, "production").values():
        assert set(deployment["work_pool"]["job_variables"]) <= declared
        assert {"image", "cpu", "memory", "cluster", "execution_role_arn", "task_role_arn"} <= set(
            deployment["work_pool"]["job_variables"]
        )


def test_deploy_workflow_exports_every_placeholder_from_real_stack_outputs(prefect_yaml):
    deploy_text = (REPO / ".github/workflows/deploy.yml").read_text()
    exported = set(re.findall(r'"(BOOKREC_[A-Z0-9_]+)": outputs\["(\w+)"\]', deploy_text))
    outputs_used = {o for _, o in exported}
    env_names = {e for e, _ in exported}
    env_names |= set(re.findall(r"^\s+(BOOKREC_[A-Z0-9_]+): \$\{\{", deploy_text, flags=re.M))
    env_names |= set(re.findall(r'echo "(BOOKREC_[A-Z0-9_]+)=', deploy_text))
    needed = set()
    for deployment in _deployments(prefect_yaml, "production").values():
        needed |= _placeholders(deployment)
    assert needed, "production deployments take their infrastructure from the environment"
    assert needed <= env_names, needed - env_names
    assert outputs_used <= set(load_template()["Outputs"])
    # The local deployments need no deploy-time environment at all.
    for deployment in _deployments(prefect_yaml, "local").values():
        assert not _placeholders(deployment)


def test_flow_run_secrets_come_from_secrets_manager(prefect_yaml):
    for deployment in _deployments(prefect_yaml, "production").values():
        variables = deployment["work_pool"]["job_variables"]
        assert {s["name"] for s in variables["secrets"]} == {
            "PGPASSWORD",
            "BOOKREC_ADMIN_TOKEN",
            "BOOKREC_REDIS_URL",  # it carries the Redis AUTH token
        }
        assert not any("PASSWORD" in k or "TOKEN" in k for k in variables["env"])
        assert "BOOKREC_REDIS_URL" not in variables["env"]
