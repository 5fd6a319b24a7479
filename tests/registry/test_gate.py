"""The gate's pure checks: thresholds on both sides of every limit."""

from __future__ import annotations

import pytest

from bookrec import gate
from bookrec.gate import Thresholds


def _m(ndcg: float, coverage: float = 0.2, popular: float | None = 0.05) -> dict:
    metrics: dict = {"ndcg@20": ndcg, "coverage@20": coverage}
    if popular is not None:
        metrics["baselines"] = {"most_popular": {"ndcg@20": popular}}
    return metrics


def _decision(candidate: dict, champion: dict | None, **overrides: object) -> gate.GateResult:
    t = Thresholds.from_mapping(overrides)
    return gate.decide(gate.check_metrics(candidate, champion, t))


@pytest.mark.parametrize(
    ("candidate", "champion", "decision"),
    [
        (0.1000, 0.1000, "promoted"),  # equal
        (0.0991, 0.1000, "promoted"),  # -0.9 %: inside the 1 % allowance
        (0.0990, 0.1000, "promoted"),  # exactly -1 %
        (0.0989, 0.1000, "rejected"),  # -1.1 %
        (0.0500, 0.1000, "rejected"),
        (0.2000, 0.1000, "promoted"),
    ],
)
def test_relative_drop_threshold(candidate: float, champion: float, decision: str) -> None:
    result = _decision(_m(candidate), _m(champion))
    assert result.decision == decision
    if decision == "rejected":
        assert "may not drop more than 1.00%" in result.reason


def test_relative_drop_is_configurable() -> None:
    assert _decision(_m(0.097), _m(0.1)).decision == "rejected"
    assert _decision(_m(0.097), _m(0.1), max_relative_drop=0.05).decision == "promoted"


def test_coverage_floor_both_sides() -> None:
    assert _decision(_m(0.2, coverage=0.05), _m(0.1), coverage_floor=0.05).decision == "promoted"
    result = _decision(_m(0.2, coverage=0.049), _m(0.1), coverage_floor=0.05)
    assert result.decision == "rejected" and "coverage@20 0.0490, floor 0.0500" in result.reason


def test_first_model_must_beat_most_popular() -> None:
    assert _decision(_m(0.051, popular=0.05), None).decision == "promoted"
    tie = _decision(_m(0.05, popular=0.05), None)
    assert tie.decision == "rejected" and "first model" in tie.reason
    assert _decision(_m(0.04, popular=0.05), None).decision == "rejected"
    lift = _decision(_m(0.054, popular=0.05), None, min_lift_over_baseline=0.1)
    assert lift.decision == "rejected" and "by 10%" in lift.reason
    missing = _decision(_m(0.3, popular=None), None)
    assert missing.decision == "rejected" and "no most_popular baseline" in missing.reason


def test_baseline_spellings_and_row_lists() -> None:
    rows = {"ndcg@20": 0.1, "coverage@20": 0.1,
            "baselines": [{"model": "popular", "ndcg@20": 0.05}]}
    assert _decision(rows, None).decision == "promoted"
    assert gate.baseline_metrics({"baselines": {"most-popular": {"x": 1}}}, "most_popular") == {
        "x": 1}


def test_champion_without_the_metric_falls_back_to_the_baseline() -> None:
    result = _decision(_m(0.1), {"coverage@20": 0.3})
    assert result.decision == "promoted" and "champion has no ndcg@20" in result.reason


@pytest.mark.parametrize("bad", [None, "0.3", float("nan"), float("inf"), True])
def test_missing_or_non_numeric_candidate_metric_is_rejected(bad: object) -> None:
    result = _decision({"ndcg@20": bad, "coverage@20": 0.2}, _m(0.1))
    assert result.decision == "rejected" and "no numeric 'ndcg@20'" in result.reason


def _smoke(**kw: object) -> dict:
    report = {"ok": True, "queries": 12, "latency_ms": {"p99": 10.0}, "peak_rss_mb": 300.0,
              "load_s": 0.5}
    report.update(kw)
    return report


def test_smoke_budgets_both_sides() -> None:
    t = Thresholds.from_mapping({"max_p99_ms": 10.0, "max_rss_mb": 300.0, "max_load_s": 0.5})
    assert gate.decide(gate.check_smoke(_smoke(), t)).decision == "promoted"
    slow = gate.decide(gate.check_smoke(_smoke(latency_ms={"p99": 10.1}), t))
    assert slow.decision == "rejected" and "p99 10.1 ms of CPU (wall 10.1 ms), budget 10 ms" in (
        slow.reason)
    # with CPU times in the report, the budget is on them: a busy machine's wall time is not
    busy = _smoke(latency_ms={"p99": 400.0}, cpu_ms={"p50": 2.0, "p99": 9.0})
    assert gate.decide(gate.check_smoke(busy, t)).decision == "promoted"
    costly = _smoke(latency_ms={"p99": 9.5}, cpu_ms={"p50": 2.0, "p99": 10.5})
    assert gate.decide(gate.check_smoke(costly, t)).decision == "rejected"
    fat = gate.decide(gate.check_smoke(_smoke(peak_rss_mb=301.0), t))
    assert fat.decision == "rejected" and "peak RSS 301 MB" in fat.reason
    late = gate.decide(gate.check_smoke(_smoke(load_s=0.6), t))
    assert late.decision == "rejected" and "load 0.60 s" in late.reason
    broken = gate.decide(gate.check_smoke({"ok": False, "error": "ArtifactError: x"}, t))
    assert broken.decision == "rejected" and "smoke test failed: ArtifactError: x" in broken.reason


