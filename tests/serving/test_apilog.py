"""The API log writer: never fails a request over a field it cannot encode, and keeps its
queue bounded and its lines when PostgreSQL is down."""

from __future__ import annotations

import json
import logging

import sqlalchemy as sa

from bookrec.settings import Settings
from serving.apilog import ApiLogWriter
from serving.metrics import Metrics
from tests.utils.serving import metric_total


def test_an_unencodable_log_field_is_replaced_not_raised(monkeypatch, caplog):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    writer = ApiLogWriter(Settings(), Metrics(), engine=None)
    with caplog.at_level(logging.INFO, logger="bookrec.api"):
        writer.record({"request_id": "r-1", "path": "/v1/books/\udc80x", "status": 400})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bookrec.api"]
    assert lines[0]["request_id"] == "r-1" and lines[0]["path"] == "/v1/books/?x"


def test_a_full_queue_and_a_down_database_drop_and_count_but_keep_the_lines(monkeypatch, caplog):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    down = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none")
    writer = ApiLogWriter(Settings(api_log_batch_size=2), metrics, lambda: down)
    monkeypatch.setattr(writer, "max_queue", 3)
    with caplog.at_level(logging.INFO):
        for n in range(5):
            writer.record({"request_id": f"r-{n}", "path": "/livez", "status": 200})
        assert writer.flush() == 0  # three queued rows in two batches: one attempt, all dropped
    logged = [json.loads(r.getMessage())["request_id"] for r in caplog.records
              if r.name == "bookrec.api"]
    assert logged == [f"r-{n}" for n in range(5)]  # every line once, rows or not
    assert [r.getMessage() for r in caplog.records if r.name == "serving.batchwriter"] == [
        "api-log-writer: dropped 3 records (OperationalError)"]
    text = metrics.exposition()[0].decode()
    assert metric_total(text, "bookrec_api_log_records_dropped_total") == 5
    assert metric_total(text, "bookrec_api_log_records_written_total") == 0
