"""The warm flow runner (``cli/warm.py``): the first flow command on a home whose Prefect
server is the local one leaves a runner behind; later commands are forked by it with their
own argv, environment, stdout/stderr and exit status, and their flow runs land on the same
server. A command with other Prefect settings, or after the code changed, runs cold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bookrec.registry import Registry
from bookrec.settings import Settings
from cli import processes, warm
from tests.conftest import REPO
from tests.ops.test_cli_prefect import _flow_runs
from tests.registry.conftest import fitted_models, save_hybrid  # noqa: F401 - fixtures
from tests.utils.versions import model_metrics


def _env(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env.update({"BOOKREC_HOME": str(home), "BOOKREC_DATABASE_URL": database_url,
                "BOOKREC_ARTIFACTS_URI": str(home / "artifacts"), "BOOKREC_SERVING_URLS": "",
                **extra})
    return env


def _bookrec(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    print(args, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
    return proc


def _runner_log(home: Path) -> str:
    log = home / "logs" / "flow-runner.log"
    return log.read_text() if log.exists() else ""


@pytest.fixture
def runner_home(tmp_path: Path, up_prefect_server: dict):
    """A home naming the session's Prefect server as `up` leaves it; the runner it gets is
    stopped afterwards."""
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    shutil.copy(up_prefect_server["pid_file"], home / "run" / "prefect-server.pid")
    yield home
    processes.services(Settings(home=home))[warm.SERVICE].stop()


def _wait_for_runner(home: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not warm.socket_path(home).exists():
        assert time.monotonic() < deadline, _runner_log(home)
        time.sleep(0.1)


def test_flow_commands_are_forked_by_the_runner(runner_home, up_prefect_server, database_url,
                                               clean_db, save_hybrid):  # noqa: F811
    env = _env(runner_home, database_url)
    registry = Registry.from_settings(
        Settings(home=runner_home, artifacts_uri=str(runner_home / "artifacts")))
    for which, name in enumerate(("v1", "v2")):
        registry.add_version(save_hybrid(name, model_metrics(0.1), which), name)
    registry.promote("v1", by="test", reason="first")
    registry.promote("v2", by="test", reason="second")

    cold = _bookrec(["rollback", "nonsense", "--json"], env)  # no runner yet: runs here
    assert cold.returncode == 1 and json.loads(cold.stdout)["decision"] == "refused"
    _wait_for_runner(runner_home)
    assert (warm.socket_path(runner_home).stat().st_mode & 0o777) == 0o600

    before = {r.id for r in _flow_runs(up_prefect_server["url"], "rollback")}
    refused = _bookrec(["rollback", "nonsense", "--json"], env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("bookrec rollback: error: ")
    assert refused.stderr.count("\n") == 1 and "does not exist" in refused.stderr
    assert json.loads(refused.stdout)["exit_code"] == 1

    done = _bookrec(["rollback", "--json"], env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["decision"], out["champion"]) == ("rolled back", "v1")
    assert registry.champion()["version"] == "v1"

    log = _runner_log(runner_home)
    assert "['rollback'] pid" in log and " exit 1 " in log and " exit 0 " in log
    runs = [r for r in _flow_runs(up_prefect_server["url"], "rollback") if r.id not in before]
    assert sorted(r.state.type.value for r in runs) == ["COMPLETED", "FAILED"]


def test_other_settings_or_changed_code_run_cold(runner_home, database_url, clean_db):
    env = _env(runner_home, database_url)
    _bookrec(["rollback", "--json"], env)  # leaves the runner
    _wait_for_runner(runner_home)

    # the same venv under its other name (``python3`` for ``python``): forked all the same
    alias = Path(sys.executable).with_name(
        "python3" if Path(sys.executable).name != "python3" else "python")
    if alias.exists():
        forks = _runner_log(runner_home).count("['rollback'] pid")
        proc = subprocess.run([str(alias), "-m", "cli.main", "rollback", "--json"], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "no champion" in proc.stderr
        assert _runner_log(runner_home).count("['rollback'] pid") == forks + 1
        assert "another Python" not in _runner_log(runner_home)

    other = _bookrec(["rollback", "--json"], {**env, "PREFECT_LOGGING_LEVEL": "DEBUG"})
    assert other.returncode == 1 and "no champion" in other.stderr  # answered all the same
    assert "refused ['rollback']: other PREFECT_* settings" in _runner_log(runner_home)

    service = processes.services(Settings(home=runner_home))[warm.SERVICE]
    pid = service.pid()
    source = REPO / "cli" / "warm.py"
    stat = source.stat()
    # Newer than every project file (a checkout writes files in no set order, so another
    # may be newer than this one: then this file's own mtime + 1 ms changes nothing).
    newest = int(warm.code_stamp().split(":")[1])
    os.utime(source, ns=(stat.st_atime_ns, max(stat.st_mtime_ns, newest) + 1_000_000))
    try:
        changed = _bookrec(["rollback", "--json"], env)
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert changed.returncode == 1 and "no champion" in changed.stderr
    assert "refused ['rollback']: the code changed" in _runner_log(runner_home)
    deadline = time.monotonic() + 30
    while pid is not None and processes.alive(pid, warm.MARKER):
        assert time.monotonic() < deadline, "the runner kept running on old code"
        time.sleep(0.1)


def test_warm_off_and_no_runner_mean_none(tmp_path: Path):
    assert warm.run(["rollback"], tmp_path) is None  # no socket in this home
