"""The promotion gate: pure checks that turn metrics and a smoke report into a decision.

Metric check: the candidate and the champion on the same holdout; the candidate's
primary metric (NDCG@20) may not drop more than ``max_relative_drop`` relative to the
champion's, and its coverage may not fall below ``coverage_floor``. With no champion
yet, the candidate must beat the most-popular baseline evaluated in the same run.
Serving check: the smoke report must be ``ok`` and within the latency, memory and
load-time budgets. A candidate that passes every check can still be a close call that a
human should see (``approval_concerns``): its primary metric within ``approval_band`` of
the champion's, a reader segment (cold, regular, heavy) regressing by more than
``max_segment_drop`` while the whole passes, or an explicit request. Then the decision is
``awaiting_approval``. A candidate that passes with no concern while online judgement is
asked for (``bookrec promote --rollout``, ``BOOKREC_ROLLOUT_DEFAULT``) gets the fourth
outcome, ``rolling_out``: the promote flow starts the ``rollout`` flow instead of moving
the champion, and live readers decide (``bookrec.rollout_rule``). Nothing here does I/O;
the promote flow gathers the inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

PROMOTED = "promoted"
REJECTED = "rejected"
ASK = "awaiting_approval"
ROLLOUT = "rolling_out"
SEGMENTS = ("cold", "regular", "heavy")  # by training interactions: 1-4, 5-99, >= 100


class GateConfigError(ValueError):
    """A threshold setting is unknown or has the wrong type."""


@dataclass(frozen=True)
class Thresholds:
    """Configurable limits (``BOOKREC_GATE_THRESHOLDS`` as JSON overrides any of them)."""

    metric: str = "ndcg@20"
    max_relative_drop: float = 0.01
    coverage_metric: str = "coverage@20"
    coverage_floor: float = 0.001
    baseline: str = "most_popular"
    min_lift_over_baseline: float = 0.0
    max_p99_ms: float = 250.0
    max_rss_mb: float = 6144.0
    max_load_s: float = 30.0
    approval_band: float = 0.005
    max_segment_drop: float = 0.05

    @classmethod
    def from_mapping(cls, overrides: dict[str, Any] | None) -> Thresholds:
        """Defaults updated by ``overrides``; an unknown key or a wrong type names the key."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            if key not in types:
                raise GateConfigError(
                    f"gate threshold {key!r} is unknown (known: {', '.join(sorted(types))})"
                )
            if types[key] == "str":
                if not isinstance(value, str) or not value:
                    raise GateConfigError(f"gate threshold {key!r} must be a non-empty string")
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise GateConfigError(f"gate threshold {key!r} must be a number, got {value!r}")
                if not math.isfinite(value) or value < 0:
                    raise GateConfigError(f"gate threshold {key!r} must be finite and >= 0")
                value = float(value)
            values[key] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Plain dict, for the audit row and the Prefect artifact."""
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One named gate check and its outcome."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    """The decision with every check behind it."""

    decision: str  # promoted | rejected | awaiting_approval | rolling_out
    reason: str
    checks: tuple[Check, ...]
    concerns: tuple[Check, ...] = ()


def _number(metrics: dict[str, Any] | None, key: str) -> float | None:
    """A finite metric value or None (missing, not a number, NaN)."""
    if not metrics:
        return None
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def baseline_metrics(metrics: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The metrics of baseline ``name`` recorded next to the model's own (same split).

    Accepts ``{"baselines": {name: {...}}}`` or a list of rows naming the model, and the
    usual spellings of most-popular.
    """
    aliases = {name}
    if name.replace("-", "_") in ("most_popular", "popular"):
        aliases |= {"most_popular", "most-popular", "popular", "popularity"}
    baselines = metrics.get("baselines")
    if isinstance(baselines, dict):
        for alias in sorted(aliases):
            if isinstance(baselines.get(alias), dict):
                return baselines[alias]
    if isinstance(baselines, list):
        for row in baselines:
            if isinstance(row, dict) and aliases & {row.get("model"), row.get("name")}:
                return row
    return None


def same_holdout(candidate_manifest: dict[str, Any], champion_manifest: dict[str, Any]) -> bool:
    """True if both were evaluated on the same split: same rating snapshot, same split params."""

    def key(manifest: dict[str, Any]) -> tuple[Any, Any]:
        params = manifest.get("params") or {}
        split = params.get("evaluation") or {
            k: params.get(k) for k in ("seed", "min_interactions", "test_fraction")
        }
        return manifest.get("data_fingerprint"), split

    return key(candidate_manifest) == key(champion_manifest)