def test_threshold_config_errors_name_the_key() -> None:
    with pytest.raises(gate.GateConfigError, match="'max_drop' is unknown"):
        Thresholds.from_mapping({"max_drop": 0.1})
    with pytest.raises(gate.GateConfigError, match="'coverage_floor' must be a number"):
        Thresholds.from_mapping({"coverage_floor": "high"})
    with pytest.raises(gate.GateConfigError, match="'max_relative_drop' must be finite"):
        Thresholds.from_mapping({"max_relative_drop": -1})
    with pytest.raises(gate.GateConfigError, match="'metric' must be a non-empty string"):
        Thresholds.from_mapping({"metric": 3})
    assert Thresholds.from_mapping({"metric": "recall@20"}).metric == "recall@20"


def test_comparison_rows_and_same_holdout() -> None:
    rows = gate.comparison_rows(_m(0.11), _m(0.1))
    ndcg = next(r for r in rows if r["metric"] == "ndcg@20")
    assert ndcg == {"metric": "ndcg@20", "candidate": 0.11, "champion": 0.1, "change": "+10.00%"}
    a = {"data_fingerprint": {"sha": "x"}, "params": {"seed": 1}}
    assert gate.same_holdout(a, dict(a))
    assert not gate.same_holdout(a, {"data_fingerprint": {"sha": "y"}, "params": {"seed": 1}})
    assert not gate.same_holdout(a, {"data_fingerprint": {"sha": "x"}, "params": {"seed": 2}})


def test_champion_metrics_come_from_the_candidates_holdout_when_scored() -> None:
    champion = {"version": "v1", "metrics": _m(0.30), "data_fingerprint": {"sha": "old"},
                "params": {"seed": 1}}
    scored = {"version": "v1", "same_recipe": False, **_m(0.10, popular=None)}
    candidate = {"version": "v2", "metrics": {**_m(0.12), "champion_same_holdout": scored},
                 "data_fingerprint": {"sha": "new"}, "params": {"seed": 1}}
    metrics, source = gate.champion_on_candidate_holdout(candidate, champion)
    assert metrics is scored and "refitted on the candidate's training split" in source
    # +20 % on the same holdout is promoted, although the recorded 0.30 came from other data
    assert _decision(candidate["metrics"], metrics).decision == "promoted"
    assert _decision(candidate["metrics"], champion["metrics"]).decision == "rejected"

    stale = {**candidate, "metrics": {**_m(0.12), "champion_same_holdout": {**scored,
                                                                            "version": "v0"}}}
    metrics, source = gate.champion_on_candidate_holdout(stale, champion)
    assert metrics == champion["metrics"] and "another snapshot" in source

    same_data = {**stale, "data_fingerprint": {"sha": "old"}}
    metrics, source = gate.champion_on_candidate_holdout(same_data, champion)
    assert metrics == champion["metrics"] and "same snapshot and split" in source

    failed = {**candidate, "metrics": {**_m(0.12), "champion_same_holdout": {
        "version": "v1", "error": "cannot rebuild the champion's recipe: x"}}}
    metrics, source = gate.champion_on_candidate_holdout(failed, champion)
    assert metrics == champion["metrics"] and "cannot rebuild" in source
    assert gate.champion_on_candidate_holdout(candidate, None) == (None, "no champion")


def test_comparison_rows_show_the_segments() -> None:
    def seg(cold: float) -> dict:
        return {"readers": {"cold": {"users": 10, "ndcg@20": cold, "recall@20": 0.2,
                                     "reachability": 0.5},
                            "heavy": {"users": 0, "ndcg@20": None}},
                "popularity": {"low": {"users": 5, "ndcg@20": 0.01, "reachability": 0.1}}}

    rows = gate.comparison_rows({**_m(0.11), "segments": seg(0.05)},
                                {**_m(0.1), "segments": seg(0.04)})
    by_name = {r["metric"]: r for r in rows}
    assert by_name["readers cold ndcg@20"]["change"] == "+25.00%"
    assert by_name["books low reachability"]["candidate"] == 0.1
    assert "readers heavy ndcg@20" not in by_name  # an empty segment has no figure
    assert [r["metric"] for r in rows].index("ndcg@20") < [r["metric"] for r in rows].index(
        "readers cold ndcg@20")


