"""Helpers for ingest tests: copies of the sample to damage, and a database fingerprint."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import SAMPLE_DIR

TABLE_ORDER = {
    "books": "isbn",
    "users": "user_id",
    "ratings": "user_id, isbn",
    "quarantine": "id",
    "ingest_runs": "id",
}


def db_fingerprint(engine: sa.engine.Engine) -> dict[str, tuple[int, str]]:
    """Row count and an md5 of every row of every ingest table: equal means untouched."""
    out = {}
    with engine.connect() as conn:
        for table, order in TABLE_ORDER.items():
            out[table] = tuple(
                conn.execute(
                    sa.text(
                        f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY {order})), '') "
                        f"FROM {table} t"
                    )
                ).one()
            )
    return out


def read_gz_text(path: Path, encoding: str) -> str:
    """Decompressed text of a sample file."""
    return gzip.decompress(path.read_bytes()).decode(encoding)


def write_gz_text(path: Path, text: str, encoding: str) -> None:
    """Write ``text`` gzipped."""
    path.write_bytes(gzip.compress(text.encode(encoding)))


@pytest.fixture
def sample_copy(tmp_path: Path):
    """A writable copy of one layout of the bundled sample."""

    def make(layout: str = "original") -> Path:
        target = tmp_path / f"sample-{layout}"
        shutil.copytree(SAMPLE_DIR / layout, target)
        return target

    return make
