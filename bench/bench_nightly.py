"""Time the nightly flow, stage by stage, through a running `bookrec up` system.

    bash scripts/up.sh                       # or: bookrec up (any home and ports)
    .venv/bin/python -m bench.bench_nightly --source ../shared/data/book-crossing/original

It starts the ``nightly/local`` deployment on ``--source`` through the worker (the same
path as the 02:00 schedule), waits, and prints each stage's wall time from Prefect's own
flow-run records, the run's total, and the 300 s goal. The baseline, measured in the same
run: ``ingest`` of the same source run a second time right after (every row unchanged),
which is the floor of reading and cleaning the files.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

GOAL_S = 300.0


def _run_deployment(client, name: str, parameters: dict, timeout: float):
    """Create a run of deployment ``name`` and wait for its final state."""
    deployment = client.read_deployment_by_name(name)
    run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run.id)
        if run.state and run.state.is_final():
            return run
        time.sleep(2)
    raise TimeoutError(f"{name} did not finish within {timeout:.0f} s")


def _seconds(run) -> float:
    """Wall time of a flow run from its start to its end."""
    return (run.end_time - run.start_time).total_seconds()


def main() -> int:
    """Run the nightly deployment, then the ingest baseline, and print the figures."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument(
        "--prefect-url",
        default=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"),
    )
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    source = str(args.source.expanduser().resolve())

    with (
        temporary_settings(updates={PREFECT_API_URL: args.prefect_url}),
        get_client(sync_client=True) as client,
    ):
        nightly = _run_deployment(client, "nightly/local", {"source": source}, args.timeout)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[nightly.id])
            )
        )
        print(f"nightly {nightly.name}: {nightly.state.name}, {_seconds(nightly):.1f} s")
        for child in sorted(children, key=lambda r: r.start_time):
            flow = client.read_flow(child.flow_id).name
            print(f"  {flow:<8} {child.state.name:<10} {_seconds(child):8.1f} s  ({child.name})")
        scheduled = (nightly.start_time - nightly.created).total_seconds()
        print(f"  (queued {scheduled:.1f} s before starting: worker poll + process start)")
        baseline = _run_deployment(client, "ingest/local", {"source": source}, args.timeout)
        print(f"baseline: ingest again (all rows unchanged): {_seconds(baseline):.1f} s")
    verdict = "meets" if _seconds(nightly) <= GOAL_S else "misses"
    print(f"goal: nightly <= {GOAL_S:.0f} s on this machine: {verdict}")
    return 0 if nightly.state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
