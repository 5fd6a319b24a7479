"""Reports: the markdown and the tables that ingest, training and promotion (the decision,
an approval request, a rollout's figures) publish as Prefect artifacts and the commands
print. Pure functions of the stages' result dicts."""

from __future__ import annotations

import json
from typing import Any

METRIC_COLUMNS = ("recall@20", "ndcg@20", "hr@10", "coverage@20", "mean_popularity@20")
SEGMENT_COLUMNS = ("users", "ndcg@20", "recall@20", "reachability")
SAMPLE_READERS = 5  # readers whose lists an approval page shows before and after

# ---------------------------------------------------------------- ingest


def public_ingest_report(report: dict) -> dict:
    """The report as ``bookrec ingest --json`` prints it: files and duration only."""
    return {"files": report["files"], "duration_s": report["duration_s"]}


def ingest_markdown(report: dict) -> str:
    """A markdown summary of an ingest report (for the Prefect UI)."""
    lines = [
        f"# Ingest of `{report.get('source', '?')}` ({report.get('layout', '?')} layout)",
        "",
        f"Duration: {report['duration_s']:.1f} s",
        "",
        "| file | read | inserted | updated | unchanged | merged | quarantined |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, c in report["files"].items():
        lines.append(
            f"| {kind} | {c['rows_read']:,} | {c['inserted']:,} | {c['updated']:,} | "
            f"{c['unchanged']:,} | {c['merged']:,} | {c['quarantined']:,} |"
        )
    reasons = [(k, r, n) for k, c in report["files"].items() for r, n in c["reasons"].items()]
    if reasons:
        lines += ["", "| file | quarantine reason | rows |", "|---|---|---:|"]
        lines += [f"| {k} | {r} | {n:,} |" for k, r, n in reasons]
    return "\n".join(lines)


def ingest_table(report: dict) -> list[dict]:
    """One row per file, for a Prefect table artifact."""
    return [
        {
            "file": kind,
            **{k: v for k, v in counts.items() if k != "reasons"},
            "reasons": ", ".join(f"{r}={n}" for r, n in counts["reasons"].items()),
        }
        for kind, counts in report["files"].items()
    ]


# ---------------------------------------------------------------- training


def training_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model (the served one first), for tables and artifacts."""
    from bookrec.evaluation import PRIMARY  # scipy: only where training results are shown

    rows = []
    if PRIMARY in metrics:
        rows.append({"model": "served (hybrid)", **{c: metrics.get(c) for c in METRIC_COLUMNS}})
    for name, values in (metrics.get("baselines") or {}).items():
        rows.append({"model": name, **{c: values.get(c) for c in METRIC_COLUMNS}})
    return [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def training_segment_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and segment (readers cold/regular/heavy, books by popularity
    tercile) from the ``segments`` each evaluation recorded."""
    models = [("served (hybrid)", metrics)] + list((metrics.get("baselines") or {}).items())
    rows = []
    for model, values in models:
        segments = (values or {}).get("segments") or {}
        for group, label in (("readers", "readers"), ("popularity", "books")):
            for name, seg in (segments.get(group) or {}).items():
                rows.append({"model": model, "segment": f"{label} {name}",
                             **{c: seg.get(c) for c in SEGMENT_COLUMNS}})
    return [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def _cell(value: Any, kind: str = "") -> str:
    """A table cell: '-' for missing, a percentage (``pct``) or whole milliseconds
    (``ms``), else 4 decimals for floats."""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "ms":
        return f"{value:.0f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def training_markdown(version: str, metrics: dict[str, Any], timings: dict[str, float],
                      data_fp: dict[str, Any]) -> str:
    """A short human summary: what was trained, on what, how good, how long."""
    from bookrec.evaluation import PRIMARY

    lines = [f"# Training run: model version `{version}`", ""]
    lines.append(
        f"Snapshot: {data_fp.get('ratings', '?')} ratings, {data_fp.get('users', '?')} users, "
        f"{data_fp.get('books', '?')} books (ratings sha256 "
        f"`{str(data_fp.get('ratings_sha256', ''))[:12]}`)."
    )
    if PRIMARY in metrics:
        lift = metrics.get("lift_over_best_baseline")
        lines.append(
            f"NDCG@20 {metrics[PRIMARY]:.4f} on {int(metrics.get('users', 0))} held-out users; "
            f"best baseline `{metrics.get('best_baseline')}`"
            + (f", lift x{lift:.3f} (goal x1.05)." if lift else ".")
        )
        lines += ["", "| model | " + " | ".join(METRIC_COLUMNS) + " |",
                  "|---|" + "---|" * len(METRIC_COLUMNS)]
        for row in training_rows(metrics):
            lines.append(f"| {row['model']} | " + " | ".join(
                f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c])
                for c in METRIC_COLUMNS) + " |")
        seg_rows = training_segment_rows(metrics)
        if seg_rows:
            lines += ["", "Segments: readers by training interactions (cold 1-4, regular 5-99, "
                      "heavy >= 100), held-out books by popularity tercile; reachability = "
                      "share of held-out books the model can score at all.", "",
                      "| model | segment | " + " | ".join(SEGMENT_COLUMNS) + " |",
                      "|---|---|" + "---|" * len(SEGMENT_COLUMNS)]
            for row in seg_rows:
                lines.append(f"| {row['model']} | {row['segment']} | "
                             + " | ".join(_cell(row[c]) for c in SEGMENT_COLUMNS) + " |")
    else:
        lines.append("Evaluation was skipped.")
    lines += ["", "Stage times (s): " + json.dumps(timings)]
    return "\n".join(lines)


