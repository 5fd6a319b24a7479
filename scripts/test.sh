#!/usr/bin/env bash
# Run the test suite: create .venv from requirements-dev.txt when it is missing or stale,
# then pytest (the default selection skips the `slow` and `bench` markers; pass `-m slow`
# for the long end-to-end runs). Tests need PostgreSQL and Redis on 127.0.0.1 (5432, 6379)
# and Chromium with chromedriver (the page test);
# .ci/run starts them when they are not running. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi
stamp=.venv/.bookrec-dev-requirements
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x .venv/bin/bookrec ]; then
    echo "==> installing requirements-dev.txt into .venv"
    .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
    .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
    echo "$want" > "$stamp"
fi
# The tests run in two processes (pytest-xdist), each with its own PostgreSQL database,
# Redis database and Prefect server (tests/conftest.py): on two cores the default suite
# takes about 60 % of one process's wall time, since much of a test's time is spent
# waiting on servers and subprocesses. BOOKREC_TEST_WORKERS=0 runs it in this process.
exec .venv/bin/python -m pytest -n "${BOOKREC_TEST_WORKERS:-2}" "$@"
