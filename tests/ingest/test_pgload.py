"""The staging swap against the real PostgreSQL: a first load swaps in fully indexed twins,
anything unsafe falls back to the upsert, and a failed commit leaves no trace."""

from __future__ import annotations

import time
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from bookrec import pgload
from bookrec.ingest import run_ingest
from bookrec.pgload import _write_copy_text
from tests.conftest import SAMPLE_DIR
from tests.ingest.conftest import db_fingerprint

INDEXES = (
    "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE i.indrelid IN ('books'::regclass, 'ratings'::regclass, 'users'::regclass) "
    "ORDER BY 1"
)
CONSTRAINTS = (
    "SELECT conname, conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid IN ('books'::regclass, 'ratings'::regclass, 'users'::regclass) ORDER BY 1"
)
OIDS = "SELECT 'books'::regclass::oid, 'ratings'::regclass::oid, 'users'::regclass::oid"
STAGES = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bookrec\\_stage\\_%' ORDER BY 1"


def _rows(engine, query: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query))]


def test_first_load_swaps_in_twins_with_the_same_indexes(clean_db, settings):
    indexes, constraints, oids = (_rows(clean_db, q) for q in (INDEXES, CONSTRAINTS, OIDS))
    report = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    # new tables (the twins) took the place of the empty ones...
    assert all(a != b for a, b in zip(oids[0], _rows(clean_db, OIDS)[0], strict=True))
    # ...with the very same indexes and constraints under the same names
    assert _rows(clean_db, INDEXES) == indexes
    assert _rows(clean_db, CONSTRAINTS) == constraints
    assert _rows(clean_db, STAGES) == []
    with clean_db.connect() as conn:
        for kind in pgload.KINDS:
            stored = conn.execute(sa.text(f"SELECT count(*) FROM {kind}")).scalar_one()
            assert stored == report["files"][kind]["inserted"] > 0
        # the column defaults came along (updated_at, ratings.source)
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM ratings WHERE source = 'ingest' AND updated_at IS NOT NULL"
                )
            ).scalar_one()
            == report["files"]["ratings"]["inserted"]
        )
        # and the full-text index serves the database's search path
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = (
            conn.execute(
                sa.text(
                    "EXPLAIN SELECT isbn FROM books "
                    "WHERE search_doc @@ to_tsquery('simple', 'mockingbird')"
                )
            )
            .scalars()
            .all()
        )
    assert any("ix_books_search_doc" in line for line in plan), plan


def test_a_second_load_upserts_into_the_same_tables(clean_db, settings):
    run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    oids = _rows(clean_db, OIDS)
    report = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    assert _rows(clean_db, OIDS) == oids
    assert all(c["inserted"] == c["updated"] == 0 for c in report["files"].values())


