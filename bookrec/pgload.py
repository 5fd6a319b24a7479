"""Loading cleaned files into PostgreSQL: write the spool, stage in parallel, then one
short commit.

``write_spool`` writes a cleaned file's rows in COPY text format, its quarantine as CSV,
and returns their counts (``SpoolFile``). Then two phases, so that the heavy work uses
every core and the database changes atomically:

1. ``stage_spool`` (one per file, each on its own connection, concurrently): COPY the
   spool into a table of a per-run stage schema and commit it there. When the target
   table is empty (a first load), the stage table is a full twin of it (same columns,
   defaults and checks) and gets the target's primary key and indexes, built in parallel
   sessions -- the expensive part of a first load (the trigram indexes of ``books``).
2. ``commit_staged`` (ONE transaction): per file, either swap the twin in for the still
   empty target (drop the empty table, move the twin into its schema, restore grants and
   owner), or upsert from the stage table, counting inserted / updated / unchanged.
   Then the ``ingest_runs`` row and the quarantine; then the stage schema is dropped.

On both the upsert and the merge path a rating that the API wrote after the file's
modification time (``SpoolFile.modified_at``) is kept over the file's value.

Until phase 2 commits, nothing outside the stage schema has changed, so a failure anywhere
leaves the tables as they were ("a staging swap"); ``drop_stage`` removes the schema, and a
crashed run's schema is removed by a later run (``STALE_AFTER_S``).

The swap falls back to the upsert whenever it cannot be done safely: the target gained
rows meanwhile, has triggers, row security, rules, publications or extended statistics, a
view or foreign key depends on it, or its lock is not granted within ``SWAP_LOCK_TIMEOUT``.
"""

from __future__ import annotations

import csv
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bookrec import columns as C
from bookrec.columns import TARGET_COLUMNS
from bookrec.sources import KINDS

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.cleaning import CleanFile

KEYS = {"books": [C.ISBN], "ratings": [C.USER_ID, C.ISBN], "users": [C.USER_ID]}

STAGE_PREFIX = "bookrec_stage_"
STALE_AFTER_S = 6 * 3600
SWAP_LOCK_TIMEOUT = "5s"
INGEST_LOCK = 72210002
# GIN builds gather their entries in maintenance_work_mem; 256 MB per session holds the
# largest (books titles) in one pass. A table's indexes are built side by side, in at most
# INDEX_SESSIONS sessions (CPU-bound, but the longest must not wait for the short ones).
MAINTENANCE_WORK_MEM = "256MB"
INDEX_SESSIONS = 4
# A large books file is spooled in parts that are COPY-ed side by side: PostgreSQL parses
# COPY data and computes the generated search vector (books.search_doc) in one process per
# session, and books is the critical path (cleaned last, then its GIN index). One part per
# PART_ROWS rows, at most COPY_SESSIONS (this machine's cores). Ratings and users load
# while books is still being cleaned: more sessions there would only take CPU from it.
SPLIT_KINDS = frozenset({"books"})
PART_ROWS = 100_000
COPY_SESSIONS = 2
COPY_BUFFER = 1 << 18

# Objects that make a table unsafe to replace by another one with the same name.
_SWAP_BLOCKERS = """
SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal)
     + (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid)
     + (SELECT count(*) FROM pg_rewrite WHERE ev_class = c.oid)
     + (SELECT count(*) FROM pg_publication_rel WHERE prrelid = c.oid)
     + (SELECT count(*) FROM pg_statistic_ext WHERE stxrelid = c.oid)
     + (SELECT count(*) FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid)
     + (SELECT count(*) FROM pg_constraint WHERE confrelid = c.oid OR
          (conrelid = c.oid AND contype NOT IN ('p', 'u', 'c', 'n')))
     + CASE WHEN c.relrowsecurity OR c.relkind <> 'r' OR c.relpersistence <> 'p'
            THEN 1 ELSE 0 END
FROM pg_class c WHERE c.oid = %s::regclass
"""


