#!/usr/bin/env bash
# Bring bookrec up on this machine, from a fresh clone or an existing checkout:
# create .venv from requirements.txt when it is missing or stale, install the project,
# then `bookrec up` (embedded PostgreSQL, Prefect server and UI on 127.0.0.1:4200, a worker,
# the deployments, a nightly run on data/sample, the API and page on 127.0.0.1:8000).
# Safe to run again. Arguments go to `bookrec up` (see `bookrec up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "up.sh: needs Python 3.11 or newer as '$python' (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    echo "==> creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi

# The environment is stale when requirements.txt or pyproject.toml changed since it was built.
stamp=.venv/.bookrec-requirements
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x .venv/bin/bookrec ]; then
    echo "==> installing requirements.txt into .venv (first run: a few minutes)"
    .venv/bin/python -m pip install --disable-pip-version-check -r requirements.txt
    echo "==> installing bookrec (editable)"
    .venv/bin/python -m pip install --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi

exec .venv/bin/bookrec up "$@"
