"""Ingest against the real PostgreSQL: accounting, idempotency, updates, bad files, S3."""

from __future__ import annotations

import gzip
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec import textscan
from bookrec.cleaning import normalize_isbn
from bookrec.ingest import clean_path, run_ingest
from bookrec.sources import IngestFileError
from tests.conftest import SAMPLE_DIR
from tests.ingest.conftest import db_fingerprint, read_gz_text, write_gz_text

OUTCOMES = ("inserted", "updated", "unchanged", "merged", "quarantined")


def assert_accounted(report: dict) -> None:
    """Every row read ends in exactly one outcome, and the reasons add up."""
    assert set(report["files"]) == {"books", "ratings", "users"}
    for kind, counts in report["files"].items():
        assert counts["rows_read"] > 0, kind
        assert sum(counts[o] for o in OUTCOMES) == counts["rows_read"], (kind, counts)
        assert sum(counts["reasons"].values()) == counts["quarantined"], (kind, counts)


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_sample_is_fully_accounted_and_loaded(clean_db, settings, layout, tmp_path):
    said: list[str] = []
    report = run_ingest(clean_db, settings, str(SAMPLE_DIR / layout), spool_dir=tmp_path,
                        log=said.append)
    assert_accounted(report)
    files = report["files"]
    assert sorted(line.split(":")[0] for line in said) == ["books", "ratings", "users"]
    assert f"{files['books']['rows_read']:,} rows read" in next(x for x in said if "books" in x)
    assert list(tmp_path.iterdir()) == []  # the run's spool folder is gone
    with clean_db.connect() as conn:
        for kind in ("books", "ratings", "users"):
            stored = conn.execute(sa.text(f"SELECT count(*) FROM {kind}")).scalar_one()
            assert stored == files[kind]["inserted"], kind
        quarantined = conn.execute(sa.text("SELECT count(*) FROM quarantine")).scalar_one()
        assert quarantined == sum(c["quarantined"] for c in files.values())
        # Every quarantined row keeps its file, line, raw text and reason.
        row = conn.execute(
            sa.text(
                "SELECT source_file, line_number, raw, reason FROM quarantine "
                "WHERE reason = 'isbn_is_asin' AND kind = 'books' ORDER BY line_number LIMIT 1"
            )
        ).one()
        assert row.source_file.lower().endswith("books.csv.gz")
        assert row.line_number > 1 and "B0" in row.raw
    # the ASIN rows of the sample are quarantined, never loaded as books
    assert files["books"]["reasons"].get("isbn_is_asin", 0) >= 1


def test_dirty_rows_land_cleaned(clean_db, settings):
    run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    with clean_db.connect() as conn:

        def book(isbn):
            return conn.execute(sa.text("SELECT * FROM books WHERE isbn = :i"), {"i": isbn}).one()

        assert book("0446310786").publisher == "Little Brown & Company"
        assert book("0156528207").author == "Antoine de Saint-Exupéry"
        assert book("3404921038").publisher == "Lübbe"
        assert book("3150000335").year is None  # year 0
        assert book("0140301690").year is None  # year 2050
        assert book("0735201994").title.startswith(
            'Peterman Rides Again: Adventures Continue with the Real "J. Peterman"'
        )
        # lowercase-x duplicate merged into one row
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM books WHERE upper(isbn) = '042511774X'")
            ).scalar_one()
            == 1
        )
        user = conn.execute(sa.text("SELECT * FROM users WHERE user_id = 275081")).one()
        assert user.country == "italy" and user.city.startswith("cernusco")
        assert (
            conn.execute(sa.text("SELECT age FROM users WHERE user_id = 1579")).scalar_one() is None
        )
        # ratings: ISBNs without a book row are kept; duplicate pairs resolved by the rule
        orphan = conn.execute(
            sa.text(
                "SELECT count(*) FROM ratings r WHERE NOT EXISTS (SELECT 1 FROM books b WHERE b.isbn = r.isbn)"
            )
        ).scalar_one()
        assert orphan > 0
        rating = conn.execute(
            sa.text("SELECT rating FROM ratings WHERE user_id = 11676 AND isbn = '0142001740'")
        ).scalar_one()
        assert rating == 7  # explicit 7 ('01420.01740') beats implicit 0 ('0142001740')