@dataclass
class SpoolFile:
    """One cleaned file as ``write_spool`` left it on disk (small, JSON-able): the
    rows to load (COPY text format), the quarantine (CSV) and the counts."""

    kind: str
    name: str
    rows_read: int
    rows_clean: int
    merged: int
    quarantined: int
    reasons: dict[str, int]
    data_paths: list[str]  # the rows in order, in parts COPY-ed side by side
    quarantine_path: str
    modified_at: str | None = None  # the file's mtime / S3 LastModified, ISO 8601 UTC


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as header-less CSV for COPY; missing values become empty fields (NULL)."""
    columns = []
    for name in frame.columns:
        col = frame[name]
        values = col.astype(object).where(col.notna(), None) if col.hasnans else col.astype(object)
        columns.append(values.tolist())
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(zip(*columns, strict=True))


_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
_COPY_NULL = "\\N"


def _escape_copy_texts(values: list[str]) -> list[str]:
    """COPY text escaping of many strings: backslash, tab, newline, carriage return.

    One C-level join tells whether any value needs it at all (almost never); when some do,
    the joined column is escaped by ``str.replace`` and split again (a NUL cannot be in a
    value PostgreSQL stores, so it separates them), not value by value."""
    joined = "\x00".join(values)
    if not any(char in joined for char, _ in _COPY_ESCAPES):
        return values
    if joined.count("\x00") != len(values) - 1:  # a value holds a NUL: COPY will refuse it
        escaped = values
        for char, escape in _COPY_ESCAPES:
            escaped = [v.replace(char, escape) for v in escaped]
        return escaped
    for char, escape in _COPY_ESCAPES:
        joined = joined.replace(char, escape)
    return joined.split("\x00")


def _copy_text_column(col: pd.Series) -> list[str]:
    """One column as PostgreSQL COPY text fields: backslash, tab, newline and carriage
    return escaped, missing values as ``\\N``.

    Integers are formatted once per distinct value (pandas' ``astype(str)`` builds a
    string array first, several times slower); text is escaped per column
    (``_escape_copy_texts``).
    """
    missing = col.isna().to_numpy()
    has_missing = bool(missing.any())
    if pd.api.types.is_integer_dtype(col.dtype):
        numbers = col.to_numpy(dtype=np.int64, na_value=0) if has_missing else col.to_numpy()
        codes, uniques = pd.factorize(numbers)  # format each distinct number once
        texts = np.empty(len(uniques), dtype=object)
        texts[:] = list(map(str, uniques.tolist()))
        values = texts[codes].tolist()
    elif pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        values = (
            col.astype(object).astype(str).tolist() if has_missing else col.astype(str).tolist()
        )
    else:  # object or string dtypes
        values = col.tolist()
        if has_missing:  # placeholders until the escaping is done, then \N
            values = ["" if m else v for v, m in zip(values, missing.tolist(), strict=True)]
        if not set(map(type, values)) <= {str}:
            values = [v if type(v) is str else str(v) for v in values]
        values = _escape_copy_texts(values)
    if has_missing:
        values = [_COPY_NULL if m else v for v, m in zip(values, missing.tolist(), strict=True)]
    return values


def _write_copy_text(paths: list[Path], frame: pd.DataFrame) -> None:
    """Write ``frame`` in PostgreSQL's COPY text format (tab-separated, ``\\N`` for NULL),
    its rows in order split evenly over ``paths``: lines are joined in C, twice as fast as
    the csv module's per-field quoting checks."""
    columns = [_copy_text_column(frame[name]) for name in frame.columns]
    bounds = np.linspace(0, len(frame), len(paths) + 1).round().astype(int).tolist()
    for path, start, stop in zip(paths, bounds, bounds[1:], strict=False):
        with open(path, "w", encoding="utf-8", newline="") as fh:
            if stop > start:
                rows = zip(*(column[start:stop] for column in columns), strict=True)
                fh.write("\n".join(map("\t".join, rows)))
                fh.write("\n")


