"""The ingest flow under Prefect's test harness, and the ``bookrec ingest`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.conftest import REPO, SAMPLE_DIR
from tests.ingest.conftest import db_fingerprint

OUTCOMES = ("inserted", "updated", "unchanged", "merged", "quarantined")


@pytest.fixture
def flow_env(settings, monkeypatch):
    """Point the flow's get_settings() at the test database and artifact folder."""
    from bookrec.settings import get_settings

    monkeypatch.setenv("BOOKREC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("BOOKREC_HOME", str(settings.home))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_flow_loads_sample_and_publishes_report(prefect_harness, clean_db, flow_env):
    from prefect.client.orchestration import get_client

    from flows.ingest import ingest_flow

    state = ingest_flow(source=str(SAMPLE_DIR / "original"), return_state=True)
    assert state.is_completed()
    report = state.result()
    for counts in report["files"].values():
        assert sum(counts[o] for o in OUTCOMES) == counts["rows_read"]
    with clean_db.connect() as conn:
        runs = conn.execute(sa.text("SELECT count(*) FROM ingest_runs")).scalar_one()
    assert runs == 1

    async def artifacts():
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["ingest-report", "ingest-summary"])
                )
            )

    import asyncio

    found = asyncio.run(artifacts())
    kinds = {a.key: a.type for a in found}
    assert kinds.get("ingest-report") == "table"
    assert kinds.get("ingest-summary") == "markdown"
    summary = next(a for a in found if a.key == "ingest-summary")
    assert "quarantined" in summary.data


@pytest.mark.parametrize(
    ("case", "message"), [("missing", "missing"), ("users_header", "wrong header")]
)
def test_flow_fails_on_bad_file_and_leaves_tables_and_no_stage_schema(
    prefect_harness, clean_db, flow_env, tmp_path, sample_copy, case, message
):
    """A missing file stops the run before anything is staged; a bad users file is found
    while books and ratings are being staged. Either way the tables stay as they were and
    the run's stage schema is gone."""
    from bookrec.sources import IngestFileError
    from flows.ingest import ingest_flow
    from tests.ingest.conftest import read_gz_text, write_gz_text

    folder = tmp_path
    if case == "users_header":
        folder = sample_copy("original")
        users = folder / "BX-Users.csv.gz"
        text = read_gz_text(users, "latin-1")
        write_gz_text(users, text.replace('"User-ID"', '"Reader"', 1), "latin-1")
    before = db_fingerprint(clean_db)
    state = ingest_flow(source=str(folder), return_state=True)
    assert state.is_failed()
    with pytest.raises(IngestFileError, match=message):
        state.result()
    assert db_fingerprint(clean_db) == before
    with clean_db.connect() as conn:
        stages = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bookrec\\_stage\\_%'")
        ).scalar_one()
    assert stages == 0


def _bookrec(args, settings, tmp_path):
    """Run the command in a fresh process against the harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "BOOKREC_DATABASE_URL": settings.database_url,
        "BOOKREC_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_ingest_json_and_bad_source(prefect_harness, clean_db, settings, tmp_path):
    done = _bookrec(["ingest", str(SAMPLE_DIR / "kaggle"), "--json"], settings, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert set(report) == {"files", "duration_s"}
    for kind, counts in report["files"].items():
        assert set(counts) == {"rows_read", *OUTCOMES, "reasons"}, kind
        assert sum(counts[o] for o in OUTCOMES) == counts["rows_read"], kind

    failed = _bookrec(["ingest", str(tmp_path / "nowhere")], settings, tmp_path)
    assert failed.returncode != 0
    assert "nowhere" in failed.stderr and "Traceback" not in failed.stderr.splitlines()[-1]