def test_second_ingest_changes_nothing(clean_db, settings):
    first = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    before = db_fingerprint(clean_db)
    second = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    assert_accounted(second)
    for kind, counts in second["files"].items():
        assert counts["inserted"] == counts["updated"] == 0, kind
        assert counts["unchanged"] == first["files"][kind]["inserted"], kind
    after = db_fingerprint(clean_db)
    for table in ("books", "users", "ratings"):
        assert before[table] == after[table], table


def test_updated_file_upserts_only_what_changed(clean_db, settings, sample_copy):
    folder = sample_copy("original")
    run_ingest(clean_db, settings, str(folder))
    path = folder / "BX-Book-Ratings.csv.gz"
    lines = read_gz_text(path, "latin-1").split("\r\n")
    # change one existing rating and add one new rating
    target = next(
        i
        for i, line in enumerate(lines[1:], 1)
        if line.count(";") == 2
        and normalize_isbn(line.split(";")[1].strip('"')) == line.split(";")[1].strip('"')
    )
    user, isbn, old = (f.strip('"') for f in lines[target].split(";"))
    new_rating = (int(old) + 1) % 11
    lines[target] = f'"{user}";"{isbn}";"{new_rating}"'
    lines.insert(-1, '"999999";"0446310786";"10"')
    write_gz_text(path, "\r\n".join(lines), "latin-1")
    report = run_ingest(clean_db, settings, str(folder))
    assert_accounted(report)
    ratings = report["files"]["ratings"]
    assert (ratings["inserted"], ratings["updated"]) == (1, 1)
    assert report["files"]["books"]["inserted"] == report["files"]["books"]["updated"] == 0
    with clean_db.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT rating FROM ratings WHERE user_id = :u AND isbn = :i"),
            {"u": int(user), "i": isbn},
        ).scalar_one()
    assert stored == new_rating


def _damage(folder: Path, case: str) -> str:
    """Break the ratings file of ``folder`` in one way; return the file name."""
    path = folder / "BX-Book-Ratings.csv.gz"
    data = path.read_bytes()
    if case == "missing":
        path.unlink()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "wrong_header":
        text = read_gz_text(path, "latin-1").replace('"Book-Rating"', '"Score"', 1)
        write_gz_text(path, text, "latin-1")
    elif case == "truncated_gzip":
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_text":
        path.write_bytes(gzip.compress(b"\x00\x01\x02\xff" * 1000))
    elif case == "zip":
        path.write_bytes(gzip.compress(b"PK\x03\x04" + gzip.decompress(data)))
    elif case == "header_only":
        write_gz_text(path, '"User-ID";"ISBN";"Book-Rating"\r\n', "latin-1")
    return path.name


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "missing bx-book-ratings.csv"),
        ("empty", "is empty"),
        ("wrong_header", "wrong header"),
        ("truncated_gzip", "truncated or corrupt gzip"),
        ("not_text", "not a text file"),
        ("zip", "not a text file (a zip archive)"),
        ("header_only", "no data rows"),
    ],
)
def test_bad_file_leaves_database_untouched(clean_db, settings, sample_copy, case, message):
    run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))
    before = db_fingerprint(clean_db)
    folder = sample_copy("original")
    name = _damage(folder, case)
    # a changed books file in the same batch must not land either
    books = folder / "BX-Books.csv.gz"
    write_gz_text(books, read_gz_text(books, "latin-1").replace("Harper Lee", "H. Lee"), "latin-1")
    with pytest.raises(IngestFileError) as info:
        run_ingest(clean_db, settings, str(folder))
    text = str(info.value)
    assert message in text
    if case != "missing":
        assert name in text
    if case == "wrong_header":
        assert ":1:" in text
    assert db_fingerprint(clean_db) == before


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_byte_faults_are_quarantined_losslessly_and_the_rest_loads(
    clean_db, settings, sample_copy, layout, gz
):
    """A NUL byte, an invalid byte sequence (UTF-8 only: latin-1 assigns every byte), a
    field over 64 KB and a 1 MB line each cost their own row only."""
    folder = sample_copy(layout)
    encoding = "latin-1" if layout == "original" else "utf-8"
    name = "BX-Books.csv" if layout == "original" else "Books.csv"
    data = gzip.decompress((folder / f"{name}.gz").read_bytes())
    end = b"\r\n" if layout == "original" else b"\n"
    lines = data.split(end)
    rows_read = clean_path(folder / f"{name}.gz", "books", layout, name).rows_read
    delimiter = b";" if layout == "original" else b","
    faults = {
        3: (b"Nul\x00Title", "nul_byte"),
        5: (b"Caf\xe9", "invalid_encoding" if layout == "kaggle" else None),
        7: (b"x" * 70_000, "field_too_long"),
        9: (b"y" * (1 << 20), "line_too_long"),
    }
    originals = {}
    for line_number, (title, _) in faults.items():
        fields = lines[line_number - 1].split(delimiter)
        fields[1] = b'"' + title + b'"'
        lines[line_number - 1] = originals[line_number] = delimiter.join(fields)
    (folder / f"{name}.gz").unlink()
    payload = end.join(lines)
    (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(payload) if gz else payload)

    report = run_ingest(clean_db, settings, str(folder))
    assert_accounted(report)
    books = report["files"]["books"]
    expected = {reason for _, reason in faults.values() if reason}
    assert set(books["reasons"]) >= expected
    with clean_db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT line_number, raw, raw_format, reason FROM quarantine "
                "WHERE kind = 'books' AND line_number IN (3, 5, 7, 9)"
            )
        ).all()
        stored = conn.execute(sa.text("SELECT count(*) FROM books")).scalar_one()
    assert stored == books["inserted"]
    assert books["rows_read"] == rows_read
    by_line = {row.line_number: row for row in rows}
    for line_number, (_, reason) in faults.items():
        if reason is None:
            assert line_number not in by_line  # loaded as the latin-1 text it is
            continue
        row = by_line[line_number]
        assert row.reason.split(":")[0] == reason
        if row.raw_format == "escaped":
            assert textscan.unescape(row.raw, encoding) == originals[line_number]
        else:
            assert row.raw.encode(encoding) == originals[line_number]