def spool_parts(kind: str, rows: int) -> int:
    """How many parts a file of ``rows`` clean rows is spooled in: for ``SPLIT_KINDS``, one
    per ``PART_ROWS``, at most ``COPY_SESSIONS``; else one."""
    if kind not in SPLIT_KINDS:
        return 1
    return max(1, min(COPY_SESSIONS, -(-rows // PART_ROWS)))


def write_spool(clean: CleanFile, spool_dir: Path) -> SpoolFile:
    """Write one cleaned file into ``spool_dir``: its rows in COPY text format (in
    ``spool_parts`` parts), its quarantine as CSV; returns the paths and the counts."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    parts = spool_parts(clean.kind, len(clean.frame))
    data_paths = [spool_dir / f"{clean.kind}.{i}.copy" for i in range(parts)]
    quarantine_path = spool_dir / f"{clean.kind}.quarantine.csv"
    _write_copy_text(data_paths, clean.frame)
    _write_csv(quarantine_path, clean.quarantine)
    reasons = Counter(_reason_code(r) for r in clean.quarantine["reason"])
    return SpoolFile(
        kind=clean.kind,
        name=clean.name,
        rows_read=clean.rows_read,
        rows_clean=len(clean.frame),
        merged=clean.merged,
        quarantined=len(clean.quarantine),
        reasons=dict(sorted(reasons.items())),
        data_paths=[str(path) for path in data_paths],
        quarantine_path=str(quarantine_path),
    )


def _reason_code(reason: str) -> str:
    return reason.split(":", 1)[0]


@dataclass
class StagedFile:
    """One spool file COPY-ed into the stage schema (small, JSON-able)."""

    kind: str
    schema: str
    rows: int
    twin: bool  # a full twin of an empty target, indexes built: can be swapped in


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _raw(conn) -> psycopg2.extensions.cursor:
    return conn.connection.dbapi_connection.cursor()


def _copy_sql(table: str, kind: str) -> str:
    # text format; the spool's bytes are UTF-8 whatever the connection's client encoding
    return f"COPY {table} ({', '.join(TARGET_COLUMNS[kind])}) FROM STDIN WITH (ENCODING 'UTF8')"


def create_stage(engine: Engine) -> str:
    """A fresh stage schema for one ingest run (and removal of crashed runs' schemas)."""
    now = int(time.time())
    name = f"{STAGE_PREFIX}{now}_{secrets.token_hex(4)}"
    with engine.begin() as conn:
        for (old,) in conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
            {"p": STAGE_PREFIX.replace("_", r"\_") + "%"},
        ):
            stamp = old[len(STAGE_PREFIX) :].split("_", 1)[0]
            if stamp.isdigit() and now - int(stamp) > STALE_AFTER_S:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {_ident(old)} CASCADE"))
        try:
            conn.execute(sa.text(f"CREATE SCHEMA {_ident(name)}"))
        except sa.exc.ProgrammingError as exc:
            if getattr(exc.orig, "pgcode", None) != "42501":  # insufficient_privilege
                raise
            raise PermissionError(
                "ingest stages files in a schema of its own: the database role needs "
                "CREATE on the database (GRANT CREATE ON DATABASE ... TO <role>)"
            ) from exc
    return name


def drop_stage(engine: Engine, schema: str) -> None:
    """Remove a run's stage schema (a no-op once ``commit_staged`` has dropped it)."""
    if not schema.startswith(STAGE_PREFIX):
        raise ValueError(f"not a stage schema: {schema!r}")
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {_ident(schema)} CASCADE"))


def _qualified(cur, schema: str | None, table: str) -> str:
    """``schema.table`` quoted the way PostgreSQL prints it (as in ``pg_get_indexdef``)."""
    cur.execute("SELECT format('%%I.%%I', coalesce(%s, current_schema()), %s)", (schema, table))
    return cur.fetchone()[0]


def _swappable(cur, target: str, *, empty: bool = True) -> bool:
    """True when nothing attached to ``target`` would be lost by a swap (and, with ``empty``,
    it has no rows)."""
    if empty:
        cur.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {target})")
        if not cur.fetchone()[0]:
            return False
    cur.execute(_SWAP_BLOCKERS, (target,))
    return cur.fetchone()[0] == 0


def _index_statements(cur, target: str, twin: str) -> tuple[list[str], list[str]]:
    """The target's indexes re-aimed at the twin: (CREATE INDEX ..., ALTER TABLE ... USING INDEX).

    Index names are kept: the twin lives in another schema, and moves with its indexes.
    """
    cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), con.conname, con.contype "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid "
        "JOIN pg_am am ON am.oid = c.relam "
        "WHERE i.indrelid = %s::regclass "
        # GIN (slow builds) before B-tree, so the slowest start first when sessions are short
        "ORDER BY am.amname = 'btree', c.relname",
        (target,),
    )
    creates, constraints = [], []
    for index, definition, conname, contype in cur.fetchall():
        head, marker, tail = definition.partition(f" ON {target} ")
        if not marker:
            raise RuntimeError(f"unexpected index definition on {target}: {definition}")
        creates.append(f"{head} ON {twin} {tail}")
        if contype in ("p", "u"):
            kind = "PRIMARY KEY" if contype == "p" else "UNIQUE"
            constraints.append(
                f"ALTER TABLE {twin} ADD CONSTRAINT {_ident(conname)} {kind} USING INDEX {_ident(index)}"
            )
    return creates, constraints


