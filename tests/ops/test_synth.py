"""The synthetic Book-Crossing generator (bench/synth.py) on the bundled sample: it scales
rows, keeps the degree distributions and implicit-zero share, keeps every dirty pattern
(the real ingest quarantines and merges exactly SCALE times as much), and is seeded."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from bench import synth
from bookrec.cleaning import normalize_isbn
from bookrec.ingest import run_ingest
from tests.conftest import SAMPLE_DIR

ORIGINAL = dict(sep=";", quotechar='"', escapechar="\\", doublequote=False, encoding="latin-1")


def _ratings(folder: Path) -> pd.DataFrame:
    return pd.read_csv(
        folder / "BX-Book-Ratings.csv.gz", dtype=str, keep_default_na=False, **ORIGINAL
    )


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth3")
    synth.write(SAMPLE_DIR / "original", out, "original", scale=3, cross=0.3, seed=7)
    return out


def test_degrees_and_zero_share_are_kept(scaled):
    real, fake = _ratings(SAMPLE_DIR / "original"), _ratings(scaled)
    assert len(fake) == 3 * len(real)
    # Reader degrees: the multiset repeats exactly once per copy.
    real_deg = Counter(real["User-ID"].value_counts().tolist())
    fake_deg = Counter(fake["User-ID"].value_counts().tolist())
    assert fake_deg == Counter({d: 3 * n for d, n in real_deg.items()})
    # Rating values (and so the share of implicit zeros) are the real ones, three times.
    assert Counter(fake["Book-Rating"]) == Counter(
        {v: 3 * n for v, n in Counter(real["Book-Rating"]).items()}
    )
    # Books: three times the distinct normalised keys, and each book's degree on average the same.
    real_isbn = real["ISBN"].map(normalize_isbn).dropna()
    fake_isbn = fake["ISBN"].map(normalize_isbn).dropna()
    # (a book whose few ratings all went to other copies is unrated in its own copy)
    assert 0.85 * 3 * real_isbn.nunique() <= fake_isbn.nunique() <= 3 * real_isbn.nunique()
    real_books = pd.read_csv(SAMPLE_DIR / "original" / "BX-Books.csv.gz", dtype=str, **ORIGINAL)
    fake_books = pd.read_csv(scaled / "BX-Books.csv.gz", dtype=str, **ORIGINAL)
    assert (
        fake_books["ISBN"].map(normalize_isbn).nunique()
        == 3 * real_books["ISBN"].map(normalize_isbn).nunique()
    )
    assert fake_isbn.value_counts().max() <= 2 * real_isbn.value_counts().max()
    # The copies are connected: some ratings of a copy's reader point to another copy's book.
    users = fake["User-ID"].astype(int) // synth.USER_STRIDE
    real_keys = set(real_isbn)
    own = fake_isbn[users[fake_isbn.index] == 0].isin(real_keys)
    others = fake_isbn[users[fake_isbn.index] > 0].isin(real_keys)
    assert 0.55 < own.mean() < 0.85 and 0.05 < others.mean() < 0.30


def test_same_seed_same_bytes_other_seed_other_keys(scaled, tmp_path):
    again = tmp_path / "again"
    synth.write(SAMPLE_DIR / "original", again, "original", scale=3, cross=0.3, seed=7)
    for name in ("BX-Books.csv.gz", "BX-Book-Ratings.csv.gz", "BX-Users.csv.gz"):
        assert (again / name).read_bytes() == (scaled / name).read_bytes(), name
    other = tmp_path / "other"
    synth.write(SAMPLE_DIR / "original", other, "original", scale=3, cross=0.3, seed=8)
    assert (other / "BX-Books.csv.gz").read_bytes() != (scaled / "BX-Books.csv.gz").read_bytes()


def test_key_shapes_survive():
    mapper = synth.KeyMapper({42511774, 44631078}, copies=2, seed=0)
    # a lowercase check digit stays lowercase, junk around the key stays, validity is kept
    new = mapper(b"042511774x", 1).decode()
    assert new[-1] == "x" or new[-1].isdigit()
    assert normalize_isbn(new) is not None and normalize_isbn(new) != "042511774X"
    assert mapper(b"0446310786<90", 1).endswith(b"<90")
    assert normalize_isbn(mapper(b"0446310786", 1).decode()) is not None
    # an invalid check digit stays invalid; a malformed string stays malformed
    assert normalize_isbn(mapper(b"0446310787", 1).decode()) is None
    assert normalize_isbn(mapper(b"B00009ANY9", 1).decode()) is None
    assert mapper(b"0446310786", 0) == b"0446310786"


@pytest.mark.slow
def test_ingest_sees_every_dirty_pattern_scale_times(clean_db, settings, scaled, tmp_path):
    """The real ingest on the 3x files: every count of the report (rows read, merged
    duplicates, quarantine reasons) is three times the count on the sample itself."""
    one = run_ingest(clean_db, settings, str(SAMPLE_DIR / "original"))["files"]
    with clean_db.begin() as conn:
        conn.exec_driver_sql("TRUNCATE books, ratings, users, quarantine, ingest_runs")
    three = run_ingest(clean_db, settings, str(scaled))["files"]
    for kind in ("books", "ratings", "users"):
        assert three[kind]["rows_read"] == 3 * one[kind]["rows_read"], kind
        assert three[kind]["quarantined"] == 3 * one[kind]["quarantined"], kind
        assert three[kind]["merged"] == 3 * one[kind]["merged"], kind
        assert three[kind]["reasons"] == {r: 3 * n for r, n in one[kind]["reasons"].items()}, kind


def test_kaggle_layout_round_trips_at_scale_one(tmp_path):
    out = tmp_path / "k1"
    synth.write(SAMPLE_DIR / "kaggle", out, "kaggle", scale=1, cross=0.3, seed=0)
    for name in ("Books.csv.gz", "Ratings.csv.gz", "Users.csv.gz"):
        assert gzip.decompress((out / name).read_bytes()) == gzip.decompress(
            (SAMPLE_DIR / "kaggle" / name).read_bytes()
        ), name
