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

# At most one cleaning process per core. The books file lies on the critical path (longest
# to clean, then its COPY computing the search vector and its GIN index, built by one
# process): it is cleaned at once, the other files on the remaining cores (at least one)
# in turn and at a lower CPU priority, so they never slow it down. They are staged once
# books is COPY-ed, one at a time, each index in turn: their COPY and index builds then
# run on the core that books' GIN build leaves idle, instead of taking CPU from books'
# cleaning and COPY.
CRITICAL_KIND = "books"
BACKGROUND_NICENESS = 5


class _Order:
    """When each file of one run may be cleaned and staged (see ``CRITICAL_KIND``): the
    others are cleaned in ``KINDS`` order, as many at once as there are cores beside the
    critical file's, and staged one at a time once the critical file is COPY-ed (or failed)."""

    def __init__(self) -> None:
        self.background = [kind for kind in KINDS if kind != CRITICAL_KIND]
        self.slots = max(1, (os.cpu_count() or 1) - 1)
        self.cleaned = {kind: threading.Event() for kind in KINDS}
        self.copied = threading.Event()  # the critical file is COPY-ed, or failed
        self.failed = threading.Event()  # the critical file failed
        self.staging = threading.Lock()

    def wait_to_clean(self, kind: str) -> None:
        """Until the background file ``slots`` places before ``kind`` is cleaned."""
        if kind in self.background:
            place = self.background.index(kind)
            if place >= self.slots:
                self.cleaned[self.background[place - self.slots]].wait()


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
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=os.nice, initargs=(niceness,)
    ) as pool:
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

                order = _Order()

                def clean_and_stage(kind: str) -> tuple[SpoolFile, StagedFile | None]:
                    critical = kind == CRITICAL_KIND
                    try:
                        order.wait_to_clean(kind)
                        began = time.perf_counter()
                        try:
                            spool = clean_to_spool_in_subprocess(
                                paths[kind], kind, resolved, files[kind].uri, Path(tmp)
                            )
                        finally:
                            order.cleaned[kind].set()
                        cleaned = time.perf_counter()
                        schema = stage_ready.result()
                        if critical:
                            staged = pgload.stage_spool(
                                engine, kind, spool.data_paths, schema, copied=order.copied.set
                            )
                        else:
                            order.copied.wait()
                            if order.failed.is_set():
                                return spool, None  # the run fails with the critical file's error
                            with order.staging:
                                staged = pgload.stage_spool(
                                    engine, kind, spool.data_paths, schema, index_sessions=1
                                )
                    except BaseException:
                        if critical:
                            order.failed.set()
                        raise
                    finally:
                        if critical:
                            order.copied.set()
                    say(
                        f"{kind}: {spool.rows_read:,} rows read, {spool.rows_clean:,} clean, "
                        f"{spool.quarantined:,} quarantined ({cleaned - began:.1f} s); "
                        f"staged ({time.perf_counter() - cleaned:.1f} s)"
                    )
                    return spool, staged

                with ThreadPoolExecutor(max_workers=len(KINDS)) as threads:
                    futures = {kind: threads.submit(clean_and_stage, kind) for kind in KINDS}
                    # the critical file's error first: the others may have stopped for it
                    done = [futures[CRITICAL_KIND].result()]
                    done += [f.result() for kind, f in futures.items() if kind != CRITICAL_KIND]
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
