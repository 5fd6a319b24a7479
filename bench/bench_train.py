"""Benchmark training on the full Book-Crossing data: stage times, peak RSS, the model
vs baselines table, model load time in a fresh process, and batch scoring speed.

    .venv/bin/python -m bench.bench_train                 # Kaggle CSVs, all defaults
    .venv/bin/python -m bench.bench_train --source db     # the ingested PostgreSQL data
    .venv/bin/python -m bench.bench_train --set l2=300 --set explicit_weight=1.0

Targets (issue 3): training + evaluation <= 180 s wall on 2 cores, peak RSS <= 6 GB,
load < 2 s, thousands of users per second in batch; served NDCG@20 >= 1.05 x the best
baseline. The baselines are measured in the same run on the same split.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bookrec import training

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_in_fresh_process(folder: Path) -> dict:
    """Time ``load_model`` plus a first answer in a new interpreter (what a worker pays)."""
    code = (
        "import json,sys,time;t=time.perf_counter();"
        "from bookrec.models.persist import load_model;"
        f"m=load_model({str(folder)!r});t1=time.perf_counter();"
        "r=m.recommend(11676,10);t2=time.perf_counter();"
        "print(json.dumps({'import_and_load_s':t1-t,'first_answer_s':t2-t1}))"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    result["process_wall_s"] = time.perf_counter() - started
    return result


def batch_scoring(model, users: np.ndarray) -> dict:
    """Users per second: one vectorised ``recommend_many`` vs a loop of ``recommend``."""
    started = time.perf_counter()
    for start in range(0, len(users), 1024):
        model.recommend_many(users[start : start + 1024].tolist(), 10)
    batch = len(users) / (time.perf_counter() - started)
    sample = users[:500]
    started = time.perf_counter()
    for user in sample.tolist():
        model.recommend(user, 10)
    single = len(sample) / (time.perf_counter() - started)
    # What `bookrec recommend --users-file F --json` does: chunks in forked processes (one
    # per core), JSON lines written in order.
    import io
    import os

    from cli.train import _recommend_parallel

    jobs = min(4, os.cpu_count() or 1)
    started = time.perf_counter()
    _recommend_parallel(model, users.tolist(), 10, jobs, io.StringIO())
    cli_batch = len(users) / (time.perf_counter() - started)
    return {"batch_users_per_s": batch, "single_call_users_per_s": single,
            "cli_parallel_users_per_s": cli_batch, "cli_jobs": jobs, "users": int(len(users))}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print figures (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["csv", "db"], default="csv")
    parser.add_argument("--algorithm", default="ease")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--baselines", default=",".join(training.BASELINES))
    parser.add_argument("--sample-fraction", type=float, default=1.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    hyper = {}
    for item in args.set:
        name, _, raw = item.partition("=")
        hyper[name] = json.loads(raw)

    from bench.fulldata import load_csv, load_db

    wall = time.perf_counter()
    started = time.perf_counter()
    ratings, books = load_csv() if args.source == "csv" else load_db()
    load_s = time.perf_counter() - started
    print(f"loaded {len(ratings)} ratings, {len(books)} books from {args.source} in {load_s:.1f}s")

    config = training.TrainConfig(
        algorithm=args.algorithm, hyperparameters=hyper, sample_fraction=args.sample_fraction,
        baselines=tuple(b for b in args.baselines.split(",") if b),
    )
    started = time.perf_counter()
    result = training.train_model(ratings, books, config, report=lambda m: print("  " + m))
    train_s = time.perf_counter() - started
    rss_train = peak_rss_mb()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        started = time.perf_counter()
        training.save_candidate(result, folder, "bench")
        save_s = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        fresh = load_in_fresh_process(folder)
        from bookrec.models.persist import load_model

        model = load_model(folder)
        users = np.asarray(model.user_ids)
        scoring = batch_scoring(model, users[: min(len(users), 20_000)])

    print("\nstage times (s):")
    for name, seconds in result.timings.items():
        print(f"  {name:<42} {seconds:8.1f}")
    model_stages = sum(v for k, v in result.timings.items()
                       if not any(b in k for b in config.baselines) or "shared" in k)
    print(f"  {'training + evaluation, all stages':<42} {train_s:8.1f}")
    print(f"  {'... of which the served model only':<42} {model_stages:8.1f}")
    print(f"peak RSS during training: {rss_train:.0f} MB")
    print(f"model folder: {size_mb:.0f} MB, saved in {save_s:.1f}s")
    print(f"fresh-process load: {fresh['import_and_load_s']:.2f}s (imports + verify + map), "
          f"first answer {fresh['first_answer_s'] * 1000:.0f} ms")
    print(f"batch scoring: {scoring['batch_users_per_s']:.0f} users/s over {scoring['users']} "
          f"users (single calls: {scoring['single_call_users_per_s']:.0f} users/s); the CLI's "
          f"batch path (`bookrec recommend --users-file F --json`, {scoring['cli_jobs']} forked "
          f"processes): {scoring['cli_parallel_users_per_s']:.0f} users/s")
    m = result.metrics
    if m:
        print("\n| model | " + " | ".join(training.METRIC_COLUMNS) + " |")
        print("|---|" + "---|" * len(training.METRIC_COLUMNS))
        for row in training.comparison_rows(m):
            print(f"| {row['model']} | " + " | ".join(
                f"{row[c]:.4f}" for c in training.METRIC_COLUMNS) + " |")
        lift = m.get("lift_over_best_baseline")
        if lift:
            verdict = (
                "goal met" if lift >= 1.05 else f"short of the x1.05 goal by {1.05 - lift:.3f}"
            )
            print(f"\nNDCG@20 lift over best baseline ({m['best_baseline']}): x{lift:.3f} "
                  f"({verdict})")
    print(f"total wall: {time.perf_counter() - wall:.1f}s")
    if args.json:
        args.json.write_text(json.dumps({
            "timings": result.timings, "train_s": train_s, "peak_rss_mb": rss_train,
            "model_mb": size_mb, "fresh_load": fresh, "scoring": scoring, "metrics": m,
            "config": {"algorithm": args.algorithm, **hyper},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
