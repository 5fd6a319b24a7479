"""The accounting invariant on the full Book-Crossing files (slow: run with -m slow)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bookrec.ingest import run_ingest
from tests.conftest import SHARED_DATA
from tests.ingest.test_ingest_db import assert_accounted

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_full_data_every_row_accounted(clean_db, settings, layout):
    folder = SHARED_DATA / layout
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here")
    report = run_ingest(clean_db, settings, str(folder))
    assert_accounted(report)
    files = report["files"]
    assert files["ratings"]["rows_read"] == 1_149_780
    assert files["users"]["rows_read"] == 278_858
    expected_books = 271_379 if layout == "original" else 271_360
    assert files["books"]["rows_read"] == expected_books
    # only ASINs and junk keys are refused among the books
    assert files["books"]["quarantined"] < 200
    with clean_db.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM ratings")).scalar_one()
            == (files["ratings"]["inserted"])
        )
    second = run_ingest(clean_db, settings, str(folder))
    for kind, counts in second["files"].items():
        assert counts["inserted"] == counts["updated"] == 0, kind
