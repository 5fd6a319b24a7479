"""The nightly flow's failure path under Prefect's test harness: a failing stage fails the
run with its own error and first sends NightlyFailed=1 for the CloudWatch alarm."""

from __future__ import annotations

import json

import pytest

from bookrec.settings import get_settings


@pytest.fixture
def emf_settings(monkeypatch, tmp_path, database_url):
    monkeypatch.setenv("BOOKREC_CLOUDWATCH_METRICS", "emf")
    monkeypatch.setenv("BOOKREC_HOME", str(tmp_path / "home"))
    # the session database: without one the flow would start an embedded PostgreSQL under
    # the home folder and leave it running after the tests
    monkeypatch.setenv("BOOKREC_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_failed_stage_fails_the_run_and_counts_the_failure(
    prefect_harness, emf_settings, tmp_path, capsys
):
    from flows.nightly import nightly_flow

    missing = tmp_path / "no-such-drop"
    state = nightly_flow(source=str(missing), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert str(missing) in str(error)  # the stage's own error, naming the source
    lines = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('{"') and '"_aws"' in line
    ]
    assert len(lines) == 1
    (doc,) = lines
    assert doc["NightlyFailed"] == 1 and doc["NightlySucceeded"] == 0
    assert doc["NightlySeconds"] >= 0
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == emf_settings.cloudwatch_namespace


def test_run_name_says_what_ran(prefect_harness):
    from prefect.runtime import flow_run

    from flows.nightly import _run_name

    # Outside a run there is no source: the name says it trains on the database snapshot.
    assert flow_run.get_parameters() == {}
    assert _run_name().startswith("nightly-db-snapshot-")
