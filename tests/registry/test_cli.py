"""``bookrec models|promote|rollback``: JSON shapes and exit codes, run through the real flows."""

from __future__ import annotations

import json

import pytest

from bookrec.registry import Registry
from bookrec.settings import get_settings
from cli.main import main
from tests.utils.versions import model_metrics


@pytest.fixture(autouse=True)
def _no_serving_instance(flow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """No API runs in these tests: the reload flow has no instance to call."""
    monkeypatch.setenv("BOOKREC_SERVING_URLS", "")
    get_settings.cache_clear()


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_models_promote_rollback_json(
    reg: Registry, save_hybrid, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--json"]) == 0
    assert _json(capsys) == []
    reg.add_version(save_hybrid("v1", model_metrics(0.10), which=0), "v1")
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")

    assert main(["promote", "v1", "--json"]) == 0
    out = _json(capsys)
    assert set(out) == {"candidate", "decision", "reason", "champion", "reload"}
    assert (out["candidate"], out["decision"], out["champion"]) == ("v1", "promoted", "v1")
    assert out["reload"] == {"status": "ok", "instances": {},
                             "summary": "no serving instance configured"}

    assert main(["promote", "--json"]) == 0  # default: the newest unpromoted version
    assert _json(capsys)["candidate"] == "v2"

    reg.add_version(save_hybrid("v3", model_metrics(0.01), which=0), "v3")
    assert main(["promote", "--json"]) == 0  # a rejection is a decision: exit 0
    out = _json(capsys)
    assert (out["candidate"], out["decision"], out["champion"]) == ("v3", "rejected", "v2")

    assert main(["models", "--json"]) == 0
    rows = _json(capsys)
    assert [(r["version"], r["status"], r["champion"]) for r in rows] == [
        ("v3", "rejected", False), ("v2", "champion", True), ("v1", "promoted", False)]
    assert all(set(r) == {"version", "status", "champion", "metrics"} for r in rows)
    assert rows[1]["metrics"]["ndcg@20"] == 0.12

    assert main(["rollback", "--json"]) == 0
    out = _json(capsys)
    assert set(out) == {"target", "decision", "reason", "champion", "reload"}
    assert (out["target"], out["decision"], out["champion"]) == ("v1", "rolled back", "v1")

    assert main(["rollback", "--json"]) == 1  # nothing before v1: refused
    out = _json(capsys)
    assert (out["decision"], out["champion"], out["exit_code"]) == ("refused", "v1", 1)
    assert out["error"] == f"refused: {out['reason']}"
    assert "no earlier promoted version" in out["reason"]
    assert main(["promote", "nope", "--json"]) == 1
    assert _json(capsys)["decision"] == "refused"


def test_human_output(reg: Registry, save_hybrid, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "no model versions" in capsys.readouterr().out
    reg.add_version(save_hybrid("v1", model_metrics(0.04, popular=0.05)), "v1")
    assert main(["promote"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rejected: v1 (champion: none)") and "must beat most_popular" in out
    assert main(["models"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:2] == ["v1", "rejected"] and "ndcg@20=0.0400" in line
    assert main(["rollback"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # the error is the last line on stderr (after Prefect's logs here)
    assert captured.err.splitlines()[-1].startswith("bookrec rollback: error: refused: ")
