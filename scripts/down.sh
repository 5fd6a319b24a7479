#!/usr/bin/env bash
# Stop everything scripts/up.sh started: the API, the Prefect worker and server (also a
# server a flow command started on first use), and the embedded PostgreSQL (its data stays
# in .bookrec/pgdata). Arguments go to `bookrec down`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/bookrec ]; then
    echo "down.sh: no .venv here, so scripts/up.sh never ran; nothing to stop"
    exit 0
fi
exec .venv/bin/bookrec down "$@"
