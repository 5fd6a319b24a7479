"""Ingest: the three Book-Crossing files from a folder or S3 prefix into PostgreSQL.

``run_ingest`` is the one composition of the steps, run by the ingest flow (inside its
``ingest-files`` task), the tests and ``bench/bench_ingest.py``:

1. ``sources.locate`` and ``sources.fetch``: the three files, local. Meanwhile, in a
   thread, the caller's ``prepare`` (the flow's: the migrations) and ``create_stage``.
2. ``clean_to_spool`` per file, each in a forked process: read and check the bytes
   (``sources.read_source``), parse (``bookrec.parse``), clean (``bookrec.cleaning``):
   every record ends as a clean row, a merged duplicate, or a quarantined row with its
   line number, raw text and reason; then ``pgload.write_spool``: the clean rows in COPY
   text format (a large file in parts), the quarantine as CSV, and the counts.
3. ``pgload.stage_spool`` per file as soon as it is clean (COPY into a per-run stage
   schema, the parts of a large file side by side, indexes built there for a first
   load), then ``pgload.commit_staged``: ONE
   transaction that swaps in or upserts every file (counting inserted / updated /
   unchanged) and stores the quarantine and an ``ingest_runs`` row. Until it commits,
   only the stage schema has changed, so a failure anywhere leaves the tables as they were.

Accounting: for each file rows_read = inserted + updated + unchanged + merged + quarantined.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from bookrec import cleaning, pgload, sources
from bookrec.parse import parse_file
from bookrec.pgload import SpoolFile, StagedFile
from bookrec.settings import Settings
from bookrec.sources import KINDS

# At most one cleaning process per core, files cleaned in the order asked for. The books
# file lies on the critical path (longest to clean, then its trigram indexes), so the
# other files are cleaned at a lower CPU priority and never slow it down.
CRITICAL_KIND = "books"
BACKGROUND_NICENESS = 5
_CLEANING_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


def clean_path(path: Path, kind: str, layout: str, display: str) -> cleaning.CleanFile:
    """Read, parse and clean one local file (pure apart from reading it)."""
    text, faults = sources.read_source(path, layout, display)
    return cleaning.CLEANERS[kind](parse_file(text, layout, kind, display, faults), layout)


def clean_to_spool(path: Path, kind: str, layout: str, display: str, spool_dir: Path) -> SpoolFile:
    """Read, parse and clean one file and write its spool: the whole CPU-bound half of ingest.

    The spool records the file's modification time (``sources.fetch`` gives a downloaded
    S3 object its LastModified): it decides whether a rating in the file replaces one the
    API wrote (``pgload.commit_staged``)."""
    spool = pgload.write_spool(clean_path(path, kind, layout, display), spool_dir)
    spool.modified_at = sources.modified_at(path)
    return spool


def clean_to_spool_in_subprocess(
    path: Path, kind: str, layout: str, display: str, spool_dir: Path
) -> SpoolFile:
    """``clean_to_spool`` in a forked process, so that files are cleaned on several cores.

    Cleaning is GIL-bound Python and pandas; a fork shares the already imported modules,
    so the extra process costs milliseconds. Errors (an ``IngestFileError`` naming the
    file and line) are raised here as they were there.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    niceness = 0 if kind == CRITICAL_KIND else BACKGROUND_NICENESS
    with (
        _CLEANING_SLOTS,
        ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=os.nice, initargs=(niceness,)
        ) as pool,
    ):
        return pool.submit(clean_to_spool, path, kind, layout, display, spool_dir).result()


def run_ingest(
    engine: Engine,
    settings: Settings,
    source: str,
    layout: str = "auto",
    spool_dir: Path | None = None,
    log: Callable[[str], object] | None = None,
    prepare: Callable[[], object] | None = None,
) -> dict:
    """Ingest ``source`` (a folder or ``s3://`` prefix in ``layout``): locate and fetch the
    files, clean each in its own process and stage it as soon as it is clean, then the one
    commit. Returns the ingest report (``pgload.commit_staged``'s, plus ``duration_s``).

    ``prepare`` (the ingest flow's: apply the migrations) runs in a thread while the files
    are cleaned, then the stage schema is created; staging waits for both. The spool files
    live in a temporary folder under ``spool_dir`` (default: the system's), removed at the
    end like the stage schema. ``log`` receives a line per file as it is cleaned and staged.
    """
    say = log or (lambda _line: None)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    resolved, files = sources.locate(source, layout, settings)
    schema: str | None = None

    def open_stage() -> str:
        nonlocal schema
        if prepare is not None:
            began = time.perf_counter()
            prepare()
            say(f"database prepared ({time.perf_counter() - began:.1f} s)")
        schema = pgload.create_stage(engine)
        return schema

    with ThreadPoolExecutor(max_workers=1) as opener:
        stage_ready = opener.submit(open_stage)
        try:
            with tempfile.TemporaryDirectory(prefix="ingest-", dir=spool_dir) as tmp:
                paths = {
                    kind: sources.fetch(files[kind], Path(tmp) / "raw", settings) for kind in KINDS
                }

                def clean_and_stage(kind: str) -> tuple[SpoolFile, StagedFile]:
                    began = time.perf_counter()
                    spool = clean_to_spool_in_subprocess(
                        paths[kind], kind, resolved, files[kind].uri, Path(tmp)
                    )
                    cleaned = time.perf_counter()
                    staged = pgload.stage_spool(
                        engine, kind, spool.data_paths, stage_ready.result()
                    )
                    say(
                        f"{kind}: {spool.rows_read:,} rows read, {spool.rows_clean:,} clean, "
                        f"{spool.quarantined:,} quarantined ({cleaned - began:.1f} s); "
                        f"staged ({time.perf_counter() - cleaned:.1f} s)"
                    )
                    return spool, staged

                with ThreadPoolExecutor(max_workers=len(KINDS)) as threads:
                    futures = [threads.submit(clean_and_stage, kind) for kind in KINDS]
                    done = [f.result() for f in futures]
                report = pgload.commit_staged(
                    engine,
                    [staged for _, staged in done],
                    [spool for spool, _ in done],
                    source=source,
                    layout=resolved,
                    started_at=started,
                )
        finally:
            wait([stage_ready])  # a failed file must not leave a stage schema behind
            if schema is not None:
                pgload.drop_stage(engine, schema)
    report["duration_s"] = round(time.perf_counter() - t0, 3)
    return report
