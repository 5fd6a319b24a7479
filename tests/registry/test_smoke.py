"""The serving smoke test, run as its own process on real (small) models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bookrec import smoke
from tests.utils.frames import GOLDEN_ISBNS, GOLDEN_USERS
from tests.utils.versions import make_version_folder, model_metrics


def test_smoke_answers_the_golden_queries(save_hybrid) -> None:
    folder = save_hybrid("v1", model_metrics(0.1))
    report = smoke.run_smoke(folder)
    assert report["ok"], report
    assert report["version"] == "v1"
    assert report["known"] == {"users": len(GOLDEN_USERS), "isbns": len(GOLDEN_ISBNS)}
    answers = report["answers"]
    assert set(answers["recommend"]) == {str(u) for u in GOLDEN_USERS}
    assert all(len(rows) == 10 for rows in answers["recommend"].values())
    assert {r["source"] for rows in answers["recommend"].values() for r in rows} <= {
        "cf",
        "content",
        "popular",
    }
    assert any(r["source"] == "cf" for rows in answers["recommend"].values() for r in rows)
    (unknown,) = answers["unknown_users"].values()
    assert {r["source"] for r in unknown} == {"popular"}
    assert all(isbn not in {r["isbn"] for r in answers["similar"][isbn]} for isbn in GOLDEN_ISBNS)
    assert report["queries"] == 1 + 5 + 1 + 5 + 1
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["peak_rss_mb"] > 10
    assert report["answers_sha256"] == smoke.answers_sha256(answers)


def test_same_model_same_answers_other_model_other_answers(save_hybrid) -> None:
    a1 = smoke.run_smoke(save_hybrid("a", model_metrics(0.1), which=0))
    a2 = smoke.run_smoke(save_hybrid("a-copy", model_metrics(0.1), which=0))
    b = smoke.run_smoke(save_hybrid("b", model_metrics(0.1), which=1))
    assert a1["answers_sha256"] == a2["answers_sha256"] != b["answers_sha256"]


def test_tampered_or_foreign_folders_fail(save_hybrid, tmp_path: Path) -> None:
    folder = save_hybrid("v1", model_metrics(0.1))
    victim = sorted(folder.glob("*.npy"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    report = smoke.run_smoke(folder)
    assert not report["ok"] and "checksum mismatch" in report["error"]
    foreign = make_version_folder(tmp_path / "f", "x")
    report = smoke.run_smoke(foreign)
    assert not report["ok"] and "expected 'hybrid'" in report["error"]


def test_timeout_and_crash_become_failed_reports(save_hybrid, tmp_path: Path) -> None:
    folder = save_hybrid("v1", model_metrics(0.1))
    report = smoke.run_smoke(folder, timeout_s=0.05)
    assert report == {"folder": str(folder), "ok": False, "error": "timed out after 0.05 s"}
    report = smoke.run_smoke(tmp_path / "missing")
    assert not report["ok"] and "no manifest.json" in report["error"]


def test_golden_file_is_validated_and_used(save_hybrid, tmp_path: Path) -> None:
    folder = save_hybrid("v1", model_metrics(0.1))
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"users": [GOLDEN_USERS[0]], "isbns": [], "k": 3}))
    report = smoke.run_smoke(folder, golden_file=golden)
    assert report["ok"] and list(report["answers"]["recommend"]) == [str(GOLDEN_USERS[0])]
    assert len(report["answers"]["recommend"][str(GOLDEN_USERS[0])]) == 3
    golden.write_text(json.dumps({"users": ["abc"]}))
    proc = subprocess.run(
        [sys.executable, "-m", "bookrec.smoke", str(folder), "--golden", str(golden)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert f"{golden}: 'users' must be a list of integer user ids" in error
    golden.write_text(json.dumps({"unknown_users": [GOLDEN_USERS[0]]}))
    report = smoke.run_smoke(folder, golden_file=golden)
    assert not report["ok"] and "golden set as unknown" in report["error"]


def test_answers_that_change_between_passes_are_refused(save_hybrid) -> None:
    from bookrec.models.persist import load_model

    model = load_model(save_hybrid("v1", model_metrics(0.1)))
    fields = smoke.answer_and_time(
        model, smoke.DEFAULT_GOLDEN | {"users": GOLDEN_USERS, "isbns": GOLDEN_ISBNS}
    )
    assert fields["latency_ms"]["cold_max"] > 0
    assert fields["latency_ms"]["p50"] <= fields["latency_ms"]["p99"] <= fields["latency_ms"]["max"]
    assert 0 <= fields["cpu_ms"]["p50"] <= fields["cpu_ms"]["p99"]

    calls = {"n": 0}
    recommend = model.recommend

    def drifting(user_id, k=10):  # the second pass gets a shorter list
        calls["n"] += 1
        return recommend(user_id, k if calls["n"] <= len(GOLDEN_USERS) + 1 else k - 1)

    model.recommend = drifting
    with pytest.raises(smoke.SmokeError, match="different answers on a second pass"):
        smoke.answer_and_time(
            model, smoke.DEFAULT_GOLDEN | {"users": GOLDEN_USERS, "isbns": GOLDEN_ISBNS}
        )


def test_peak_rss_is_the_smoke_process_own(save_hybrid) -> None:
    """A parent with a large peak must not pass it on to the report (ru_maxrss would)."""
    folder = save_hybrid("v1", model_metrics(0.1))
    code = (
        "import json, sys; ballast = bytearray(600 * 2**20); ballast[::4096] = b'x' * len(ballast[::4096]);"
        "from bookrec import smoke; print(json.dumps(smoke.run_smoke(sys.argv[1])['peak_rss_mb']))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                         check=True).stdout
    assert 10 < float(out.strip().splitlines()[-1]) < 500
