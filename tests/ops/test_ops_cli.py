"""`bookrec up`/`down` machinery without the whole system: pid files, process groups,
stale and foreign pids, the shared environment, and clear errors."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bookrec.settings import Settings
from cli import ops, processes
from tests.conftest import REPO
from tests.utils.ports import free_port


def _service(tmp_path: Path, marker: str = "sleep") -> processes.Service:
    return processes.Service("thing", tmp_path / "run", tmp_path / "logs", marker)


def _gone(pid: int) -> bool:
    return not processes.alive(pid, "")


def test_started_service_is_recorded_found_and_stopped_with_its_children(tmp_path):
    service = _service(tmp_path)
    # A shell that starts a grandchild: stopping the service must end both.
    proc = service.start(
        ["bash", "-c", "sleep 300 & echo started; sleep 301"], dict(os.environ), tmp_path
    )
    try:
        time.sleep(0.5)
        assert service.pid() == proc.pid
        children = subprocess.run(
            ["pgrep", "-g", str(proc.pid), "sleep"], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2
        assert service.stop(timeout=5) is True
        proc.wait(timeout=5)
        time.sleep(0.2)
        assert all(_gone(int(pid)) for pid in children)
        assert not service.pid_file.exists()
        assert "started" in service.log_file.read_text()
        assert service.stop() is False  # nothing left to stop
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def test_stale_pid_file_is_dropped(tmp_path):
    service = _service(tmp_path)
    proc = subprocess.Popen(["true"])
    proc.wait()
    service.run_dir.mkdir(parents=True)
    service.pid_file.write_text(f'{{"pid": {proc.pid}}}')
    assert service.pid() is None
    assert not service.pid_file.exists()


def test_a_recycled_pid_of_another_program_is_not_ours(tmp_path):
    service = _service(tmp_path, marker="prefect")
    other = subprocess.Popen(["sleep", "30"])
    try:
        service.run_dir.mkdir(parents=True)
        service.pid_file.write_text(f'{{"pid": {other.pid}}}')
        assert service.pid() is None
        assert service.stop() is False
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()


def test_garbage_pid_file_is_ignored(tmp_path):
    service = _service(tmp_path)
    service.run_dir.mkdir(parents=True)
    service.pid_file.write_text("not json")
    assert service.pid() is None


def test_environment_is_absolute_private_and_telemetry_free(tmp_path, monkeypatch):
    monkeypatch.delenv("BOOKREC_SERVING_URLS", raising=False)
    settings = Settings(home=tmp_path / "home")
    settings.home_dir.mkdir()
    args = argparse.Namespace(api_port=18123)
    env = ops._environment(settings, args, "http://127.0.0.1:14200/api")
    assert env["BOOKREC_HOME"] == str(settings.home_dir)
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:14200/api"
    assert env["PREFECT_HOME"].startswith(str(settings.home_dir)) or "PREFECT_HOME" in os.environ
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["BOOKREC_SERVING_URLS"] == "http://127.0.0.1:18123"
    token_file = settings.home_dir / "admin-token"
    assert env["BOOKREC_ADMIN_TOKEN"] == token_file.read_text().strip()
    assert len(env["BOOKREC_ADMIN_TOKEN"]) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # Stable across runs: the API and the worker of a later `up` share the same token.
    assert (
        ops._environment(settings, args, "x")["BOOKREC_ADMIN_TOKEN"] == env["BOOKREC_ADMIN_TOKEN"]
    )


def test_configured_admin_token_is_not_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOKREC_ADMIN_TOKEN", "configured-token-0123456789")
    settings = Settings(home=tmp_path)
    env = ops._environment(settings, argparse.Namespace(api_port=8000), "x")
    assert env["BOOKREC_ADMIN_TOKEN"] == "configured-token-0123456789"
    assert not (tmp_path / "admin-token").exists()


def test_local_deployment_names_come_from_prefect_yaml():
    assert sorted(ops._local_deployments()) == [
        "approval/local",
        "housekeeping/local",
        "ingest/local",
        "nightly/local",
        "promote/local",
        "reload/local",
        "rollback/local",
        "rollout/local",
        "train/local",
    ]


def _bookrec(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env["BOOKREC_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_refuses_a_missing_source_before_starting_anything(tmp_path):
    missing = tmp_path / "no-such-data"
    proc = _bookrec(["up", "--source", str(missing)], tmp_path / "home")
    assert proc.returncode == 1
    assert f"--source {missing}: not a folder" in proc.stderr
    assert not list((tmp_path / "home" / "run").glob("*.pid"))


def test_down_with_nothing_running(tmp_path):
    proc = _bookrec(["down"], tmp_path / "home")
    assert proc.returncode == 0
    assert "nothing was running" in proc.stdout


@pytest.mark.parametrize("script", ["up.sh", "down.sh"])
def test_scripts_are_valid_bash(script):
    path = REPO / "scripts" / script
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_admin_token_file_is_private_from_its_first_byte(tmp_path, monkeypatch):
    monkeypatch.delenv("BOOKREC_ADMIN_TOKEN", raising=False)
    settings = Settings(home=tmp_path / "home")
    settings.home_dir.mkdir()
    old_umask = os.umask(0o022)  # a permissive umask: 0644 unless the mode is given at creation
    try:
        # A chmod after writing would leave the file world-readable until it runs (and for
        # good if the process died in between): fail every chmod to show none is needed.
        def no_chmod(*args, **kwargs):
            raise AssertionError("the token file was chmod-ed after creation")

        monkeypatch.setattr(Path, "chmod", no_chmod)
        monkeypatch.setattr(os, "chmod", no_chmod)
        env = ops._environment(settings, argparse.Namespace(api_port=8000), "x")
    finally:
        os.umask(old_umask)
    token_file = settings.home_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert env["BOOKREC_ADMIN_TOKEN"] == token_file.read_text().strip()


def test_run_params_and_deployment_names():
    from cli.main import CommandError
    from cli.run import deployment_name, parse_params

    assert deployment_name("nightly") == "nightly/local"
    assert deployment_name("nightly/production") == "nightly/production"
    assert parse_params(["source=/data/x", "baselines=[\"als\"]", "n=3", "flag=null"]) == {
        "source": "/data/x", "baselines": ["als"], "n": 3, "flag": None}
    with pytest.raises(CommandError, match="expected NAME=VALUE") as err:
        parse_params(["oops"])
    assert err.value.exit_code == 2


def test_train_baselines_default_to_the_nightly_ones():
    from cli.main import CommandError, build_parser
    from cli.train import _baselines, _train_kwargs

    args = build_parser().parse_args(["train"])
    assert _train_kwargs(args)["baselines"] == ["most_popular"]
    assert _baselines("all") == ["most_popular", "itemknn", "als", "ease_plain"]
    assert _baselines("") == [] and _baselines("als, itemknn") == ["als", "itemknn"]
    with pytest.raises(CommandError, match="unknown nope"):
        _baselines("nope")


def test_prefect_verbs_take_verbose_and_others_do_not():
    from cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["rollback", "v1", "--verbose"]).verbose is True
    assert parser.parse_args(["ingest", "x"]).preload == ("flows.ingest", "alembic.command")
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "--verbose"])


def test_a_configured_prefect_server_that_does_not_answer_is_one_clear_error(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env.update({"BOOKREC_HOME": str(tmp_path / "home"),
                "BOOKREC_PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
    proc = subprocess.run([sys.executable, "-m", "cli.main", "promote", "--json"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == (f"bookrec promote: error: no Prefect server answers at "
                           f"http://127.0.0.1:{port}/api (from BOOKREC_PREFECT_API_URL); start "
                           "it, or unset the setting to use the local server\n")
    assert json.loads(proc.stdout)["exit_code"] == 1
