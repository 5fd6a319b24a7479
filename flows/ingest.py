"""The ingest flow: Book-Crossing CSVs (a folder or an S3 prefix) into PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from bookrec.sources import KINDS
from tasks.ingest import (
    clean_file,
    commit_ingest,
    drop_stage_schema,
    fetch_file,
    locate_source,
    make_spool_dir,
    prepare_database,
    publish_ingest_report,
    remove_spool_dir,
    stage_file,
)


@flow(
    name="ingest",
    flow_run_name="ingest-{layout}",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * len(KINDS)),
)
def ingest_flow(
    source: str = "data/sample/original",
    layout: Literal["auto", "original", "kaggle"] = "auto",
) -> dict:
    """Locate, clean and load the three files; every row ends inserted, updated, unchanged,
    merged or quarantined, and a bad file leaves the database untouched.

    Each file is staged in PostgreSQL as soon as it is clean (while the others are still
    being cleaned); one final transaction then applies all three.
    """
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    located = locate_source(source, layout)
    spool_dir = make_spool_dir()
    schema = prepare_database()
    try:
        cleaned, staged = {}, {}
        for kind in KINDS:
            uri = located["files"][kind]
            path = fetch_file(kind, uri, spool_dir)
            cleaned[kind] = clean_file.submit(kind, path, located["layout"], uri, spool_dir)
            staged[kind] = stage_file.submit(kind, cleaned[kind], schema)
        wait([*cleaned.values(), *staged.values()])
        spools = [cleaned[kind].result() for kind in KINDS]  # a bad file raises here
        report = commit_ingest(
            [staged[kind].result() for kind in KINDS], spools, source, located["layout"], started
        )
    finally:
        remove_spool_dir(spool_dir)
        drop_stage_schema(schema)
    report["duration_s"] = round(time.perf_counter() - t0, 3)
    publish_ingest_report(report)
    counts = {kind: c["rows_read"] for kind, c in report["files"].items()}
    print(f"ingested {source} ({located['layout']}): rows read {counts}")
    return report