def test_swap_keeps_grants_and_owner(clean_db, settings):
    role = f"bookrec_reader_{uuid.uuid4().hex[:8]}"
    with clean_db.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} NOLOGIN"))
        conn.execute(sa.text(f"GRANT SELECT ON books TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT, INSERT ON ratings TO {role} WITH GRANT OPTION"))
        conn.execute(sa.text("GRANT SELECT ON users TO PUBLIC"))
    owners = _rows(
        clean_db,
        "SELECT relname, pg_get_userbyid(relowner) FROM pg_class "
        "WHERE relname IN ('books', 'ratings', 'users') AND relkind = 'r' ORDER BY 1",
    )
    try:
        oids = _rows(clean_db, OIDS)
        run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
        assert _rows(clean_db, OIDS) != oids  # swapped
        grants = set(
            _rows(
                clean_db,
                "SELECT table_name, grantee, privilege_type, is_grantable "
                "FROM information_schema.role_table_grants "
                f"WHERE grantee IN ('{role}', 'PUBLIC') AND table_schema = current_schema()",
            )
        )
        assert grants == {
            ("books", role, "SELECT", "NO"),
            ("ratings", role, "SELECT", "YES"),
            ("ratings", role, "INSERT", "YES"),
            ("users", "PUBLIC", "SELECT", "NO"),
        }
        assert (
            _rows(
                clean_db,
                "SELECT relname, pg_get_userbyid(relowner) FROM pg_class "
                "WHERE relname IN ('books', 'ratings', 'users') AND relkind = 'r' "
                "ORDER BY 1",
            )
            == owners
        )
    finally:
        with clean_db.begin() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON books, ratings FROM {role}"))
            conn.execute(sa.text("REVOKE ALL ON users FROM PUBLIC"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


def test_a_dependent_view_or_trigger_means_upsert_not_swap(clean_db, settings):
    with clean_db.begin() as conn:
        conn.execute(
            sa.text("CREATE VIEW books_by_year AS SELECT year, count(*) FROM books GROUP BY 1")
        )
        conn.execute(
            sa.text(
                "CREATE FUNCTION users_touch() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN NEW.location := NEW.location; RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER users_touch BEFORE INSERT ON users "
                "FOR EACH ROW EXECUTE FUNCTION users_touch()"
            )
        )
    try:
        oids = _rows(clean_db, OIDS)[0]
        report = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
        after = _rows(clean_db, OIDS)[0]
        assert after[0] == oids[0]  # books: the view blocks the DROP, so upserted in place
        assert after[1] != oids[1]  # ratings: nothing attached, swapped
        assert after[2] == oids[2]  # users: a trigger is never bypassed
        with clean_db.connect() as conn:
            in_view = conn.execute(sa.text("SELECT sum(count) FROM books_by_year")).scalar_one()
        assert in_view == report["files"]["books"]["inserted"] > 0
        assert _rows(clean_db, STAGES) == []
    finally:
        with clean_db.begin() as conn:
            conn.execute(sa.text("DROP VIEW books_by_year"))
            conn.execute(sa.text("DROP TRIGGER users_touch ON users"))
            conn.execute(sa.text("DROP FUNCTION users_touch()"))


def test_failed_commit_leaves_tables_and_no_stage_schema(clean_db, settings):
    with clean_db.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_runs() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'ingest_runs is read-only today'; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_runs BEFORE INSERT ON ingest_runs "
                "FOR EACH ROW EXECUTE FUNCTION refuse_runs()"
            )
        )
    before = db_fingerprint(clean_db)
    oids = _rows(clean_db, OIDS)
    try:
        # the failure comes after the three swaps, inside the same transaction
        with pytest.raises(sa.exc.DBAPIError, match="read-only today"):
            run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    finally:
        with clean_db.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse_runs ON ingest_runs"))
            conn.execute(sa.text("DROP FUNCTION refuse_runs()"))
    assert db_fingerprint(clean_db) == before
    assert _rows(clean_db, OIDS) == oids
    assert _rows(clean_db, STAGES) == []


def test_stale_stage_schemas_of_crashed_runs_are_removed(clean_db, settings):
    stale = f"bookrec_stage_{int(time.time()) - pgload.STALE_AFTER_S - 60}_dead"
    recent = f"bookrec_stage_{int(time.time()) - 60}_busy"
    with clean_db.begin() as conn:
        for name in (stale, recent):
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
            conn.execute(sa.text(f"CREATE TABLE {name}.books (isbn text)"))
    try:
        run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
        assert _rows(clean_db, STAGES) == [(recent,)]
    finally:
        pgload.drop_stage(clean_db, recent)
        pgload.drop_stage(clean_db, stale)
    with pytest.raises(ValueError, match="not a stage schema"):
        pgload.drop_stage(clean_db, "public")