# ---------------------------------------------------------------- promotion


def _checks_table(checks: list[dict[str, Any]]) -> list[str]:
    """The gate's checks as markdown table lines."""
    return ["| check | passed | detail |", "|---|---|---|"] + [
        f"| {c['check']} | {'yes' if c['passed'] else 'NO'} | {c['detail']} |" for c in checks
    ]


def decision_markdown(
    kind: str, version: str, result: dict[str, Any], verdict: dict[str, Any] | None = None
) -> str:
    """A promotion, rollback or approval decision: what, the champion now, why, the checks."""
    lines = [
        f"# {kind.capitalize()}: {version}",
        "",
        f"**Decision:** {result['decision']}  ",
        f"**Champion now:** {result['champion'] or 'none'}  ",
        f"**Reason:** {result['reason']}",
    ]
    if verdict:
        lines += ["", *_checks_table(verdict["checks"])]
    return "\n".join(lines)


def approval_markdown(
    candidate: str, champion: str | None, verdict: dict[str, Any], approval: dict[str, Any],
    before: dict[str, list[str]], after: dict[str, list[str]],
) -> str:
    """The page a human decides on: why asked, metrics and segments side by side, lists."""

    def num(value: Any) -> str:
        return f"{value:.5f}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = [
        f"# Approval needed: {candidate}",
        "",
        f"**Champion:** {champion or 'none'}  ",
        f"**Why asked:** {verdict['reason']}  ",
        f"**Answer by:** {approval['deadline']} (no answer means rejected)  ",
        f"**Answer:** resume this flow run in the UI, or `bookrec approve {candidate} "
        f"[--reason T]` / `bookrec reject {candidate} --reason T`",
        "",
        "## Metrics on the same holdout: overall, then readers by training interactions "
        "(cold 1-4, regular 5-99, heavy >= 100) and books by popularity tercile",
        "",
        "| metric | candidate | champion | change |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['metric']} | {num(r['candidate'])} | {num(r['champion'])} | {r['change']} |"
              for r in verdict["table"]]
    lines += ["", f"## {SAMPLE_READERS} sample readers: top lists before and after", "",
              "| reader | champion (before) | candidate (after) |", "|---|---|---|"]
    for user in after or before:
        lines.append(f"| {user} | {', '.join(before.get(user, [])) or '-'} | "
                     f"{', '.join(after.get(user, [])) or '-'} |")
    lines += ["", *_checks_table(verdict["checks"])]
    return "\n".join(lines)


# ---------------------------------------------------------------- rollout


def rollout_markdown(rollout: dict[str, Any], checks: list[dict[str, Any]],
                     verdict: dict[str, Any] | None = None,
                     outcome: dict[str, Any] | None = None) -> str:
    """The rollout page: the rollout, the decision (when made), and the figures per variant
    at every check."""
    lines = [
        f"# Rollout {rollout['id']}: {rollout['candidate']} vs champion {rollout['champion']}",
        "",
        f"**Shares:** interleave {rollout['interleave']:.0%}, canary {rollout['canary']:.0%}, "
        f"champion alone {1 - rollout['interleave'] - rollout['canary']:.0%}  ",
        f"**Started:** {rollout['started_at']} by {rollout['started_by']}  ",
    ]
    if outcome:
        lines += [f"**Decision:** {outcome['decision']}  ",
                  f"**Champion now:** {outcome.get('champion') or '-'}  ",
                  f"**Reason:** {outcome['reason']}  "]
    elif verdict:
        lines += [f"**Rule now:** {verdict['decision']}: {verdict['reason']}  "]
    if verdict and verdict.get("arms"):
        lines += ["", "| arm | verdict | estimate | low | high | readers | informative |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {a['arm']} | {a['verdict']} | {_cell(a['estimate'])} | {_cell(a['low'])} "
                  f"| {_cell(a['high'])} | {a['readers']} | {a['informative']} |"
                  for a in verdict["arms"]]
    lines += ["", "## Figures per variant at each check", "",
              "| check at | variant | requests | errors | error rate | p50 ms | p95 ms | "
              "impressions | readers | hits | hit rate |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for check in checks:
        for name, v in (check.get("variants") or {}).items():
            lines.append(
                f"| {check['at'][11:19]} | {name} | {_cell(v.get('requests'))} | "
                f"{_cell(v.get('errors'))} | {_cell(v.get('error_rate'), 'pct')} | "
                f"{_cell(v.get('p50_ms'), 'ms')} | {_cell(v.get('p95_ms'), 'ms')} | "
                f"{_cell(v.get('impressions'))} | {_cell(v.get('readers'))} | "
                f"{_cell(v.get('hits'))} | {_cell(v.get('hit_rate'))} |"
            )
    return "\n".join(lines)
