"""The production CloudFormation template: cfn-lint, static least-privilege and alarm checks,
and a stack created in moto's CloudFormation (over HTTP) as far as moto supports the types."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from bookrec import cloudwatch
from bookrec.settings import Settings

from .cfn_helpers import TEMPLATE, load_template, moto_compatible

CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")

REQUIRED_OUTPUTS = {
    "ApiUrl",
    "ArtifactBucketName",
    "ClusterName",
    "ApiServiceName",
    "WorkerServiceName",
    "TaskExecutionRoleArn",
    "FlowRunTaskRoleArn",
    "FlowRunSecurityGroupId",
    "PrivateSubnet1",
    "PrivateSubnet2",
    "VpcId",
    "DatabaseUrl",
    "RedisUrl",
    "DbPasswordSecretArn",
    "AdminTokenSecretArn",
    "ArtifactsUri",
    "WorkPoolName",
    "ApiTaskFamily",
    "WorkerTaskFamily",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _resources(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _statements(role: dict) -> list[dict]:
    return [
        s for p in role["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]
    ]


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_passes():
    proc = subprocess.run([CFN_LINT, str(TEMPLATE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_load_balancer_checks_readiness_and_api_scales_on_cpu(template):
    (group,) = _resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert group["Properties"]["HealthCheckPath"] == "/readyz"
    assert group["Properties"]["TargetType"] == "ip"
    (policy,) = _resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    config = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "ECSServiceAverageCPUUtilization"
    )
    services = _resources(template, "AWS::ECS::Service")
    assert set(services) == {"ApiService", "WorkerService"}
    for service in services.values():
        deployment = service["Properties"]["DeploymentConfiguration"]
        assert deployment["MinimumHealthyPercent"] == 100  # rolling, never below capacity
        assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}


def test_bucket_is_versioned_encrypted_and_private(template):
    (bucket,) = _resources(template, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4


def test_database_and_cache_are_private_and_encrypted(template):
    db = template["Resources"]["Database"]["Properties"]
    assert db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False
    assert "resolve:secretsmanager" in json.dumps(db["MasterUserPassword"])
    cache = template["Resources"]["Cache"]["Properties"]
    assert cache["AtRestEncryptionEnabled"] is True and cache["TransitEncryptionEnabled"] is True


def test_iam_is_least_privilege(template):
    roles = _resources(template, "AWS::IAM::Role")
    assert set(roles) == {"TaskExecutionRole", "ApiTaskRole", "FlowRunTaskRole", "WorkerTaskRole"}
    for name, role in roles.items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        for statement in _statements(role):
            assert statement["Effect"] == "Allow"
            actions = _as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (name, actions)
            if statement["Resource"] == "*":
                # Wildcard resources only for actions AWS cannot scope, or with a condition.
                unscoped = {
                    "ecr:GetAuthorizationToken",
                    "ecs:RegisterTaskDefinition",
                    "ecs:DeregisterTaskDefinition",
                    "ecs:DescribeTaskDefinition",
                    "ecs:ListTaskDefinitions",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeVpcs",
                }
                assert set(actions) <= unscoped or "Condition" in statement, (name, actions)
    api_actions = {a for s in _statements(roles["ApiTaskRole"]) for a in _as_list(s["Action"])}
    assert api_actions == {"s3:GetObject", "s3:ListBucket"}  # the API never writes models
    passrole = [s for s in _statements(roles["WorkerTaskRole"]) if s["Action"] == "iam:PassRole"]
    assert passrole and passrole[0]["Condition"]["StringEquals"] == {
        "iam:PassedToService": "ecs-tasks.amazonaws.com"
    }


def test_alarms_watch_5xx_rate_p99_and_the_metrics_the_pipeline_sends(template):
    alarms = _resources(template, "AWS::CloudWatch::Alarm")
    rate = alarms["Api5xxRateAlarm"]["Properties"]
    expression = next(m for m in rate["Metrics"] if m.get("ReturnData"))["Expression"]
    metric_names = {
        m["MetricStat"]["Metric"]["MetricName"] for m in rate["Metrics"] if "MetricStat" in m
    }
    assert {"HTTPCode_Target_5XX_Count", "RequestCount"} <= metric_names and "/" in expression
    assert alarms["ApiP99LatencyAlarm"]["Properties"]["ExtendedStatistic"] == "p99"
    # The nightly alarms watch names the nightly flow actually sends, in the default namespace.
    sent = {m.name for m in cloudwatch.pipeline_metrics(nightly_failed=True)}
    for name in ("NightlyFailedAlarm", "NightlyMissingAlarm"):
        props = alarms[name]["Properties"]
        assert props["MetricName"] in sent
        assert props["Namespace"] == {"Ref": "ProjectName"}
        assert props["Dimensions"] == [{"Name": "Environment", "Value": "production"}]
    assert template["Parameters"]["ProjectName"]["Default"] == Settings().cloudwatch_namespace
    assert alarms["NightlyMissingAlarm"]["Properties"]["TreatMissingData"] == "breaching"
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_required_outputs_exist(template):
    assert set(template["Outputs"]) >= REQUIRED_OUTPUTS


@pytest.fixture(scope="module")
def stack(moto_server: str, template: dict) -> dict[str, Any]:
    """The template created as a stack in moto; returns outputs and clients."""
    from moto.cloudformation.parsing import get_model_map

    body, stubbed = moto_compatible(template, set(get_model_map()))
    # Moto lacks these types; everything else is created for real in moto.
    assert set(stubbed) <= {
        "ApiCpuScalingPolicy",
        "ApiScalableTarget",
        "Api5xxRateAlarm",
        "ApiP99LatencyAlarm",
        "NightlyFailedAlarm",
        "NightlyMissingAlarm",
        "Cache",
        "CacheSubnetGroup",
        "DbSecret",
        "AdminTokenSecret",
        "DbSecretAttachment",
        "ArtifactBucketPolicy",
        "AlarmEmailSubscription",
    }
    kw = {"endpoint_url": moto_server, "region_name": "us-east-1"}
    ec2 = boto3.client("ec2", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"us-east-1{'ab'[i % 2]}"
        )["Subnet"]["SubnetId"]
        for i in range(4)
    ]
    name = f"bookrec-{uuid.uuid4().hex[:6]}"
    project = f"bk{uuid.uuid4().hex[:6]}"
    params = {
        "ProjectName": project,
        "ApiImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/bookrec:api-abc",
        "WorkerImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/bookrec:worker-abc",
        "PrefectApiUrl": "https://prefect.example.internal/api",
        "VpcId": vpc,
        "PublicSubnetIds": ",".join(subnets[:2]),
        "PrivateSubnetIds": ",".join(subnets[2:]),
    }
    cfn = boto3.client("cloudformation", **kw)
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(body),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    described = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {
        "status": described["StackStatus"],
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        "resources": cfn.describe_stack_resources(StackName=name)["StackResources"],
        "project": project,
        "kw": kw,
    }


def test_stack_is_created_in_moto(stack):
    assert stack["status"] == "CREATE_COMPLETE"
    assert set(stack["outputs"]) >= REQUIRED_OUTPUTS
    statuses = {r.get("LogicalResourceId"): r["ResourceStatus"] for r in stack["resources"]}
    for logical in (
        "ArtifactBucket",
        "Database",
        "Cluster",
        "ApiService",
        "WorkerService",
        "LoadBalancer",
        "ApiTargetGroup",
        "HttpListener",
        "ApiLogGroup",
        "TaskExecutionRole",
        "WorkerTaskRole",
    ):
        assert statuses.get(logical) == "CREATE_COMPLETE", logical


def test_moto_stack_has_the_promised_shape(stack):
    kw, project, outputs = stack["kw"], stack["project"], stack["outputs"]
    s3 = boto3.client("s3", **kw)
    bucket = outputs["ArtifactBucketName"]
    # moto's CloudFormation applies a bucket's encryption (versioning and the public access
    # block are checked on the template above; moto ignores those properties).
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    ecs = boto3.client("ecs", **kw)
    services = ecs.describe_services(
        cluster=outputs["ClusterName"],
        services=[outputs["ApiServiceName"], outputs["WorkerServiceName"]],
    )["services"]
    assert {s["serviceName"] for s in services} == {f"{project}-api", f"{project}-worker"}
    api_td = ecs.describe_task_definition(taskDefinition=f"{project}-api")["taskDefinition"]
    (container,) = api_td["containerDefinitions"]
    assert container["portMappings"][0]["containerPort"] == 8000
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["BOOKREC_ENVIRONMENT"] == "production"
    assert env["BOOKREC_ARTIFACTS_URI"] == f"s3://{bucket}"
    assert env["BOOKREC_DATABASE_URL"].startswith("postgresql+psycopg2://bookrec@")
    assert ":" not in env["BOOKREC_DATABASE_URL"].split("@")[0].split("//")[1]  # no password
    assert {s["name"] for s in container["secrets"]} == {"PGPASSWORD", "BOOKREC_ADMIN_TOKEN"}
    assert "/livez" in " ".join(container["healthCheck"]["command"])
    elb = boto3.client("elbv2", **kw)
    groups = elb.describe_target_groups()["TargetGroups"]
    assert any(g["HealthCheckPath"] == "/readyz" and g["Port"] == 8000 for g in groups)
    logs = boto3.client("logs", **kw)
    names = {
        g["logGroupName"]
        for g in logs.describe_log_groups(logGroupNamePrefix=f"/{project}/")["logGroups"]
    }
    assert names == {f"/{project}/api", f"/{project}/worker", f"/{project}/flow-runs"}