def test_copy_text_spool_round_trips_awkward_values(engine, tmp_path):
    frame = pd.DataFrame(
        {
            "a": ["plain", "tab\there", "line\nbreak", "back\\slash", "cr\rlf", None, "\\N", "é ü"],
            "b": pd.array([1, None, 3, 4, 5, 6, None, 8], dtype="Int16"),
            "c": [10, 20, 30, 40, 50, 60, 70, 80],
        }
    )
    path = tmp_path / "frame.copy"
    _write_copy_text([path], frame)
    with engine.begin() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        cur.execute("CREATE TEMP TABLE round_trip (a text, b smallint, c bigint) ON COMMIT DROP")
        with open(path, encoding="utf-8") as fh:
            cur.copy_expert("COPY round_trip FROM STDIN", fh)
        cur.execute("SELECT a, b, c FROM round_trip")
        back = cur.fetchall()
    expected = [
        (None if pd.isna(a) else a, None if pd.isna(b) else int(b), c)
        for a, b, c in zip(frame["a"], frame["b"], frame["c"], strict=True)
    ]
    assert back == expected


def test_a_reader_holding_the_table_means_upsert_not_a_wait(clean_db, settings, monkeypatch):
    """A long transaction reading ``books`` (the API, a report) keeps its lock; the swap gives
    up after the lock timeout and the rows go in by upsert, which readers do not block."""
    monkeypatch.setattr(pgload, "SWAP_LOCK_TIMEOUT", "300ms")
    oids = _rows(clean_db, OIDS)[0]
    reader = clean_db.connect()
    try:
        reader.execute(sa.text("BEGIN"))
        reader.execute(sa.text("SELECT count(*) FROM books")).scalar_one()
        report = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    finally:
        reader.rollback()
        reader.close()
    after = _rows(clean_db, OIDS)[0]
    assert after[0] == oids[0]  # books upserted in place
    assert after[1:] != oids[1:]  # the others swapped
    with clean_db.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM books")).scalar_one()
    assert stored == report["files"]["books"]["inserted"] > 0


def test_a_role_that_cannot_create_schemas_gets_a_clear_error(clean_db, database_url):
    role = f"bookrec_nocreate_{uuid.uuid4().hex[:8]}"
    with clean_db.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))  # CONNECT and TEMP only
    url = sa.engine.make_url(database_url).set(username=role, password=None)
    engine = sa.create_engine(url)
    try:
        with pytest.raises(PermissionError, match="CREATE on the database"):
            pgload.create_stage(engine)
    finally:
        engine.dispose()
        with clean_db.begin() as conn:
            conn.execute(sa.text(f"DROP ROLE {role}"))


def _content(engine) -> dict[str, tuple]:
    """Every row of the three tables without the time stamps, and the row ids of a few."""
    out = {}
    with engine.connect() as conn:
        for kind in pgload.KINDS:
            cols = ", ".join(
                pgload.TARGET_COLUMNS[kind] + (["source"] if kind == "ratings" else [])
            )
            keys = ", ".join(pgload.KEYS[kind])
            out[kind] = tuple(
                conn.execute(
                    sa.text(
                        f"SELECT count(*), md5(string_agg(row({cols})::text, '|' ORDER BY {keys})) "
                        f"FROM {kind}"
                    )
                ).one()
            )
    return out


def _first_lines(source, target, lines: int) -> None:
    """A copy of the sample's three files cut to their first ``lines`` lines."""
    from tests.ingest.conftest import read_gz_text, write_gz_text

    target.mkdir()
    for path in source.glob("*.csv.gz"):
        text = read_gz_text(path, "latin-1")
        write_gz_text(target / path.name, "".join(text.splitlines(True)[:lines]), "latin-1")


