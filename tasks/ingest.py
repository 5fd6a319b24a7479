"""Prefect tasks for ingest: thin wrappers over ``bookrec.ingest``, ``bookrec.pgload`` and
``bookrec.sources``.

The tasks that do I/O (listing and reading S3, staging and committing in PostgreSQL)
retry transient failures (``tasks.retries``); a bad file, parsing and cleaning fail fast.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bookrec import db, ingest, pgload, sources
from bookrec.settings import get_settings
from tasks.retries import IO_RETRIES


@task(name="locate-source", **IO_RETRIES)
def locate_source(source: str, layout: str) -> dict:
    """Find the three files under a folder or S3 prefix; returns the layout and their URIs."""
    resolved, files = sources.locate(source, layout, get_settings())
    return {"layout": resolved, "files": {kind: f.uri for kind, f in files.items()}}


@task(name="make-spool-dir")
def make_spool_dir() -> str:
    """A fresh working folder under the project home for this run's spool files."""
    base = get_settings().home_dir / "spool"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="ingest-", dir=base)


@task(name="fetch-file", **IO_RETRIES)
def fetch_file(kind: str, uri: str, spool_dir: str) -> str:
    """A local path for the file: itself when local, else a download from S3."""
    path = sources.fetch(sources.SourceFile(kind, uri), Path(spool_dir) / "raw", get_settings())
    return str(path)


@task(name="clean-file")
def clean_file(kind: str, path: str, layout: str, display: str, spool_dir: str) -> dict:
    """Parse and clean one file into the spool (in a forked process, so the three files use
    every core); returns its counts and spool paths."""
    spool = ingest.clean_to_spool_in_subprocess(Path(path), kind, layout, display, Path(spool_dir))
    return ingest.spool_to_dict(spool)


@task(name="prepare-database", **IO_RETRIES)
def prepare_database() -> str:
    """Apply migrations and create this run's stage schema; returns its name."""
    engine = db.get_engine(get_settings())
    db.upgrade(engine)
    return pgload.create_stage(engine)


@task(name="stage-file", **IO_RETRIES)
def stage_file(kind: str, spool: dict, schema: str) -> dict:
    """COPY one cleaned file into the stage schema (indexes built there on a first load)."""
    engine = db.get_engine(get_settings())
    staged = pgload.stage_spool(engine, kind, spool["data_path"], schema)
    return asdict(staged)


@task(name="commit-ingest", **IO_RETRIES)
def commit_ingest(
    staged: list[dict], spools: list[dict], source: str, layout: str, started_at: datetime
) -> dict:
    """One transaction: swap in or upsert every staged file, record the run and quarantine."""
    engine = db.get_engine(get_settings())
    return pgload.commit_staged(
        engine,
        [pgload.StagedFile(**s) for s in staged],
        [pgload.SpoolFile(**s) for s in spools],
        source=source,
        layout=layout,
        started_at=started_at,
    )


@task(name="drop-stage-schema", **IO_RETRIES)
def drop_stage_schema(schema: str) -> None:
    """Remove the run's stage schema (already gone after a successful commit)."""
    pgload.drop_stage(db.get_engine(get_settings()), schema)


@task(name="publish-ingest-report")
def publish_ingest_report(report: dict) -> None:
    """The report as a table and a markdown artifact in the Prefect UI."""
    create_table_artifact(
        key="ingest-report",
        table=ingest.report_table(report),
        description=f"Ingest of {report.get('source')}: rows per outcome and file",
    )
    create_markdown_artifact(
        key="ingest-summary",
        markdown=ingest.report_markdown(report),
        description="Ingest summary",
    )


@task(name="remove-spool-dir")
def remove_spool_dir(spool_dir: str) -> None:
    """Delete this run's spool folder."""
    shutil.rmtree(spool_dir, ignore_errors=True)