def _run_in_sessions(engine: Engine, statements: list[str], sessions: int = INDEX_SESSIONS) -> None:
    """Run DDL statements concurrently, each in its own session (CREATE INDEX takes a SHARE
    lock, so several can build on one table at once); with ``sessions`` 1, one after the
    other in one session."""

    def run(*batch: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'"))
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            for statement in batch:
                _raw(conn).execute(statement)

    if sessions <= 1 or len(statements) <= 1:
        if statements:
            run(*statements)
        return
    with ThreadPoolExecutor(max_workers=min(sessions, len(statements))) as pool:
        for future in [pool.submit(run, s) for s in statements]:
            future.result()


def _build_indexes(
    engine: Engine, creates: list[str], constraints: list[str], sessions: int = INDEX_SESSIONS
) -> None:
    """A twin's indexes side by side (``_run_in_sessions``), then its key constraints."""
    _run_in_sessions(engine, creates, sessions)
    with engine.begin() as conn:
        for statement in constraints:
            _raw(conn).execute(statement)


def _copy_file(cur, table: str, kind: str, path: str) -> int:
    """COPY one spool part into ``table``; the rows it held (the file's UTF-8 bytes go
    to PostgreSQL as they are, not decoded and encoded again)."""
    with open(path, "rb") as fh:
        cur.copy_expert(_copy_sql(table, kind), fh, size=COPY_BUFFER)
    return int(cur.rowcount)


def _copy_in_sessions(engine: Engine, table: str, kind: str, paths: list[str]) -> int:
    """COPY the parts into ``table`` side by side, each in its own session (PostgreSQL
    parses the rows and, for books, computes the search vector in each); the rows."""

    def copy(path: str) -> int:
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            return _copy_file(_raw(conn), table, kind, path)

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return sum(future.result() for future in [pool.submit(copy, p) for p in paths])


def stage_spool(
    engine: Engine,
    kind: str,
    data_paths: list[str],
    schema: str,
    *,
    copied: Callable[[], object] | None = None,
    index_sessions: int = INDEX_SESSIONS,
) -> StagedFile:
    """COPY one spool file into ``schema.kind``; for an empty target, build a swappable twin
    (its indexes in up to ``index_sessions`` sessions). ``copied`` is called once the rows
    are in, before the indexes are built.

    A file in one part is COPY-ed in the transaction that creates its table; the parts
    of a larger one in parallel sessions once the table exists (the stage schema is
    private to this run, and dropped whatever happens)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        cur = _raw(conn)
        target = _qualified(cur, None, kind)
        table = _qualified(cur, schema, kind)
        twin = _swappable(cur, target)
        cur.execute(f"DROP TABLE IF EXISTS {table}")  # a retried attempt's leftovers
        if twin:
            cur.execute(f"CREATE TABLE {table} (LIKE {target} INCLUDING ALL EXCLUDING INDEXES)")
            creates, constraints = _index_statements(cur, target, table)
        else:
            columns = ", ".join(TARGET_COLUMNS[kind])
            cur.execute(
                f"CREATE UNLOGGED TABLE {table} AS SELECT {columns} FROM {target} WITH NO DATA"
            )
        if len(data_paths) == 1:
            rows = _copy_file(cur, table, kind, data_paths[0])
    if len(data_paths) > 1:
        rows = _copy_in_sessions(engine, table, kind, data_paths)
    if copied is not None:
        copied()
    if twin:
        _build_indexes(engine, creates, constraints, index_sessions)
    return StagedFile(kind=kind, schema=schema, rows=rows, twin=twin)


def _compare_columns(kind: str) -> list[str]:
    return [c for c in TARGET_COLUMNS[kind] if c not in KEYS[kind]]


def _differs(kind: str) -> str:
    """SQL: target row ``t`` and staged row ``s`` of one key differ in a loaded column."""
    return " OR ".join(f"t.{c} IS DISTINCT FROM s.{c}" for c in _compare_columns(kind))


def _api_newer(file_time: str) -> str:
    """SQL: target rating ``t`` was written through the API after the file was (the API's
    value then wins over the file's; see ``commit_staged``)."""
    return f"coalesce(t.source = 'api' AND t.updated_at > {file_time}, false)"


def _time_literal(cur, modified_at: str | None) -> str:
    """A SQL timestamptz literal of the file's time; an unknown time is older than any row."""
    if modified_at is None:
        return "'-infinity'::timestamptz"
    return cur.mogrify("%s::timestamptz", (modified_at,)).decode()


# A load that at least doubles a table is merged into a fresh twin (built and indexed in
# parallel sessions, then swapped in) instead of inserted row by row into its indexes.
MERGE_FACTOR = 2
_BOOKKEEPING = {"updated_at": "now()", "source": "'ingest'"}


def _merge_plan(cur, kind: str, target: str, staged_rows: int) -> list[str] | None:
    """The target's columns if ``kind`` is to be merged into a twin (a large load, nothing
    attached to the target, no columns this code does not know how to fill), else None.
    Takes a SHARE lock on the target (writers wait, readers do not) so that the twin is
    built from a table nobody changes."""
    cur.execute(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass", (target,)
    )
    if staged_rows < MERGE_FACTOR * cur.fetchone()[0]:
        return None
    cur.execute(f"LOCK TABLE {target} IN SHARE MODE")
    cur.execute(f"SELECT count(*) FROM {target}")
    if staged_rows < MERGE_FACTOR * cur.fetchone()[0] or not _swappable(cur, target, empty=False):
        return None
    cur.execute(
        "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = ''",  # generated columns (books.search_doc) fill themselves
        (target,),
    )
    columns = cur.fetchone()[0]
    known = set(TARGET_COLUMNS[kind]) | set(_BOOKKEEPING)
    return columns if set(columns) <= known else None


def _build_merged_twin(
    engine: Engine,
    kind: str,
    columns: list[str],
    target: str,
    stage: str,
    twin: str,
    file_time: str = "'-infinity'::timestamptz",
) -> tuple[int, int]:
    """``twin`` := the target with the staged rows applied (new rows added, changed rows
    replaced and stamped, unchanged and target-only rows kept as they are; a rating the API
    wrote after ``file_time`` is kept too), with the target's indexes built side by side.
    Returns (inserted, updated)."""
    keys = KEYS[kind]
    on = " AND ".join(f"s.{k} = t.{k}" for k in keys)
    new = f"t.{keys[0]} IS NULL"
    keep = _api_newer(file_time) if kind == "ratings" else "false"
    changed = (
        f"(s.{keys[0]} IS NOT NULL AND t.{keys[0]} IS NOT NULL AND ({_differs(kind)}) "
        f"AND NOT {keep})"
    )
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
        cur = _raw(conn)
        select = []
        for c in columns:
            if c in keys:
                select.append(f"coalesce(s.{c}, t.{c})")
            elif c in _BOOKKEEPING:
                select.append(f"CASE WHEN {new} OR {changed} THEN {_BOOKKEEPING[c]} ELSE t.{c} END")
            else:
                select.append(f"CASE WHEN s.{keys[0]} IS NULL OR {keep} THEN t.{c} ELSE s.{c} END")
        cur.execute(f"DROP TABLE IF EXISTS {twin}")
        cur.execute(f"CREATE TABLE {twin} (LIKE {target} INCLUDING ALL EXCLUDING INDEXES)")
        cur.execute(
            f"INSERT INTO {twin} ({', '.join(columns)}) SELECT {', '.join(select)} "
            f"FROM {stage} s FULL JOIN {target} t ON {on}"
        )
        cur.execute(
            f"SELECT count(*) FILTER (WHERE {new}), count(*) FILTER (WHERE {changed}) "
            f"FROM {stage} s LEFT JOIN {target} t ON {on}"
        )
        inserted, updated = cur.fetchone()
        creates, constraints = _index_statements(cur, target, twin)
    _build_indexes(engine, creates, constraints)
    return int(inserted), int(updated)


def _upsert(
    cur, kind: str, stage: str, file_time: str = "'-infinity'::timestamptz"
) -> tuple[int, int]:
    """Apply stage -> target, touching only new and changed rows; return (inserted, updated).

    The stage table is compared with the target in one hash join, so rows whose values
    are unchanged cost no write at all (a re-ingest of the same files is read-only). A
    rating the API wrote after ``file_time`` is left as it is, also when it is posted while
    this runs (the insert's ON CONFLICT and the update re-check it on the current row).
    """
    cols = TARGET_COLUMNS[kind]
    keys = KEYS[kind]
    compare = _compare_columns(kind)
    keep = _api_newer(file_time) if kind == "ratings" else "false"
    changed = f"({_differs(kind)}) AND NOT {keep}"
    key_match = " AND ".join(f"t.{k} = d.{k}" for k in keys)
    col_list = ", ".join(cols)
    extra_set = ", source = 'ingest'" if kind == "ratings" else ""
    cur.execute(
        f"CREATE TEMP TABLE diff_{kind} ON COMMIT DROP AS "
        f"SELECT {', '.join('s.' + c for c in cols)}, t.{keys[0]} IS NULL AS is_new "
        f"FROM {stage} s LEFT JOIN {kind} t USING ({', '.join(keys)}) "
        f"WHERE t.{keys[0]} IS NULL OR {changed}"
    )
    cur.execute(
        f"INSERT INTO {kind} AS t ({col_list}) SELECT {col_list} FROM diff_{kind} WHERE is_new "
        f"ORDER BY {', '.join(keys)} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in compare)
        + f", updated_at = now(){extra_set} WHERE NOT {keep}"
    )
    inserted = cur.rowcount
    cur.execute(
        f"UPDATE {kind} t SET "
        + ", ".join(f"{c} = d.{c}" for c in compare)
        + f", updated_at = now(){extra_set} FROM diff_{kind} d "
        f"WHERE NOT d.is_new AND {key_match} AND NOT {keep}"
    )
    updated = cur.rowcount
    return int(inserted), int(updated)


def _count_api_kept(cur, stage: str, file_time: str) -> int:
    """Staged ratings that differ from a rating the API wrote after the file (kept)."""
    cur.execute(
        f"SELECT count(*) FROM {stage} s JOIN ratings t USING ({', '.join(KEYS['ratings'])}) "
        f"WHERE ({_differs('ratings')}) AND {_api_newer(file_time)}"
    )
    return int(cur.fetchone()[0])


def _swap(cur, target: str, twin: str, *, empty: bool = True) -> bool:
    """Replace ``target`` by ``twin`` inside a savepoint; False (and nothing changed) when
    the target cannot be replaced safely, or (``empty``) has rows by now. With ``empty``
    False the caller has held a SHARE lock on the target since the twin was built from it."""
    cur.execute("SAVEPOINT swap")
    try:
        cur.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
        cur.execute(f"LOCK TABLE {target} IN ACCESS EXCLUSIVE MODE")
        cur.execute("SET LOCAL lock_timeout = 0")
        if not _swappable(cur, target, empty=empty):
            cur.execute("ROLLBACK TO SAVEPOINT swap")
            return False
        cur.execute(
            "SELECT n.nspname, pg_get_userbyid(c.relowner), "
            "  (SELECT coalesce(json_agg(json_build_array("
            "      CASE a.grantee WHEN 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
            "      a.privilege_type, a.is_grantable)), '[]') "
            "   FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s::regclass",
            (target,),
        )
        namespace, owner, grants = cur.fetchone()
        cur.execute(f"DROP TABLE {target}")
        cur.execute(f"ALTER TABLE {twin} SET SCHEMA {_ident(namespace)}")
        twin_name, target_name = twin.rsplit(".", 1)[1], target.rsplit(".", 1)[1]
        if twin_name != target_name:
            cur.execute(f"ALTER TABLE {_ident(namespace)}.{twin_name} RENAME TO {target_name}")
        cur.execute("SELECT current_user")
        if cur.fetchone()[0] != owner:
            cur.execute(f"ALTER TABLE {target} OWNER TO {_ident(owner)}")
        for grantee, privilege, grantable in grants:
            role = "PUBLIC" if grantee is None else _ident(grantee)
            option = " WITH GRANT OPTION" if grantable else ""
            cur.execute(f"GRANT {privilege} ON {target} TO {role}{option}")
        cur.execute("RELEASE SAVEPOINT swap")
        return True
    except psycopg2.Error:
        cur.execute("ROLLBACK TO SAVEPOINT swap")
        return False


def commit_staged(
    engine: Engine,
    staged: list[StagedFile],
    files: list[SpoolFile],
    *,
    source: str,
    layout: str,
    started_at: datetime,
) -> dict:
    """ONE transaction: swap or upsert every staged file, record the run and its quarantine,
    drop the stage schema. Returns the ingest report."""
    by_kind = {s.kind: s for s in staged}
    counts_of = {f.kind: f for f in files}
    schemas = {s.schema for s in staged}
    if len(schemas) != 1:
        raise ValueError(f"staged files come from {len(schemas)} stage schemas")
    schema = schemas.pop()
    report: dict[str, dict] = {}
    with engine.begin() as conn:
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({INGEST_LOCK})"))
        conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        cur = _raw(conn)
        names = {  # (target, stage table, merged twin)
            kind: (
                _qualified(cur, None, kind),
                _qualified(cur, schema, kind),
                _qualified(cur, schema, f"{kind}_merged"),
            )
            for kind in KINDS
        }
        ratings_time = _time_literal(cur, counts_of["ratings"].modified_at)
        merges = {}
        for kind in KINDS:
            stage = by_kind[kind]
            if not stage.twin:
                columns = _merge_plan(cur, kind, names[kind][0], stage.rows)
                if columns is not None:
                    merges[kind] = columns
        merged_counts = {}
        if merges:  # built in their own sessions from the targets this transaction locked
            with ThreadPoolExecutor(max_workers=len(merges)) as pool:
                built = {
                    kind: pool.submit(
                        _build_merged_twin, engine, kind, columns, *names[kind], ratings_time
                    )
                    for kind, columns in merges.items()
                }
                merged_counts = {kind: future.result() for kind, future in built.items()}
        api_kept = 0
        for kind in KINDS:
            stage = by_kind[kind]
            target, table, merged = names[kind]
            if kind == "ratings" and not stage.twin:
                api_kept = _count_api_kept(cur, table, ratings_time)
            if stage.twin and _swap(cur, target, table):
                inserted, updated = stage.rows, 0
            elif kind in merges and _swap(cur, target, merged, empty=False):
                inserted, updated = merged_counts[kind]
            else:
                inserted, updated = _upsert(cur, kind, table, ratings_time)
            f = counts_of[kind]
            report[kind] = {
                "rows_read": f.rows_read,
                "inserted": inserted,
                "updated": updated,
                "unchanged": max(f.rows_clean - inserted - updated, 0),
                "merged": f.merged,
                "quarantined": f.quarantined,
                "reasons": f.reasons,
            }
        provenance = {
            kind: {"file": counts_of[kind].name, "modified_at": counts_of[kind].modified_at}
            for kind in KINDS
        }
        provenance["ratings"]["api_kept"] = api_kept
        finished = datetime.now(UTC)
        duration = (finished - started_at).total_seconds()
        run_id = conn.execute(
            sa.text(
                "INSERT INTO ingest_runs "
                "(started_at, finished_at, source, layout, counts, files, duration_s) "
                "VALUES (:s, :f, :src, :lay, CAST(:c AS jsonb), CAST(:files AS jsonb), :d) "
                "RETURNING id"
            ),
            {
                "s": started_at,
                "f": finished,
                "src": source,
                "lay": layout,
                "c": json.dumps(report),
                "files": json.dumps(provenance),
                "d": duration,
            },
        ).scalar_one()
        cur.execute(
            "CREATE TEMP TABLE stage_quarantine "
            "(line_number int, raw text, reason text, raw_format text) ON COMMIT DROP"
        )
        for kind in KINDS:
            f = counts_of[kind]
            cur.execute("TRUNCATE stage_quarantine")
            with open(f.quarantine_path, encoding="utf-8") as fh:
                cur.copy_expert("COPY stage_quarantine FROM STDIN WITH (FORMAT csv)", fh)
            cur.execute(
                "INSERT INTO quarantine "
                "(run_id, source_file, kind, line_number, raw, reason, raw_format) "
                "SELECT %s, %s, %s, line_number, raw, reason, raw_format FROM stage_quarantine",
                (run_id, f.name, kind),
            )
        cur.execute(f"DROP SCHEMA {_ident(schema)} CASCADE")
    return {
        "files": report,
        "duration_s": round(duration, 3),
        "run_id": run_id,
        "source": source,
        "layout": layout,
    }
