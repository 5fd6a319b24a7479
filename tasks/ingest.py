"""Prefect tasks for ingest: run the ingest (migrating the database), publish its report.

``ingest-files`` runs ``bookrec.ingest.run_ingest``, the same composition the tests and
``bench/bench_ingest.py`` run: it cleans the three files in parallel processes and stages
each as soon as it is clean, then commits all three in one transaction, so a failure
anywhere leaves the tables as they were. A transient failure (a dropped connection, an S3
hiccup) retries the whole ingest (``tasks.retries``); a bad file fails at once.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bookrec import db, ingest, reports
from bookrec.settings import get_settings
from tasks.retries import IO_RETRIES


@task(name="ingest-files", **IO_RETRIES)
def ingest_files(source: str, layout: str) -> dict:
    """Apply the database migrations, then locate, clean, stage and commit the three files
    of ``source``; the ingest report.

    The migrations run while the files are cleaned (they need no database); staging waits
    for them. Spool files go to a temporary folder under ``<home>/spool``, removed
    afterwards; each file's counts and timings are logged as it is staged."""
    settings = get_settings()
    engine = db.get_engine(settings)
    spool_dir = settings.home_dir / "spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    return ingest.run_ingest(engine, settings, source, layout, spool_dir=spool_dir,
                             log=get_run_logger().info, prepare=lambda: db.upgrade(engine))


@task(name="publish-ingest-report")
def publish_ingest_report(report: dict) -> None:
    """The report as a table and a markdown artifact in the Prefect UI."""
    create_table_artifact(
        key="ingest-report",
        table=reports.ingest_table(report),
        description=f"Ingest of {report.get('source')}: rows per outcome and file",
    )
    create_markdown_artifact(
        key="ingest-summary",
        markdown=reports.ingest_markdown(report),
        description="Ingest summary",
    )