def _small_then_full(engine, settings, small, monkeypatch, merge: bool) -> tuple[dict, dict]:
    """From empty tables: a small drop, an API rating, then the whole sample."""
    monkeypatch.setattr(pgload, "MERGE_FACTOR", 2 if merge else 10**9)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE quarantine, ingest_runs, ratings, users, books CASCADE"))
    run_ingest(engine, settings, str(small))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO ratings (user_id, isbn, rating, source) "
                "VALUES (2147483000, '0000000000', 7, 'api')"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE books SET updated_at = '2001-01-01' WHERE isbn IN "
                "(SELECT isbn FROM books ORDER BY isbn LIMIT 5)"
            )
        )
        # a changed row: the file puts its title back (updated, stamped anew)
        conn.execute(
            sa.text(
                "UPDATE books SET title = 'edited', updated_at = '2001-01-01' WHERE isbn = "
                "(SELECT isbn FROM books ORDER BY isbn OFFSET 5 LIMIT 1)"
            )
        )
    oids = _rows(engine, OIDS)[0]
    report = run_ingest(engine, settings, str(SAMPLE_DIR / "original"))
    after = _rows(engine, OIDS)[0]
    assert all((a != b) == merge for a, b in zip(oids, after, strict=True)), (merge, oids, after)
    assert _rows(engine, STAGES) == []
    with engine.connect() as conn:
        api = conn.execute(
            sa.text("SELECT rating, source FROM ratings WHERE user_id = 2147483000")
        ).one()
        kept = conn.execute(
            sa.text("SELECT count(*) FROM books WHERE updated_at = '2001-01-01'")
        ).scalar_one()
    assert tuple(api) == (7, "api")  # a row only the table has is kept
    assert kept == 5  # unchanged rows keep their time stamp; the edited one was restamped
    summary = {k: (c["inserted"], c["updated"], c["unchanged"]) for k, c in report["files"].items()}
    return _content(engine), summary


def test_a_load_that_doubles_a_table_merges_into_a_twin_like_the_upsert(
    clean_db, settings, tmp_path, monkeypatch
):
    """Merged into twins (swapped in, new tables) or upserted (same tables): the same rows,
    the same counts; the merge keeps the indexes and leaves no stage schema."""
    _first_lines(SAMPLE_DIR / "original", tmp_path / "small", 200)
    indexes = _rows(clean_db, INDEXES)
    merged, merged_summary = _small_then_full(
        clean_db, settings, tmp_path / "small", monkeypatch, True
    )
    assert _rows(clean_db, INDEXES) == indexes
    upserted, upserted_summary = _small_then_full(
        clean_db, settings, tmp_path / "small", monkeypatch, False
    )
    assert merged == upserted
    assert merged_summary == upserted_summary
    assert all(inserted > 0 and unchanged > 0 for inserted, _, unchanged in merged_summary.values())
    assert merged_summary["books"][1] == 1


LOADED = {  # the loaded columns of each table, in key order (no bookkeeping columns)
    "books": (
        "isbn",
        "isbn, title, author, year, publisher, image_url_s, image_url_m, image_url_l",
    ),
    "ratings": ("user_id, isbn", "user_id, isbn, rating"),
    "users": ("user_id", "user_id, location, city, region, country, age"),
}


def _loaded(engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        return {
            kind: tuple(
                conn.execute(
                    sa.text(
                        f"SELECT count(*), md5(string_agg(row({columns})::text, '|' "
                        f"ORDER BY {order})) FROM {kind}"
                    )
                ).one()
            )
            for kind, (order, columns) in LOADED.items()
        }


def test_files_over_part_rows_are_copied_in_parallel_parts(clean_db, settings, monkeypatch):
    """A books file of more than PART_ROWS clean rows is spooled in parts, COPY-ed side by
    side: the tables hold the same rows as from one part, swapped in or upserted."""
    run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    one_part = _loaded(clean_db)
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE books, ratings, users, ingest_runs CASCADE"))

    parts: dict[str, int] = {}
    stage_spool = pgload.stage_spool

    def counting_stage_spool(engine, kind, data_paths, schema, **options):
        parts[kind] = len(data_paths)
        return stage_spool(engine, kind, data_paths, schema, **options)

    monkeypatch.setattr(pgload, "PART_ROWS", 5_000)  # the forked cleaners inherit it
    monkeypatch.setattr(pgload, "stage_spool", counting_stage_spool)
    first = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    assert parts == {"books": 2, "ratings": 1, "users": 1}
    assert _loaded(clean_db) == one_part
    assert all(
        c["inserted"] == c["rows_read"] - c["merged"] - c["quarantined"]
        for c in first["files"].values()
    )
    again = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))  # the upsert path
    assert all(c["inserted"] == c["updated"] == 0 for c in again["files"].values())
    assert _loaded(clean_db) == one_part


