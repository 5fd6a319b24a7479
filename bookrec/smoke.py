"""Serving smoke test: load a model version with the serving loader and answer golden queries.

``python -m bookrec.smoke FOLDER [--golden FILE]`` runs in its own process (so a crash,
a leak or a hang cannot take the caller down), loads the folder with
``bookrec.models.persist.load_model`` (what the API uses), answers a fixed set of
queries (known users, known ISBNs, an unknown user, an unknown ISBN) and prints one
JSON object: the answers, their sha256, latencies and peak RSS. Exit status 0 means
every query was answered sensibly; the promotion gate also checks the budgets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Well-known Book-Crossing readers and books (the most active users, the most rated ISBNs),
# an id no reader has, and an ISBN no catalogue holds.
DEFAULT_GOLDEN: dict[str, Any] = {
    "k": 10,
    "users": [11676, 198711, 153662, 98391, 35859],
    "isbns": ["0971880107", "0316666343", "0385504209", "0060928336", "0312195516"],
    "unknown_users": [2147483647],
    "unknown_isbns": ["2222222222"],
}


# Timed passes over the golden set after the first (cold) one.
WARM_PASSES = 3


class SmokeError(RuntimeError):
    """A golden query was answered wrongly (empty, malformed, or the wrong fallback)."""


def load_golden(path: Path | None) -> dict[str, Any]:
    """The golden query set from a JSON file (same keys as ``DEFAULT_GOLDEN``), or the default."""
    if path is None:
        return dict(DEFAULT_GOLDEN)
    try:
        golden = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SmokeError(f"{path}: cannot read the golden query set ({exc})") from exc
    if not isinstance(golden, dict):
        raise SmokeError(f"{path}: expected a JSON object")
    out = {**DEFAULT_GOLDEN, **golden}
    for key in ("users", "unknown_users"):
        if not all(isinstance(u, int) and not isinstance(u, bool) for u in out[key]):
            raise SmokeError(f"{path}: '{key}' must be a list of integer user ids")
    for key in ("isbns", "unknown_isbns"):
        if not all(isinstance(i, str) for i in out[key]):
            raise SmokeError(f"{path}: '{key}' must be a list of ISBN strings")
    if not isinstance(out["k"], int) or not 1 <= out["k"] <= 100:
        raise SmokeError(f"{path}: 'k' must be an integer in 1..100")
    return out


def _answer(recs: list[Any], what: str) -> list[dict[str, Any]]:
    """Recommendations as plain JSON, checked: non-empty, unique ISBNs, finite scores."""
    if not recs:
        raise SmokeError(f"{what}: empty answer")
    rows = []
    for rec in recs:
        score = float(rec.score)
        if not math.isfinite(score):
            raise SmokeError(f"{what}: non-finite score for {rec.isbn}")
        if rec.source not in ("cf", "content", "popular"):
            raise SmokeError(f"{what}: unknown source {rec.source!r}")
        rows.append({"isbn": rec.isbn, "score": round(score, 6), "source": rec.source})
    isbns = [r["isbn"] for r in rows]
    if len(set(isbns)) != len(isbns):
        raise SmokeError(f"{what}: duplicate ISBNs in the answer")
    return rows


def answers_sha256(answers: dict[str, Any]) -> str:
    """A stable hash of the answers (what a rollback compares against)."""
    return hashlib.sha256(json.dumps(answers, sort_keys=True).encode()).hexdigest()


def run_golden(
    model: Any, golden: dict[str, Any], cpu: list[float] | None = None
) -> tuple[dict[str, Any], list[float], dict]:
    """Answer every golden query; return the answers, per-query latencies (ms, wall) and
    coverage; ``cpu`` receives each query's CPU time (ms, this process's threads)."""
    k = golden["k"]
    answers: dict[str, Any] = {"recommend": {}, "similar": {}, "unknown_users": {}}
    latencies: list[float] = []
    known = {"users": 0, "isbns": 0}

    def timed(fn: Any, *args: Any) -> Any:
        started, started_cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args)
        finally:
            latencies.append((time.perf_counter() - started) * 1000.0)
            if cpu is not None:
                cpu.append((time.process_time() - started_cpu) * 1000.0)

    answers["popular"] = _answer(timed(model.popular, k), "popular")
    for user in golden["users"]:
        known["users"] += bool(model.knows_user(user))
        answers["recommend"][str(user)] = _answer(timed(model.recommend, user, k), f"user {user}")
    for user in golden["unknown_users"]:
        if model.knows_user(user):
            raise SmokeError(f"user {user} is in the golden set as unknown but the model knows it")
        rows = _answer(timed(model.recommend, user, k), f"unknown user {user}")
        if any(r["source"] != "popular" for r in rows):
            raise SmokeError(f"unknown user {user}: expected popular fallbacks only")
        answers["unknown_users"][str(user)] = rows
    for isbn in golden["isbns"]:
        if not model.knows_book(isbn):
            answers["similar"][isbn] = None
            continue
        known["isbns"] += 1
        answers["similar"][isbn] = _answer(timed(model.similar, isbn, k), f"isbn {isbn}")
        if isbn in {r["isbn"] for r in answers["similar"][isbn]}:
            raise SmokeError(f"isbn {isbn}: similar books include the book itself")
    for isbn in golden["unknown_isbns"]:
        if model.knows_book(isbn):
            continue  # real ratings name odd ISBNs such as 0000000000: not unknown here
        try:
            timed(model.similar, isbn, k)
        except KeyError:
            continue
        raise SmokeError(f"isbn {isbn}: expected KeyError for an unknown ISBN")
    return answers, latencies, known


def peak_rss_mb() -> float:
    """This program's peak RSS. On Linux from ``VmHWM``, which starts afresh at ``exec``:
    ``ru_maxrss`` survives ``fork`` + ``exec`` and would report the parent's peak (a
    training process that spawned the smoke test, say)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def answer_and_time(model: Any, golden: dict[str, Any]) -> dict[str, Any]:
    """Answer ``golden`` once cold, then ``WARM_PASSES`` times timed; the report's fields.

    The first pass answers cold (page faults on the memory maps, lazy imports): it is what
    the gate checks for correctness, and its slowest query is reported as ``cold_max``. The
    latency budget applies to the warm passes after it (their CPU time per query, beside the
    wall latencies reported), which must give the very same answers (a model that answers the same question differently twice is rejected).
    """
    answers, cold, known = run_golden(model, golden)
    digest = answers_sha256(answers)
    latencies: list[float] = []
    cpu: list[float] = []
    for _ in range(WARM_PASSES):
        again, warm, _ = run_golden(model, golden, cpu)
        if answers_sha256(again) != digest:
            raise SmokeError("the same golden queries gave different answers on a second pass")
        latencies.extend(warm)
    latencies.sort()
    cpu.sort()
    return {
        "answers": answers,
        "answers_sha256": digest,
        "known": known,
        "queries": len(cold),
        "latency_ms": {
            "p50": round(latencies[len(latencies) // 2], 3),
            "p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
            "max": round(latencies[-1], 3),
            "cold_max": round(max(cold), 3),
        },
        # What the budget is checked against: a query's own cost, which a busy machine
        # does not inflate the way it inflates wall time (waiting for a core).
        "cpu_ms": {
            "p50": round(cpu[len(cpu) // 2], 3),
            "p99": round(cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))], 3),
        },
    }


def smoke(folder: Path, golden: dict[str, Any]) -> dict[str, Any]:
    """Load ``folder`` with the serving loader and answer ``golden``; never raises."""
    report: dict[str, Any] = {"folder": str(folder), "ok": False, "error": None}
    started = time.perf_counter()
    try:
        from bookrec.models.persist import load_model

        model = load_model(Path(folder))
        report["version"] = getattr(model, "version", "") or ""
        report["load_s"] = round(time.perf_counter() - started, 4)
        report.update(ok=True, **answer_and_time(model, golden))
    except Exception as exc:  # the report is the product: every failure becomes its reason
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc(limit=5)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["wall_s"] = round(time.perf_counter() - started, 4)
    return report


def run_smoke(
    folder: Path, *, golden_file: Path | None = None, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Run ``python -m bookrec.smoke`` in a fresh process and return its report.

    A crash, a timeout or unreadable output is a failed report (``ok`` false) with the
    reason, never an exception: the gate turns it into a rejection.
    """
    cmd = [sys.executable, "-m", "bookrec.smoke", str(folder)]
    if golden_file is not None:
        cmd += ["--golden", str(golden_file)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"folder": str(folder), "ok": False, "error": f"timed out after {timeout_s:g} s"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "folder": str(folder),
            "ok": False,
            "error": f"smoke process exited {proc.returncode}: {' | '.join(tail) or 'no output'}",
        }
    if proc.returncode != 0 and report.get("ok"):
        report.update(ok=False, error=f"smoke process exited {proc.returncode}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the report as one JSON line; exit 1 if it failed."""
    parser = argparse.ArgumentParser(prog="python -m bookrec.smoke", description=__doc__)
    parser.add_argument("folder", type=Path, help="a model version folder")
    parser.add_argument("--golden", type=Path, default=None, help="golden query set (JSON)")
    args = parser.parse_args(argv)
    try:
        golden = load_golden(args.golden)
    except SmokeError as exc:
        print(json.dumps({"folder": str(args.folder), "ok": False, "error": str(exc)}))
        return 1
    report = smoke(args.folder, golden)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
