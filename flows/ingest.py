"""The ingest flow: Book-Crossing CSVs (a folder or an S3 prefix) into PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from prefect import flow

from tasks.ingest import (
    clean_file,
    fetch_file,
    load_into_postgres,
    locate_source,
    make_spool_dir,
    publish_ingest_report,
    remove_spool_dir,
)

KINDS = ("books", "ratings", "users")


@flow(name="ingest", flow_run_name="ingest-{layout}", log_prints=True)
def ingest_flow(
    source: str = "data/sample/original",
    layout: Literal["auto", "original", "kaggle"] = "auto",
) -> dict:
    """Locate, clean and load the three files; every row ends inserted, updated, unchanged,
    merged or quarantined, and a bad file leaves the database untouched."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    located = locate_source(source, layout)
    spool_dir = make_spool_dir()
    try:
        futures = []
        for kind in KINDS:
            uri = located["files"][kind]
            path = fetch_file(kind, uri, spool_dir)
            futures.append(clean_file.submit(kind, path, located["layout"], uri, spool_dir))
        spools = [future.result() for future in futures]
        report = load_into_postgres(spools, source, located["layout"], started)
    finally:
        remove_spool_dir(spool_dir)
    report["duration_s"] = round(time.perf_counter() - t0, 3)
    publish_ingest_report(report)
    counts = {kind: c["rows_read"] for kind, c in report["files"].items()}
    print(f"ingested {source} ({located['layout']}): rows read {counts}")
    return report
