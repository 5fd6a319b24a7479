"""The ``bookrec`` command against a real, long-lived Prefect server found the way ``up``
leaves it (a pid file naming its URL): flow runs land on that server with their artifacts,
expected errors are one line (and a JSON object with --json), Prefect's log lines go to
the log folder, and ``bookrec run`` starts deployments there. The first-use start of a
server (no server running) is the slow test at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bookrec import audit
from bookrec.registry import Registry
from bookrec.settings import Settings
from tests.conftest import REPO, SAMPLE_DIR
from tests.utils.ports import free_port
from tests.utils.versions import make_version_folder


def _env(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    """A fresh user's environment: no BOOKREC_*/PREFECT_* except what the test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env.update({"BOOKREC_HOME": str(home), "BOOKREC_DATABASE_URL": database_url,
                "BOOKREC_ARTIFACTS_URI": str(home / "artifacts"),
                "BOOKREC_SERVING_URLS": "", "BOOKREC_WARM": "0", **extra})
    return env


def _bookrec(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    print(args, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return proc


@pytest.fixture
def up_home(tmp_path: Path, up_prefect_server: dict) -> Path:
    """A home whose run folder names the session's Prefect server, as `bookrec up` leaves it."""
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    shutil.copy(up_prefect_server["pid_file"], home / "run" / "prefect-server.pid")
    return home


def _flow_runs(api_url: str, flow_name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(
        sync_client=True
    ) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


def _artifact_keys(api_url: str, flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(
        sync_client=True
    ) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in found}


def test_the_local_server_serves_the_ui_and_api_with_its_services(up_prefect_server):
    """``cli/prefect_serve.py`` runs what ``prefect server start`` runs: the UI at the root,
    the API with Prefect's version, and the background services (the scheduler among them)."""
    import urllib.request

    from cli import processes

    base = up_prefect_server["url"].removesuffix("/api")
    with urllib.request.urlopen(base + "/", timeout=10) as page:  # noqa: S310 - loopback
        assert page.headers["content-type"].startswith("text/html")
        assert b"<!DOCTYPE html>" in page.read(200)
    import prefect

    assert processes.get_json(base + "/api/admin/version", timeout=10) == prefect.__version__
    record = json.loads(up_prefect_server["pid_file"].read_text())
    assert "cli.prefect_serve" in " ".join(record["argv"])
    settings = processes.get_json(base + "/api/admin/settings", timeout=10)
    assert settings["server"]["services"]["scheduler"]["enabled"] is True
    assert settings["server"]["analytics_enabled"] is False


def test_flow_command_runs_on_the_up_server_quietly(up_home, up_prefect_server, database_url,
                                                   clean_db):
    env = _env(up_home, database_url)
    before = {r.id for r in _flow_runs(up_prefect_server["url"], "ingest")}
    proc = _bookrec(["ingest", str(SAMPLE_DIR / "original"), "--json"], env)
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["files"]["ratings"]["rows_read"] > 0
    assert proc.stderr == ""  # no server started, no Prefect log lines in the terminal
    log = (up_home / "logs" / "prefect.log").read_text()
    assert "Finished in state Completed" in log
    runs = [r for r in _flow_runs(up_prefect_server["url"], "ingest") if r.id not in before]
    assert len(runs) == 1 and runs[0].state.is_completed()
    assert {"ingest-report", "ingest-summary"} <= _artifact_keys(up_prefect_server["url"],
                                                                 runs[0].id)


def test_expected_errors_are_one_line_and_a_json_object(up_home, database_url, clean_db):
    env = _env(up_home, database_url)
    registry = Registry.from_settings(Settings(home=up_home, artifacts_uri=str(up_home / "artifacts")))
    registry.add_version(make_version_folder(up_home / "src", "v1"), "v1")
    registry.promote("v1", by="test", reason="first")

    proc = _bookrec(["rollback", "nonsense", "--json"], env)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("bookrec rollback: error: ")
    assert "version nonsense does not exist" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"].endswith("version nonsense does not exist in " + str(up_home / "artifacts"))
    assert (out["decision"], out["champion"], out["exit_code"]) == ("refused", "v1", 1)

    proc = _bookrec(["promote"], env)  # nothing to promote: a refusal, one line, no JSON
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no candidate" in proc.stderr
    refusals = audit.recent_decisions(clean_db, limit=2)  # both refusals are recorded
    assert [(r.candidate, r.decision) for r in refusals] == [(None, "refused"),
                                                             ("nonsense", "refused")]
    assert refusals[0].reason.startswith("no candidate")

    missing = up_home / "no-such-folder"
    proc = _bookrec(["ingest", str(missing), "--json"], env)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert str(missing) in json.loads(proc.stdout)["error"]

    proc = _bookrec(["rollback", "nonsense", "--verbose"], env)  # --verbose: Prefect's lines too
    assert proc.returncode == 1 and proc.stderr.count("\n") > 1
    # (the error line, then possibly Prefect's events worker draining at exit on a busy machine)
    assert any(line.startswith("bookrec rollback: error: ") for line in proc.stderr.splitlines())


def test_bookrec_run_finds_the_server_and_names_missing_deployments(up_home, database_url):
    env = _env(up_home, database_url)
    proc = _bookrec(["run", "nightly", "--param", "source=/x", "--json"], env)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["error"].startswith("no deployment nightly/local on http://127.0.0.1:")
    proc = _bookrec(["run", "nightly", "--param", "oops"], env)
    assert proc.returncode == 2 and "expected NAME=VALUE" in proc.stderr


@pytest.mark.slow
def test_first_flow_command_starts_the_server_and_leaves_it_running(tmp_path, database_url,
                                                                   clean_db):
    home = tmp_path / "home"
    port = free_port()
    env = _env(home, database_url, BOOKREC_PREFECT_PORT=str(port))
    try:
        first = _bookrec(["promote", "--json"], env)  # a refusal is enough: a flow ran
        assert first.returncode == 1
        assert f"started the Prefect server at http://127.0.0.1:{port}" in first.stderr
        assert "`bookrec down` stops it" in first.stderr
        record = json.loads((home / "run" / "prefect-server.pid").read_text())
        assert record["url"] == f"http://127.0.0.1:{port}/api"
        second = _bookrec(["promote", "--json"], env)
        assert second.returncode == 1 and "started the Prefect server" not in second.stderr
        assert json.loads((home / "run" / "prefect-server.pid").read_text())["pid"] == record["pid"]
        runs = _flow_runs(record["url"], "promote")
        assert len(runs) == 2 and all(r.state.is_failed() for r in runs)
    finally:
        down = _bookrec(["down", "--keep-db"], env)
    assert "stopped prefect-server" in down.stdout
    assert not (home / "run" / "prefect-server.pid").exists()
