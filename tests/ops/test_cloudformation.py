"""The production CloudFormation template: cfn-lint, static least-privilege and alarm checks,
and a stack created in moto's CloudFormation (over HTTP) as far as moto supports the types."""

from __future__ import annotations

import json
import os
import re
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

REPO = TEMPLATE.parents[2]

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
    "RedisUrlSecretArn",
    "ServingUrls",
    "DbSetupTaskFamily",
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


def _container(template: dict, task_definition: str) -> dict:
    (container,) = template["Resources"][task_definition]["Properties"]["ContainerDefinitions"]
    return container


def _secrets(container: dict) -> dict[str, Any]:
    return {s["Name"]: s["ValueFrom"] for s in container.get("Secrets", [])}


def _env(container: dict) -> dict[str, Any]:
    return {e["Name"]: e["Value"] for e in container.get("Environment", [])}


def test_database_storage_autoscales_and_low_free_space_alarms(template):
    db = template["Resources"]["Database"]["Properties"]
    assert db["MaxAllocatedStorage"] == {"Ref": "DbMaxAllocatedStorage"}
    params = template["Parameters"]
    assert params["DbMaxAllocatedStorage"]["Default"] >= 2 * params["DbAllocatedStorage"]["Default"]
    alarm = template["Resources"]["DbFreeStorageAlarm"]["Properties"]
    (stat,) = [m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m]
    assert (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"]) == (
        "AWS/RDS",
        "FreeStorageSpace",
    )
    assert stat["Metric"]["Dimensions"] == [
        {"Name": "DBInstanceIdentifier", "Value": {"Ref": "Database"}}
    ]
    (shown,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    # FreeStorageSpace is in bytes; the threshold parameter is in GiB.
    assert shown["Expression"] == "free / 1073741824"
    assert alarm["Threshold"] == {"Ref": "DbFreeStorageAlarmGiB"}
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["TreatMissingData"] == "breaching"  # a silent database is not a healthy one
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def _evaluate(node: Any, values: dict[str, Any]) -> Any:
    """The few intrinsic functions the template's Rules use, on parameter values."""
    if isinstance(node, dict) and len(node) == 1:
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return values[arg]
        if fn == "Fn::Equals":
            return _evaluate(arg[0], values) == _evaluate(arg[1], values)
        if fn == "Fn::Not":
            return not _evaluate(arg[0], values)
        raise AssertionError(f"unexpected intrinsic {fn} in Rules")
    return node


def _refusals(template: dict, **given: str) -> list[str]:
    values = {k: v.get("Default") for k, v in template["Parameters"].items()} | given
    refused = []
    for rule in template["Rules"].values():
        if _evaluate(rule.get("RuleCondition", True), values):
            refused += [
                a["AssertDescription"]
                for a in rule["Assertions"]
                if not _evaluate(a["Assert"], values)
            ]
    return refused


def test_production_refuses_to_deploy_without_a_certificate(template):
    assert template["Parameters"]["DeployEnvironment"]["Default"] == "production"
    (refusal,) = _refusals(template)  # the defaults: production, no certificate
    assert "CertificateArn" in refusal
    cert = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    assert _refusals(template, CertificateArn=cert) == []
    assert _refusals(template, DeployEnvironment="staging") == []


def test_port_80_redirects_to_https_when_there_is_a_certificate(template):
    resources = template["Resources"]
    http = resources["HttpListener"]["Properties"]
    with_cert, without = http["DefaultActions"]["Fn::If"][1:]
    assert http["DefaultActions"]["Fn::If"][0] == "HasCertificate"
    assert with_cert == [
        {
            "Type": "redirect",
            "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"},
        }
    ]
    assert without[0]["Type"] == "fixed-response"  # staging without TLS: rules forward
    https = resources["HttpsListener"]
    assert https["Condition"] == "HasCertificate"
    assert https["Properties"]["Protocol"] == "HTTPS"
    assert https["Properties"]["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert "TLS13" in https["Properties"]["SslPolicy"]


def _alb_matches(pattern: str, path: str) -> bool:
    """ALB path-pattern semantics: case-sensitive, ``*`` any characters, ``?`` one."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, path) is not None


def _internet_answer(template: dict, path: str) -> str:
    """What the public listener does with ``path``: "forward" or the fixed status code."""
    resources = template["Resources"]
    rules = sorted(
        (
            r["Properties"]
            for r in _resources(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
        ),
        key=lambda p: p["Priority"],
    )
    for rule in rules:
        assert rule["ListenerArn"] == {
            "Fn::If": ["HasCertificate", {"Ref": "HttpsListener"}, {"Ref": "HttpListener"}]
        }
        (condition,) = rule["Conditions"]
        assert condition["Field"] == "path-pattern"
        values = condition["PathPatternConfig"]["Values"]
        assert len(values) <= 5  # the ALB's limit of condition values per rule
        if any(_alb_matches(v, path) for v in values):
            (action,) = rule["Actions"]
            return (
                "forward"
                if action["Type"] == "forward"
                else action["FixedResponseConfig"]["StatusCode"]
            )
    (default,) = resources["HttpsListener"]["Properties"]["DefaultActions"]
    (default_no_tls,) = resources["HttpListener"]["Properties"]["DefaultActions"]["Fn::If"][2]
    assert default == default_no_tls
    return default["FixedResponseConfig"]["StatusCode"]


def test_admin_and_metrics_are_404_from_the_internet_and_every_public_route_is_forwarded(
    template, tmp_path
):
    from serving.app import create_app

    for path in (
        "/admin/reload",
        "/admin/model",
        "/admin",
        "/metrics",
        "/metrics/x",
        "/%61dmin/reload",
        "/%6detrics",
        "/ADMIN/reload/../x",
    ):
        assert _internet_answer(template, path) == "404", path
    app = create_app(Settings(home=tmp_path, database_url="postgresql+psycopg2://x@127.0.0.1:1/x"))
    routes = [re.sub(r"<[^>]+>", "x", rule.rule) for rule in app.url_map.iter_rules()]
    assert "/admin/reload" in routes and "/metrics" in routes
    for path in routes:
        internal = path.startswith(("/admin", "/metrics"))
        assert _internet_answer(template, path) == ("404" if internal else "forward"), path


def test_reload_flow_reaches_every_api_task_inside_the_vpc(template):
    resources = template["Resources"]
    (registry,) = resources["ApiService"]["Properties"]["ServiceRegistries"]
    assert registry == {"RegistryArn": {"Fn::GetAtt": ["ApiDiscoveryService", "Arn"]}}
    dns = resources["ApiDiscoveryService"]["Properties"]["DnsConfig"]
    assert dns["RoutingPolicy"] == "MULTIVALUE" and dns["DnsRecords"][0]["Type"] == "A"
    assert resources["ServiceNamespace"]["Type"] == "AWS::ServiceDiscovery::PrivateDnsNamespace"
    assert resources["ServiceNamespace"]["Properties"]["Name"] == {
        "Fn::Sub": "${ProjectName}.internal"
    }
    serving = template["Outputs"]["ServingUrls"]["Value"]
    assert serving == {"Fn::Sub": "dns+http://api.${ProjectName}.internal:8000"}
    deploy = (REPO / ".github/workflows/deploy.yml").read_text()
    assert '"BOOKREC_SERVING_URLS": outputs["ServingUrls"]' in deploy
    # Flow-run tasks (the worker's security group) may reach the API tasks' port.
    ingress = resources["ApiSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    sources = {(r["SourceSecurityGroupId"]["Ref"], r["FromPort"]) for r in ingress}
    assert sources == {("AlbSecurityGroup", 8000), ("WorkerSecurityGroup", 8000)}


def test_redis_needs_tls_and_an_auth_token_from_secrets_manager(template):
    resources = template["Resources"]
    cache = resources["Cache"]["Properties"]
    assert cache["TransitEncryptionEnabled"] is True
    assert cache["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${CacheAuthSecret}}}"}
    assert "GenerateSecretString" in resources["CacheAuthSecret"]["Properties"]
    url = resources["CacheUrlSecret"]["Properties"]["SecretString"]["Fn::Sub"][0]
    assert url.startswith("rediss://:{{resolve:secretsmanager:${CacheAuthSecret}}}@")
    api = _container(template, "ApiTaskDefinition")
    assert _secrets(api)["BOOKREC_REDIS_URL"] == {"Ref": "CacheUrlSecret"}
    assert "BOOKREC_REDIS_URL" not in _env(api)
    assert "RedisUrl" not in template["Outputs"]  # only the secret's ARN is an output
    read = next(
        s
        for s in _statements(resources["TaskExecutionRole"])
        if s["Action"] == "secretsmanager:GetSecretValue"
    )
    assert {"Ref": "CacheUrlSecret"} in read["Resource"]["Fn::If"][2]


def test_api_connects_as_its_least_privilege_role(template):
    from bookrec.dbroles import API_GRANTS

    resources = template["Resources"]
    api = _container(template, "ApiTaskDefinition")
    role = Settings().api_db_role
    assert _env(api)["BOOKREC_DATABASE_URL"]["Fn::Sub"][0].startswith(
        f"postgresql+psycopg2://{role}@"
    )
    assert _secrets(api)["PGPASSWORD"] == {"Fn::Sub": "${ApiDbSecret}:password::"}
    generated = resources["ApiDbSecret"]["Properties"]["GenerateSecretString"]
    assert json.loads(generated["SecretStringTemplate"]) == {"username": role}
    # The one-shot task migrates as the master user, then creates the role and its grants.
    setup = _container(template, "DbSetupTaskDefinition")
    assert setup["Command"] == ["sh", "-c", "bookrec db upgrade && bookrec db api-role"]
    assert _env(setup)["BOOKREC_API_DB_ROLE"] == role
    assert _env(setup)["BOOKREC_DATABASE_URL"]["Fn::Sub"][0].startswith(
        "postgresql+psycopg2://bookrec@"
    )
    assert _secrets(setup) == {
        "PGPASSWORD": {"Fn::Sub": "${DbSecret}:password::"},
        "BOOKREC_API_DB_PASSWORD": {"Fn::Sub": "${ApiDbSecret}:password::"},
    }
    assert API_GRANTS["books"] == ("SELECT",) and API_GRANTS["api_logs"] == ("INSERT",)
    # deploy.yml runs it with this commit's image before the API rolls.
    deploy = (REPO / ".github/workflows/deploy.yml").read_text()
    assert deploy.index("aws ecs run-task") < deploy.index("Rolling update of the API service")
    assert 'outputs["DbSetupTaskFamily"]' in deploy


def test_alb_closes_idle_connections_before_gunicorn_does(template, tmp_path):
    attributes = {
        a["Key"]: a["Value"]
        for a in template["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    idle = int(attributes["idle_timeout.timeout_seconds"])
    assert idle == 60
    # The keep-alive gunicorn really runs with: its config file evaluated in a child process
    # (it sets up a metrics folder as it loads).
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy; print(runpy.run_path('serving/gunicorn_conf.py')['keepalive'])",
        ],
        cwd=REPO,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    keepalive = float(proc.stdout.strip())
    assert keepalive > idle  # else the ALB reuses a closed connection: 502


def test_required_outputs_exist(template):
    assert set(template["Outputs"]) >= REQUIRED_OUTPUTS


@pytest.fixture(scope="module", params=["production-https", "staging-http"])
def stack(request, moto_server: str, template: dict) -> dict[str, Any]:
    """The template created as a stack in moto (production with a certificate, and staging
    without one); returns outputs and clients."""
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
        "DbFreeStorageAlarm",
        "ServiceNamespace",
        "ApiDiscoveryService",
        "ApiDbSecret",
        "CacheAuthSecret",
        "CacheUrlSecret",
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
    if request.param == "production-https":
        acm = boto3.client("acm", **kw)
        params["CertificateArn"] = acm.request_certificate(DomainName="books.example.org")[
            "CertificateArn"
        ]
    else:
        params["DeployEnvironment"] = "staging"
    assert _refusals(template, **params) == []  # what CloudFormation's Rules would say
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
        "https": request.param == "production-https",
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
    assert ":" not in env["BOOKREC_DATABASE_URL"].split("@")[0].split("//")[1]  # no password
    assert {s["name"] for s in container["secrets"]} == {
        "PGPASSWORD",
        "BOOKREC_ADMIN_TOKEN",
        "BOOKREC_REDIS_URL",
    }
    assert "BOOKREC_REDIS_URL" not in env
    assert env["BOOKREC_DATABASE_URL"].startswith("postgresql+psycopg2://bookrec_api@")
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
    # The listeners and rules as moto's ELB created them.
    (lb,) = [
        b
        for b in elb.describe_load_balancers()["LoadBalancers"]
        if b["LoadBalancerArn"] in {r.get("PhysicalResourceId") for r in stack["resources"]}
    ]
    listeners = {
        x["Port"]: x
        for x in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    }
    if stack["https"]:
        assert set(listeners) == {80, 443}
        (redirect,) = listeners[80]["DefaultActions"]
        assert redirect["Type"] == "redirect"
        assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
        public = listeners[443]
        assert public["Protocol"] == "HTTPS"
    else:
        assert set(listeners) == {80}
        public = listeners[80]
    (default,) = public["DefaultActions"]
    assert default["Type"] == "fixed-response"
    assert default["FixedResponseConfig"]["StatusCode"] == "404"
    rules = [
        r
        for r in elb.describe_rules(ListenerArn=public["ListenerArn"])["Rules"]
        if not r.get("IsDefault")
    ]
    deny = next(r for r in rules if r["Priority"] == "10")
    assert deny["Actions"][0]["Type"] == "fixed-response"
    assert "/metrics" in json.dumps(deny["Conditions"]) and "/admin/*" in json.dumps(
        deny["Conditions"]
    )
    assert {r["Actions"][0]["Type"] for r in rules if r["Priority"] != "10"} == {"forward"}