def champion_on_candidate_holdout(
    candidate_manifest: dict[str, Any], champion_manifest: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str]:
    """The champion metrics to compare with, and where they come from.

    First choice: the champion's recipe scored on the candidate's own holdout at training
    time (``metrics.champion_same_holdout``), if it names the current champion. Then the
    champion's recorded metrics, which share the holdout when both runs had the same
    rating snapshot and split. Otherwise those recorded metrics, flagged as another holdout.
    """
    if champion_manifest is None:
        return None, "no champion"
    recorded = champion_manifest.get("metrics") or {}
    scored = (candidate_manifest.get("metrics") or {}).get("champion_same_holdout")
    version = champion_manifest.get("version")
    if isinstance(scored, dict) and scored.get("version") == version and not scored.get("error"):
        how = ("same recipe as the candidate" if scored.get("same_recipe")
               else "its recipe refitted on the candidate's training split")
        return scored, f"champion {version} scored on the candidate's holdout ({how})"
    if same_holdout(candidate_manifest, champion_manifest):
        return recorded, f"champion {version}: recorded metrics, same snapshot and split"
    why = (scored or {}).get("error") if isinstance(scored, dict) else None
    return recorded, (
        f"champion {version}: recorded metrics from another snapshot (not re-scored"
        + (f": {why})" if why else ")")
    )


def check_metrics(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    thresholds: Thresholds,
) -> list[Check]:
    """Metric checks of ``candidate`` against ``champion`` (None: the first model ever)."""
    t = thresholds
    checks = []
    cand = _number(candidate, t.metric)
    if cand is None:
        return [Check(t.metric, False, f"candidate has no numeric {t.metric!r} metric")]
    champ = _number(champion, t.metric) if champion is not None else None
    if champ is not None:
        floor = champ * (1.0 - t.max_relative_drop)
        change = (cand - champ) / champ if champ else 0.0
        checks.append(
            Check(
                t.metric,
                cand >= floor - 1e-12,
                f"{t.metric} {cand:.5f} vs champion {champ:.5f} ({change:+.2%}); "
                f"may not drop more than {t.max_relative_drop:.2%}",
            )
        )
    else:
        base = _number(baseline_metrics(candidate, t.baseline), t.metric)
        why = "first model" if champion is None else f"champion has no {t.metric}"
        if base is None:
            checks.append(
                Check(f"{t.metric} vs {t.baseline}", False,
                      f"{why}: candidate metrics record no {t.baseline} baseline {t.metric}")
            )
        else:
            need = base * (1.0 + t.min_lift_over_baseline)
            checks.append(
                Check(
                    f"{t.metric} vs {t.baseline}",
                    cand > need,
                    f"{why}: {t.metric} {cand:.5f} must beat {t.baseline} {base:.5f}"
                    + (f" by {t.min_lift_over_baseline:.0%}" if t.min_lift_over_baseline else ""),
                )
            )
    cov = _number(candidate, t.coverage_metric)
    if cov is None:
        checks.append(Check(t.coverage_metric, False, f"candidate has no {t.coverage_metric}"))
    else:
        checks.append(
            Check(
                t.coverage_metric,
                cov >= t.coverage_floor,
                f"{t.coverage_metric} {cov:.4f}, floor {t.coverage_floor:.4f}",
            )
        )
    return checks


def check_smoke(report: dict[str, Any], thresholds: Thresholds) -> list[Check]:
    """Serving checks from a ``bookrec.smoke`` report: it loaded, answered, within budgets."""
    if not report.get("ok"):
        return [Check("serving", False, f"smoke test failed: {report.get('error') or 'unknown'}")]
    t = thresholds
    # The budget is on CPU time per query (reports from before it existed: wall time); the
    # wall p99 of a smoke test on a busy machine measures the machine, not the model.
    wall = float(report.get("latency_ms", {}).get("p99", math.inf))
    p99 = float(report.get("cpu_ms", {}).get("p99", wall))
    rss = float(report.get("peak_rss_mb", math.inf))
    load = float(report.get("load_s", math.inf))
    return [
        Check("serving", True, f"loaded and answered {report.get('queries', 0)} golden queries"),
        Check("latency", p99 <= t.max_p99_ms,
              f"p99 {p99:.1f} ms of CPU (wall {wall:.1f} ms), budget {t.max_p99_ms:g} ms"),
        Check("memory", rss <= t.max_rss_mb, f"peak RSS {rss:.0f} MB, budget {t.max_rss_mb:g} MB"),
        Check("load time", load <= t.max_load_s, f"load {load:.2f} s, budget {t.max_load_s:g} s"),
    ]


