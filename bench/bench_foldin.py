"""Fold-in against training-with-them, and the CPU cost of one fold-in.

    .venv/bin/python -m bench.bench_foldin                   # data/sample (small real cut)
    .venv/bin/python -m bench.bench_foldin --data full       # the full Kaggle CSVs
    .venv/bin/python -m bench.bench_foldin --data full --no-accuracy   # CPU figures only

Accuracy (``evaluation.foldin_comparison``): 20% of each eligible reader's ratings are held
out; the hybrid is fitted on the rest with and without ``--readers`` of them, and the model
fitted without them folds them in from their ratings. Printed: NDCG@20 of both on the held-out
ratings, the mean overlap of the two top-20 lists, and the share of identical lists.

CPU: ``recommend_history`` (k=10, with reasons) for the ratings of random readers with 1-100
and with 50-100 ratings, each timed with ``time.process_time_ns`` after a warm-up; median
and p90.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bookrec.evaluation import foldin_comparison
from bookrec.models.dataset import build_dataset
from bookrec.models.fit import fit_hybrid

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "original"


def load(which: str):
    """(ratings, books) frames of the sample (cleaned as ingest cleans) or the full data."""
    if which == "full":
        from bench.fulldata import load_csv

        return load_csv()
    from bookrec.ingest import clean_path

    books = clean_path(SAMPLE / "BX-Books.csv.gz", "books", "original", "BX-Books.csv.gz")
    ratings = clean_path(
        SAMPLE / "BX-Book-Ratings.csv.gz", "ratings", "original", "BX-Book-Ratings.csv.gz"
    )
    return ratings.frame, books.frame


def foldin_cpu(model, dataset, low: int, high: int, n: int = 500, seed: int = 0) -> dict:
    """Median and p90 CPU ms of one uncached fold-in (k=10, reasons) over random readers
    with ``low``..``high`` ratings."""
    rng = np.random.default_rng(seed)
    matrix = dataset.matrix
    counts = np.diff(matrix.indptr)
    users = np.flatnonzero((counts >= low) & (counts <= high))
    picks = rng.choice(users, size=min(n, len(users)), replace=False)
    histories = []
    for u in picks:
        items = matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]]
        values = matrix.data[matrix.indptr[u] : matrix.indptr[u + 1]]
        histories.append({str(dataset.isbns[i]): int(v) - 1 for i, v in zip(items, values,
                                                                            strict=True)})
    for history in histories[:20]:
        model.recommend_history(history, 10)
    times = []
    for history in histories:
        started = time.process_time_ns()
        model.recommend_history(history, 10)
        times.append((time.process_time_ns() - started) / 1e6)
    sizes = [len(h) for h in histories]
    return {"readers": len(histories), "median_ratings": float(np.median(sizes)),
            "cpu_ms_median": float(np.median(times)), "cpu_ms_p90": float(np.percentile(times, 90))}


def main(argv: list[str] | None = None) -> int:
    """Print the figures (and write them as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["sample", "full"], default="sample")
    parser.add_argument("--readers", type=int, default=20, help="readers folded in")
    parser.add_argument("--max-items", type=int, default=None,
                        help="CF catalogue size (default: 2,000 on the sample, the model's own "
                             "on the full data)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-accuracy", action="store_true",
                        help="only the CPU figures (one fit instead of three)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    ratings, books = load(args.data)
    dataset = build_dataset(ratings, books)
    max_items = args.max_items or (2000 if args.data == "sample" else None)
    params = {"max_items": max_items} if max_items else {}
    accuracy = None
    if not args.no_accuracy:
        started = time.perf_counter()
        accuracy = foldin_comparison(dataset, params, readers=args.readers, seed=args.seed)
        accuracy["seconds"] = round(time.perf_counter() - started, 1)
    model = fit_hybrid(dataset, params)
    cpu = {f"{low}-{high} ratings": foldin_cpu(model, dataset, low, high)
           for low, high in ((1, 100), (50, 100))}
    figures = {"data": args.data, "params": params, "accuracy": accuracy, "cpu": cpu}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
