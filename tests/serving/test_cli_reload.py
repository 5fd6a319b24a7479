"""``bookrec rollback`` on a machine `bookrec up` prepared: the command finds the admin token
up made (<home>/admin-token), the API up started (<home>/run/api.pid) and the Prefect
server (<home>/run/prefect-server.pid), so the reload flow's call is authorised; its JSON
reports what each instance answered, and a refused reload is an error, not a success."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import requests

from bookrec.registry import Registry
from tests.conftest import REPO
from tests.utils.serving import ADMIN_TOKEN


def _bookrec(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    print(args, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return proc


def test_rollback_reloads_the_up_api_with_the_up_token(
    up_prefect_server, serving_settings, start_gunicorn, model_set
):
    old, new = model_set.versions
    Registry.from_settings(serving_settings).promote(new, by="tests", reason="second")
    server = start_gunicorn(serving_settings, workers=1)
    home = serving_settings.home_dir
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(up_prefect_server["pid_file"], run / "prefect-server.pid")
    (run / "api.pid").write_text(json.dumps({"pid": server.proc.pid, "url": server.url}))
    (home / "admin-token").write_text(ADMIN_TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env.update({"BOOKREC_HOME": str(home), "BOOKREC_DATABASE_URL": serving_settings.database_url,
                "BOOKREC_ARTIFACTS_URI": serving_settings.resolved_artifacts_uri,
                "BOOKREC_WARM": "0"})

    proc = _bookrec(["rollback", "--json"], env)
    assert proc.returncode == 0 and proc.stderr == ""
    out = json.loads(proc.stdout)
    assert (out["target"], out["decision"], out["champion"]) == (old, "rolled back", old)
    assert out["reload"]["status"] == "ok"
    assert out["reload"]["instances"][server.url] in ("reloaded", "unchanged")
    served = requests.get(f"{server.url}/livez", timeout=5).headers["X-Model-Version"]
    assert served == old

    (home / "admin-token").write_text("a-token-the-api-does-not-know-0123")
    proc = _bookrec(["rollback", new, "--json"], env)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert (out["decision"], out["champion"]) == ("rolled back", new)  # the pointer moved
    assert out["reload"]["status"] == "failed" and "HTTP 401" in out["reload"]["error"]
    assert out["error"].startswith(f"champion is {new}, but serving did not reload: ")
    assert proc.stderr.count("\n") == 1 and "HTTP 401" in proc.stderr