def segment_metrics(metrics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per reader segment metrics recorded with the overall ones, on the same holdout
    (``metrics["segments"]["readers"]``, from ``bookrec.evaluation.segment_metrics``)."""
    found = ((metrics or {}).get("segments") or {})
    found = found.get("readers") if isinstance(found, dict) else None
    if not isinstance(found, dict):
        return {}
    ordered = [s for s in SEGMENTS if s in found] + sorted(set(found) - set(SEGMENTS))
    return {name: found[name] for name in ordered if isinstance(found[name], dict)}


def approval_concerns(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    thresholds: Thresholds,
    *,
    require_approval: bool = False,
) -> list[Check]:
    """Why a human should decide although every check passed (empty: promote on its own).

    A close call on the primary metric, a reader segment that regresses beyond the
    threshold (both scored on the same holdout), or an explicit request.
    """
    t = thresholds
    concerns = []
    if require_approval:
        concerns.append(Check("requested", False, "approval was requested (--require-approval)"))
    cand, champ = _number(candidate, t.metric), _number(champion, t.metric)
    if cand is not None and champ:
        change = (cand - champ) / champ
        if abs(change) <= t.approval_band + 1e-12:
            concerns.append(Check(
                "close call", False,
                f"{t.metric} {cand:.5f} vs champion {champ:.5f} ({change:+.2%}) is within "
                f"the approval band of {t.approval_band:.2%}",
            ))
    champion_segments = segment_metrics(champion)
    for name, seg in segment_metrics(candidate).items():
        seg_cand = _number(seg, t.metric)
        seg_champ = _number(champion_segments.get(name), t.metric)
        if seg_cand is None or not seg_champ:
            continue
        change = (seg_cand - seg_champ) / seg_champ
        if change < -t.max_segment_drop - 1e-12:
            concerns.append(Check(
                f"segment {name}", False,
                f"{name} readers: {t.metric} {seg_cand:.5f} vs champion {seg_champ:.5f} "
                f"({change:+.2%}), more than the {t.max_segment_drop:.2%} a segment may drop",
            ))
    return concerns


def decide(checks: list[Check], concerns: list[Check] | tuple[Check, ...] = (),
           *, roll_out: bool = False) -> GateResult:
    """Reject if a check failed; else ask a human if there are ``concerns``; else roll out
    (when ``roll_out``: live readers decide) or promote.

    The reason lists the failures, the concerns, or the passes.
    """
    failed = [c for c in checks if not c.passed]
    if failed:
        return GateResult(REJECTED, "; ".join(c.detail for c in failed), tuple(checks))
    if concerns:
        return GateResult(ASK, "; ".join(c.detail for c in concerns), tuple(checks),
                          tuple(concerns))
    if roll_out:
        return GateResult(ROLLOUT, "offline checks passed; online judgement asked: "
                          + "; ".join(c.detail for c in checks), tuple(checks))
    return GateResult(PROMOTED, "; ".join(c.detail for c in checks), tuple(checks))


def judge(
    candidate_manifest: dict[str, Any],
    champion_manifest: dict[str, Any] | None,
    smoke_report: dict[str, Any],
    thresholds: Thresholds,
    *,
    require_approval: bool = False,
    roll_out: bool = False,
) -> dict[str, Any]:
    """Run the metric and serving checks on a candidate: the decision (promoted, rejected,
    awaiting_approval, or rolling_out when ``roll_out`` asks for online judgement), reason,
    checks, concerns, comparison table, the thresholds and the metrics compared (plain
    JSON, for the audit row and the Prefect artifacts)."""
    candidate_metrics = candidate_manifest.get("metrics") or {}
    champion_metrics, source = champion_on_candidate_holdout(candidate_manifest, champion_manifest)
    checks = check_metrics(candidate_metrics, champion_metrics, thresholds)
    if champion_manifest is not None:
        checks.append(Check("holdout", True, source))
    checks += check_smoke(smoke_report, thresholds)
    concerns = approval_concerns(candidate_metrics, champion_metrics, thresholds,
                                 require_approval=require_approval)
    result = decide(checks, concerns, roll_out=roll_out)
    return {
        "decision": result.decision,
        "reason": result.reason,
        "checks": [{"check": c.name, "passed": c.passed, "detail": c.detail}
                   for c in result.checks],
        "concerns": [{"check": c.name, "detail": c.detail} for c in result.concerns],
        "table": comparison_rows(candidate_metrics, champion_metrics),
        "thresholds": thresholds.to_json(),
        "candidate_metrics": candidate_metrics,
        "champion_metrics": champion_metrics,
    }


def segment_values(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The evaluation's segments flattened: ``"readers cold ndcg@20"``, ``"books low
    reachability"``... (readers by training interactions, books by popularity tercile)."""
    segments = (metrics or {}).get("segments")
    out: dict[str, float] = {}
    if not isinstance(segments, dict):
        return out
    for group, label in (("readers", "readers"), ("popularity", "books")):
        for name, values in (segments.get(group) or {}).items():
            for metric, value in (values or {}).items():
                if metric in ("ndcg@20", "recall@20", "reachability", "users"):
                    number = _number({"v": value}, "v")
                    if number is not None:
                        out[f"{label} {name} {metric}"] = number
    return out


def comparison_rows(
    candidate: dict[str, Any], champion: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Candidate-vs-champion rows for every numeric metric either of them has, then
    the per-segment figures (``segment_values``)."""
    names = sorted(
        {k for k in candidate if _number(candidate, k) is not None}
        | {k for k in (champion or {}) if _number(champion, k) is not None}
    )
    cand_seg, champ_seg = segment_values(candidate), segment_values(champion)
    candidate = {**candidate, **cand_seg}
    champion = {**(champion or {}), **champ_seg} if champion is not None else None
    names += [n for n in dict.fromkeys([*cand_seg, *champ_seg])]
    rows = []
    for name in names:
        cand, champ = _number(candidate, name), _number(champion, name)
        change = (cand - champ) / champ if cand is not None and champ else None
        rows.append(
            {
                "metric": name,
                "candidate": cand,
                "champion": champ,
                "change": f"{change:+.2%}" if change is not None else "",
            }
        )
    return rows
