"""The API log writer never fails a request over a field it cannot encode."""

from __future__ import annotations

import json
import logging

from bookrec.settings import Settings
from serving.apilog import ApiLogWriter
from serving.metrics import Metrics


def test_an_unencodable_log_field_is_replaced_not_raised(monkeypatch, caplog):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    writer = ApiLogWriter(Settings(), Metrics(), engine=None)
    with caplog.at_level(logging.INFO, logger="bookrec.api"):
        writer.record({"request_id": "r-1", "path": "/v1/books/\udc80x", "status": 400})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bookrec.api"]
    assert lines[0]["request_id"] == "r-1" and lines[0]["path"] == "/v1/books/?x"