def _asked(candidate: dict, champion: dict | None, require: bool = False, **overrides: object):
    t = Thresholds.from_mapping(overrides)
    concerns = gate.approval_concerns(candidate, champion, t, require_approval=require)
    return gate.decide(gate.check_metrics(candidate, champion, t), concerns)


@pytest.mark.parametrize(
    ("candidate", "decision"),
    [
        (0.1060, "promoted"),           # +6 %
        (0.1051, "promoted"),           # +0.51 %: just outside the 0.5 % band
        (0.1005, "awaiting_approval"),  # +0.5 %: on the band's edge
        (0.1000, "awaiting_approval"),  # a tie
        (0.0995, "awaiting_approval"),  # -0.5 %
        (0.0993, "promoted"),           # -0.7 %: allowed drop, outside the band
        (0.0989, "rejected"),           # -1.1 %: a failed check wins over any concern
    ],
)
def test_close_calls_ask(candidate: float, decision: str) -> None:
    result = _asked(_m(candidate), _m(0.1000))
    assert result.decision == decision
    if decision == "awaiting_approval":
        assert "within the approval band of 0.50%" in result.reason
        assert [c.name for c in result.concerns] == ["close call"]


def test_band_is_configurable_and_first_model_has_no_band() -> None:
    assert _asked(_m(0.104), _m(0.1), approval_band=0.05).decision == "awaiting_approval"
    assert _asked(_m(0.104), _m(0.1), approval_band=0.0).decision == "promoted"
    assert _asked(_m(0.1), None).decision == "promoted"  # vs most-popular: no champion


def _seg(ndcg: float, cold: float, regular: float, heavy: float) -> dict:
    metrics = _m(ndcg)
    metrics["segments"] = {"readers": {
        name: {"ndcg@20": value, "users": 10, "reachability": 0.9}
        for name, value in (("cold", cold), ("regular", regular), ("heavy", heavy))
    }}
    return metrics


def test_a_regressing_segment_asks_while_the_whole_passes() -> None:
    champion = _seg(0.10, cold=0.05, regular=0.10, heavy=0.20)
    fine = _asked(_seg(0.12, cold=0.0476, regular=0.12, heavy=0.22), champion)  # cold -4.8 %
    assert fine.decision == "promoted"
    worse = _asked(_seg(0.12, cold=0.0470, regular=0.12, heavy=0.22), champion)  # cold -6 %
    assert worse.decision == "awaiting_approval"
    assert [c.name for c in worse.concerns] == ["segment cold"]
    assert "cold readers: ndcg@20 0.04700 vs champion 0.05000 (-6.00%)" in worse.reason
    looser = _asked(_seg(0.12, cold=0.0470, regular=0.12, heavy=0.22), champion,
                    max_segment_drop=0.1)
    assert looser.decision == "promoted"
    empty = _seg(0.12, cold=0.0470, regular=0.12, heavy=0.22)
    empty["segments"]["readers"]["cold"] = {"users": 0, "ndcg@20": None}  # no cold readers
    assert _asked(empty, champion).decision == "promoted"


def test_require_approval_asks_even_for_a_clear_win() -> None:
    result = _asked(_m(0.2), _m(0.1), require=True)
    assert result.decision == "awaiting_approval" and "requested" in result.reason
    assert _asked(_m(0.05), _m(0.1), require=True).decision == "rejected"


def test_judge_composes_the_checks_into_a_json_verdict() -> None:
    t = Thresholds()
    cand = {"version": "v2", "data_fingerprint": "d", "params": {"seed": 1}, "metrics": _m(0.12)}
    champ = {"version": "v1", "data_fingerprint": "d", "params": {"seed": 1}, "metrics": _m(0.10)}
    verdict = gate.judge(cand, champ, _smoke(), t)
    assert verdict["decision"] == "promoted" and verdict["concerns"] == []
    assert [c["check"] for c in verdict["checks"]] == [
        "ndcg@20", "coverage@20", "holdout", "serving", "latency", "memory", "load time"]
    assert "same snapshot and split" in verdict["checks"][2]["detail"]
    assert verdict["thresholds"] == t.to_json()
    assert verdict["champion_metrics"] == champ["metrics"]
    assert {r["metric"] for r in verdict["table"]} >= {"ndcg@20", "coverage@20"}
    first = gate.judge(cand, None, _smoke(ok=False, error="boom"), t)
    assert first["decision"] == "rejected" and "smoke test failed: boom" in first["reason"]
    assert "holdout" not in [c["check"] for c in first["checks"]]
    asked = gate.judge(cand, champ, _smoke(), t, require_approval=True)
    assert asked["decision"] == "awaiting_approval"
    assert asked["concerns"] == [
        {"check": "requested", "detail": "approval was requested (--require-approval)"}]
