"""The ingest flow: Book-Crossing CSVs (a folder or an S3 prefix) into PostgreSQL."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow

from tasks.ingest import ingest_files, publish_ingest_report


@flow(name="ingest", flow_run_name="ingest-{layout}", log_prints=True)
def ingest_flow(
    source: str = "data/sample/original",
    layout: Literal["auto", "original", "kaggle"] = "auto",
) -> dict:
    """Locate, clean and load the three files; every row ends inserted, updated, unchanged,
    merged or quarantined, and a bad file leaves the database untouched.

    Each file is staged in PostgreSQL as soon as it is clean (while the others are still
    being cleaned); one final transaction then applies all three.
    """
    t0 = time.perf_counter()
    report = ingest_files(source, layout)
    report["duration_s"] = round(time.perf_counter() - t0, 3)
    publish_ingest_report(report)
    counts = {kind: c["rows_read"] for kind, c in report["files"].items()}
    print(f"ingested {source} ({report['layout']}): rows read {counts}")
    return report