def test_prepare_runs_while_the_files_are_cleaned_and_before_staging(
    clean_db, settings, monkeypatch
):
    """The ingest flow migrates the database through ``prepare``: it runs beside the
    cleaning, and no file is staged before it is done."""
    events: list[str] = []
    stage_spool = pgload.stage_spool

    def recording_stage_spool(engine, kind, data_paths, schema, **options):
        events.append(f"staged {kind}")
        return stage_spool(engine, kind, data_paths, schema, **options)

    monkeypatch.setattr(pgload, "stage_spool", recording_stage_spool)
    report = run_ingest(
        clean_db, settings, str(SAMPLE_DIR / "original"), prepare=lambda: events.append("prepared")
    )
    assert events[0] == "prepared"
    assert sorted(events[1:]) == ["staged books", "staged ratings", "staged users"]
    assert all(c["inserted"] > 0 for c in report["files"].values())


def test_a_failed_prepare_stops_the_ingest_and_leaves_no_stage_schema(clean_db, settings):
    before = db_fingerprint(clean_db)

    def prepare():
        raise RuntimeError("migration failed")

    with pytest.raises(RuntimeError, match="migration failed"):
        run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"), prepare=prepare)
    assert db_fingerprint(clean_db) == before
    assert _rows(clean_db, STAGES) == []


def _recording_stage_spool(monkeypatch, events: list[str]) -> None:
    """Record when each file's staging starts and ends, and when books is COPY-ed."""
    stage_spool = pgload.stage_spool

    def recording(engine, kind, data_paths, schema, **options):
        copied = options.get("copied")
        if copied is not None:
            options["copied"] = lambda: (events.append(f"{kind} copied"), copied())
        events.append(f"{kind} staging")
        try:
            return stage_spool(engine, kind, data_paths, schema, **options)
        finally:
            events.append(f"{kind} staged")

    monkeypatch.setattr(pgload, "stage_spool", recording)


def test_the_other_files_are_staged_one_at_a_time_once_books_is_copied(
    clean_db, settings, monkeypatch
):
    """Books is staged as soon as it is clean; ratings and users wait until its rows are
    in, then load one after the other (beside books' index builds)."""
    events: list[str] = []
    _recording_stage_spool(monkeypatch, events)
    report = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    assert events.index("books staging") < events.index("books copied")
    for kind in ("ratings", "users"):
        assert events.index("books copied") < events.index(f"{kind} staging")
    spans = sorted(
        (events.index(f"{kind} staging"), events.index(f"{kind} staged"))
        for kind in ("ratings", "users")
    )
    assert spans[0][1] < spans[1][0]  # one at a time
    assert all(c["inserted"] > 0 for c in report["files"].values())


def test_a_bad_books_file_stages_nothing_else(clean_db, settings, sample_copy, monkeypatch):
    from bookrec.sources import IngestFileError
    from tests.ingest.conftest import read_gz_text, write_gz_text

    folder = sample_copy("original")
    books = folder / "BX-Books.csv.gz"
    text = read_gz_text(books, "latin-1").replace('"Book-Title"', '"Name"', 1)
    write_gz_text(books, text, "latin-1")
    before = db_fingerprint(clean_db)
    events: list[str] = []
    _recording_stage_spool(monkeypatch, events)
    with pytest.raises(IngestFileError, match="wrong header"):
        run_ingest(clean_db, settings, str(folder))
    assert events == []
    assert db_fingerprint(clean_db) == before
    assert _rows(clean_db, STAGES) == []
