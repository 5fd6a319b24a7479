"""``bookrec serve`` starts gunicorn with the project's configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from cli.main import main
from tests.conftest import REPO
from tests.utils.ports import free_port
from tests.utils.serving import settings_env


def test_bookrec_serve_runs_gunicorn_with_the_project_config(serving_settings, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.update(settings_env(serving_settings))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if response.status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.headers["X-Model-Version"]
    finally:
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=30)[1].decode()
    # the project's gunicorn config: its worker class
    assert "Using worker: gthread" in stderr
    assert stderr.count("Booting worker") == 2


def test_bad_port_is_a_clear_error(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port: 70000 is not a TCP port" in capsys.readouterr().err
