"""Ratings from two sources: a rating the API wrote after the file was written wins over
the file's value; a file newer than the API's rating wins over it (real PostgreSQL)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from bookrec.ingest import run_ingest
from serving.catalog import Catalog
from tests.ingest.test_ingest_db import assert_accounted

OLD = datetime(2004, 9, 1, tzinfo=UTC).timestamp()  # the crawl: older than any API write


def _stamp(folder, when: float) -> None:
    os.utime(folder / "BX-Book-Ratings.csv.gz", (when, when))


def _rating(engine, user: int, isbn: str):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT rating, source FROM ratings WHERE user_id = :u AND isbn = :i"),
            {"u": user, "i": isbn},
        ).one()


def _last_run_files(engine) -> dict:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT files FROM ingest_runs ORDER BY id DESC LIMIT 1")
        ).scalar_one()


def _a_file_rating(engine) -> tuple[int, str, int]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.text("SELECT user_id, isbn, rating FROM ratings ORDER BY user_id, isbn LIMIT 1")
            ).one()
        )


def test_api_rating_survives_an_older_file_and_yields_to_a_newer_one(
    clean_db, settings, sample_copy
):
    """The upsert path (re-ingest into a loaded table)."""
    folder = sample_copy("original")
    _stamp(folder, OLD)
    run_ingest(clean_db, settings, str(folder))
    user, isbn, from_file = _a_file_rating(clean_db)
    from_api = (from_file + 1) % 11
    Catalog(settings).record_rating(user, isbn, from_api)

    report = run_ingest(clean_db, settings, str(folder))  # the same, older file again
    assert_accounted(report)
    assert tuple(_rating(clean_db, user, isbn)) == (from_api, "api")
    assert report["files"]["ratings"]["updated"] == 0
    files = _last_run_files(clean_db)
    assert files["ratings"]["api_kept"] == 1
    assert datetime.fromisoformat(files["ratings"]["modified_at"]).timestamp() == OLD

    _stamp(folder, time.time() + 3600)  # the file is now newer than the API's rating
    report = run_ingest(clean_db, settings, str(folder))
    assert_accounted(report)
    assert tuple(_rating(clean_db, user, isbn)) == (from_file, "ingest")
    assert report["files"]["ratings"]["updated"] == 1
    assert _last_run_files(clean_db)["ratings"]["api_kept"] == 0


@pytest.mark.parametrize("file_is_newer", [False, True], ids=["older_file", "newer_file"])
def test_first_big_load_over_api_ratings_follows_the_same_rule(
    clean_db, settings, sample_copy, file_is_newer
):
    """The merge path (a load that more than doubles the table is merged into a twin)."""
    folder = sample_copy("original")
    _stamp(folder, OLD)
    run_ingest(clean_db, settings, str(folder))
    user, isbn, from_file = _a_file_rating(clean_db)
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE ratings"))
    from_api = (from_file + 1) % 11
    Catalog(settings).record_rating(user, isbn, from_api)
    if file_is_newer:
        _stamp(folder, time.time() + 3600)

    report = run_ingest(clean_db, settings, str(folder))
    assert_accounted(report)
    ratings = report["files"]["ratings"]
    assert (
        ratings["inserted"] == ratings["rows_read"] - ratings["merged"] - ratings["quarantined"] - 1
    )
    if file_is_newer:
        assert tuple(_rating(clean_db, user, isbn)) == (from_file, "ingest")
        assert ratings["updated"] == 1
    else:
        assert tuple(_rating(clean_db, user, isbn)) == (from_api, "api")
        assert ratings["updated"] == 0 and ratings["unchanged"] == 1


def test_migration_0005_adds_its_columns_and_keeps_every_row(empty_database_url):
    from bookrec import db

    engine = sa.create_engine(empty_database_url)
    try:
        db.upgrade(engine, "0006")
        with engine.begin() as conn:
            run = conn.execute(
                sa.text(
                    "INSERT INTO ingest_runs (started_at, finished_at, source, layout, counts, "
                    "duration_s) VALUES (now(), now(), 's', 'original', '{}', 1) RETURNING id"
                )
            ).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO quarantine (run_id, source_file, kind, line_number, raw, reason) "
                    "VALUES (:r, 'f', 'books', 2, 'x', 'isbn_missing')"
                ),
                {"r": run},
            )
        db.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT raw, raw_format FROM quarantine")).one() == (
                "x",
                "text",
            )
            assert conn.execute(sa.text("SELECT files FROM ingest_runs")).scalar_one() is None
        db.downgrade(engine, "0006")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT raw, reason FROM quarantine")).one() == (
                "x",
                "isbn_missing",
            )
    finally:
        engine.dispose()