def test_malformed_rows_are_quarantined_with_line_numbers(clean_db, settings, sample_copy):
    folder = sample_copy("original")
    path = folder / "BX-Users.csv.gz"
    text = read_gz_text(path, "latin-1")
    text += '"999999";"too, many";"fields";"here"\r\n"abc";"nowhere";NULL\r\n'
    write_gz_text(path, text, "latin-1")
    report = run_ingest(clean_db, settings, str(folder))
    assert_accounted(report)
    users = report["files"]["users"]
    assert users["reasons"] == {"invalid_user_id": 1, "wrong_field_count": 1}
    with clean_db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT line_number, raw, reason FROM quarantine WHERE kind = 'users' ORDER BY line_number"
            )
        ).all()
    physical_lines = text.count("\n")
    assert [r.line_number for r in rows] == [physical_lines - 1, physical_lines]
    assert rows[0].raw == '"999999";"too, many";"fields";"here"'
    assert rows[0].reason.startswith("wrong_field_count")


def test_layout_detection_and_forcing(clean_db, settings, tmp_path):
    with pytest.raises(IngestFileError, match="missing"):
        run_ingest(clean_db, settings, str(tmp_path))
    report = run_ingest(clean_db, settings, str(SAMPLE_DIR / "kaggle"), layout="kaggle")
    assert report["layout"] == "kaggle"
    assert_accounted(report)


def test_s3_source_through_moto(clean_db, settings, moto_server, s3_bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    for path in (SAMPLE_DIR / "original").iterdir():
        if path.suffix == ".gz":
            client.upload_file(str(path), s3_bucket, f"drops/2004/{path.name}")
    s3_settings = settings.model_copy(update={"s3_endpoint_url": moto_server})
    local = run_ingest(clean_db, s3_settings, str(SAMPLE_DIR / "original"))
    remote = run_ingest(clean_db, s3_settings, f"s3://{s3_bucket}/drops/2004")
    assert_accounted(remote)
    # the object's LastModified is the file time that decides against API ratings
    head = client.head_object(Bucket=s3_bucket, Key="drops/2004/BX-Book-Ratings.csv.gz")
    with clean_db.connect() as conn:
        files = conn.execute(
            sa.text("SELECT files FROM ingest_runs ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    assert files["ratings"]["modified_at"] == head["LastModified"].astimezone(UTC).isoformat()
    for kind, counts in remote["files"].items():
        assert counts["unchanged"] == local["files"][kind]["inserted"], kind


def test_unreadable_s3_source_is_a_clear_error(clean_db, settings, moto_server):
    s3_settings = settings.model_copy(update={"s3_endpoint_url": moto_server})
    before = db_fingerprint(clean_db)
    with pytest.raises(IngestFileError, match="s3://no-such-bucket"):
        run_ingest(clean_db, s3_settings, "s3://no-such-bucket/x")
    assert db_fingerprint(clean_db) == before
