"""Benchmark training on the full Book-Crossing data: stage times, peak RSS, the model
vs baselines table over several split seeds with paired bootstrap intervals, segments,
model load time in a fresh process, and batch scoring speed.

    .venv/bin/python -m bench.bench_train                 # Kaggle CSVs, seeds 42,43,44
    .venv/bin/python -m bench.bench_train --source db     # the ingested PostgreSQL data
    .venv/bin/python -m bench.bench_train --seeds 42 --set l2=300 --baselines ease_plain

The first seed is the nightly run (split, fit, evaluate, refit, write; timed stage by
stage, with CPU time); the other seeds re-split, refit and re-evaluate every model.
``--variant NAME=JSON`` scores other recipes on every seed's split (with ``--eval-only``
too); recipes with the same CF (or kNN) parameters share one fitted component per split,
the served model's included, so variants that differ only in ranking parameters cost an
evaluation each. ``--dump`` keeps per-user results; ``--combine`` prints the tables of
several dumps (e.g. seed 42 from one run, 43 and 44 from another; models that every
dump holds):

    .venv/bin/python -m bench.bench_train --eval-only --seeds 42 --baselines ease_plain \
        --variant 'knn={"knn_items": 100000}' --dump /tmp/s42
    .venv/bin/python -m bench.bench_train --combine /tmp/s42 /tmp/s4344
Targets (issue 15): served NDCG@20 >= 1.2x plain EASE on the mean over seeds with the
95% interval's lower end above 1.1x, coverage@20 >= 0.11; the served model's nightly
stages <= 120 s wall on 2 cores, peak RSS <= 4 GB, load < 2 s. The baselines are
measured in the same run on the same splits.
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


REFERENCE = "ease_plain"


def seed_table(per_seed: list[dict], reference: str = REFERENCE, n_boot: int = 1000) -> list:
    """Per model: means over seeds of NDCG@20, Recall@20, coverage@20, and the paired
    bootstrap ratio to ``reference`` (NDCG@20 and Recall@20) with 95% intervals."""
    from bookrec.evaluation import paired_bootstrap_ratio

    rows = []
    for name in _common(per_seed):
        runs = [seed[name] for seed in per_seed]
        row = {"model": name, "seeds": len(runs)}
        for metric in ("ndcg@20", "recall@20", "coverage@20"):
            values = [r[metric] for r in runs]
            row[metric] = float(np.mean(values))
            row[f"{metric} sd"] = float(np.std(values))
        if reference in per_seed[0]:
            for metric in ("ndcg@20", "recall@20"):
                ratio = paired_bootstrap_ratio(
                    [r["per_user"][metric] for r in runs],
                    [seed[reference]["per_user"][metric] for seed in per_seed], n_boot=n_boot)
                row[f"{metric} ratio"] = ratio
        rows.append(row)
    return rows


def _common(per_seed: list[dict]) -> list[str]:
    """The models every seed has (combined dumps may differ), in the first seed's order."""
    return [name for name in per_seed[0] if all(name in seed for seed in per_seed)]


def segment_table(per_seed: list[dict]) -> list[dict]:
    """Per model and segment: NDCG@20 and reachability, averaged over seeds."""
    rows = []
    for name in _common(per_seed):
        segs = [seed[name]["segments"] for seed in per_seed]
        for group, label in (("readers", "readers"), ("popularity", "books")):
            for seg in segs[0][group]:
                vals = [s[group][seg] for s in segs]
                ndcg = [v["ndcg@20"] for v in vals if v["ndcg@20"] is not None]
                reach = [v["reachability"] for v in vals if v["reachability"] is not None]
                rows.append({"model": name, "segment": f"{label} {seg}",
                             "users": float(np.mean([v["users"] for v in vals])),
                             "ndcg@20": float(np.mean(ndcg)) if ndcg else None,
                             "reachability": float(np.mean(reach)) if reach else None})
    return rows


def _models_of(metrics: dict) -> dict:
    """{model name: metrics} for the served model and each baseline of one evaluation."""
    out = {"served": {k: v for k, v in metrics.items() if k != "baselines"}}
    out.update(metrics.get("baselines") or {})
    return out


def _ci(row: dict, key: str) -> str:
    """``ratio [low, high]`` or '-'."""
    if key not in row:
        return "-"
    ratio, low, high = row[key]
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]"


def _cell(value) -> str:
    """4 decimals, '-' for missing."""
    return "-" if value is None else f"{value:.4f}"


def print_tables(rows: list[dict], seg_rows: list[dict]) -> None:
    """The seed-averaged markdown tables."""
    print(f"\n| model | seeds | ndcg@20 | recall@20 | coverage@20 | NDCG@20 ratio to {REFERENCE} "
          "[95% CI] | Recall@20 ratio [95% CI] |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['seeds']} | {r['ndcg@20']:.4f} | {r['recall@20']:.4f} | "
              f"{r['coverage@20']:.4f} | {_ci(r, 'ndcg@20 ratio')} | "
              f"{_ci(r, 'recall@20 ratio')} |")
    print("\n| model | segment | users | ndcg@20 | reachability |")
    print("|---|---|---:|---:|---:|")
    for r in seg_rows:
        print(f"| {r['model']} | {r['segment']} | {r['users']:.0f} | {_cell(r['ndcg@20'])} | "
              f"{_cell(r['reachability'])} |")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print figures (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["csv", "db"], default="csv")
    parser.add_argument("--algorithm", default="ease")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--baselines", default=",".join(training.BASELINES))
    parser.add_argument("--sample-fraction", type=float, default=1.0)
    parser.add_argument("--seeds", default="42,43,44", help="split seeds; the first is nightly")
    parser.add_argument("--no-scoring", action="store_true", help="skip load/scoring figures")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help='another served recipe scored on every split, e.g. '
                             'cease=\'{"author_weight": 5}\' (overrides on top of --set)')
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--dump", type=Path, help="folder for the per-seed, per-user results")
    parser.add_argument("--eval-only", action="store_true",
                        help="only the seeds' fit + evaluate (no nightly run, no scoring)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="DUMP",
                        help="print the tables of earlier --dump folders (seeds in order)")
    args = parser.parse_args(argv)
    hyper = {}
    for item in args.set:
        name, _, raw = item.partition("=")
        hyper[name] = json.loads(raw)

    if args.combine:
        per_seed = [seed for folder in args.combine for seed in load_seeds(folder)]
        print_tables(seed_table(per_seed), segment_table(per_seed))
        return 0
    from bench.fulldata import load_csv, load_db

    wall = time.perf_counter()
    started = time.perf_counter()
    ratings, books = load_csv() if args.source == "csv" else load_db()
    load_s = time.perf_counter() - started
    print(f"loaded {len(ratings)} ratings, {len(books)} books from {args.source} in {load_s:.1f}s")

    seeds = [int(x) for x in args.seeds.split(",") if x]
    config = training.TrainConfig(
        algorithm=args.algorithm, hyperparameters=hyper, sample_fraction=args.sample_fraction,
        baselines=tuple(b for b in args.baselines.split(",") if b), seed=seeds[0],
    )
    variants = {}
    for item in args.variant:
        name, _, raw = item.partition("=")
        variants[name] = {**hyper, **json.loads(raw)}
    if args.eval_only:
        components: list[dict] | None = [] if variants else None
        per_seed = extra_seeds(ratings, books, config, seeds, components)
        if variants:
            score_variants(ratings, books, config, seeds, variants, per_seed, components)
        if args.dump:
            dump_seeds(per_seed, args.dump)
        print_tables(seed_table(per_seed), segment_table(per_seed))
        print(f"total wall: {time.perf_counter() - wall:.1f}s")
        return 0
    started, cpu = time.perf_counter(), time.process_time()
    result = training.train_model(ratings, books, config, report=lambda m: print("  " + m),
                                  per_user=True)
    train_s, train_cpu = time.perf_counter() - started, time.process_time() - cpu
    rss_train = peak_rss_mb()
    per_seed = [_models_of(result.metrics)]
    saved_metrics = _strip_per_user(result.metrics)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        started = time.perf_counter()
        training.save_candidate(
            training.TrainResult(result.model, saved_metrics, result.data_fingerprint,
                                 result.timings, result.config), folder, "bench")
        save_s = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        fresh = load_in_fresh_process(folder)
        from bookrec.models.persist import load_model

        model = load_model(folder)
        users = np.asarray(model.user_ids)
        scoring = None if args.no_scoring else batch_scoring(
            model, users[: min(len(users), 20_000)])
    del model
    result.model = None
    per_seed += extra_seeds(ratings, books, config, seeds[1:])
    if variants:
        score_variants(ratings, books, config, seeds, variants, per_seed)

    print("\nstage times, first seed (wall s / process CPU s):")
    for name, seconds in result.timings.items():
        print(f"  {name:<42} {seconds:8.1f} {result.cpu_timings.get(name, 0.0):8.1f}")
    served = {k: v for k, v in result.timings.items() if _served_stage(k, config.baselines)}
    served_cpu = sum(result.cpu_timings.get(k, 0.0) for k in served)
    nightly_s = sum(served.values()) + save_s
    print(f"  {'training + evaluation, all stages':<42} {train_s:8.1f} {train_cpu:8.1f}")
    print(f"  {'nightly: served model (split, fit, evaluate, refit) + write':<42} "
          f"{nightly_s:8.1f} {served_cpu:8.1f}   (goal <= 120 s wall)")
    ref = [v for k, v in result.timings.items() if REFERENCE in k]
    if ref:
        print(f"  {'time baseline: plain EASE fit + evaluate, same run':<42} {sum(ref):8.1f}")
    print(f"peak RSS during training: {rss_train:.0f} MB (goal <= 4,096 MB)")
    print(f"model folder: {size_mb:.0f} MB, saved in {save_s:.1f}s")
    print(f"fresh-process load: {fresh['import_and_load_s']:.2f}s (imports + verify + map), "
          f"first answer {fresh['first_answer_s'] * 1000:.0f} ms")
    if scoring:
        print(f"batch scoring: {scoring['batch_users_per_s']:.0f} users/s over "
              f"{scoring['users']} users (single calls: {scoring['single_call_users_per_s']:.0f} "
              f"users/s); the CLI's batch path (`bookrec recommend --users-file F --json`, "
              f"{scoring['cli_jobs']} forked processes): "
              f"{scoring['cli_parallel_users_per_s']:.0f} users/s")
    if args.dump:
        dump_seeds(per_seed, args.dump)
    rows, seg_rows = seed_table(per_seed), segment_table(per_seed)
    print(f"\nsplit seeds {seeds}: means over seeds; ratio = mean over seeds of "
          f"mean(model)/mean({REFERENCE}) per seed, 95% paired bootstrap over users")
    print_tables(rows, seg_rows)
    served_row = next((r for r in rows if r["model"] == "served"), None)
    if served_row and "ndcg@20 ratio" in served_row:
        ratio, low, _ = served_row["ndcg@20 ratio"]
        ok = ratio >= 1.2 and low > 1.1 and served_row["coverage@20"] >= 0.11
        print(f"\nquality goal (NDCG@20 >= 1.2x {REFERENCE}, lower end > 1.1x, coverage@20 >= "
              f"0.11): {'met' if ok else 'not met'} (x{ratio:.3f}, lower end x{low:.3f}, "
              f"coverage {served_row['coverage@20']:.4f})")
    print(f"total wall: {time.perf_counter() - wall:.1f}s")
    if args.json:
        args.json.write_text(json.dumps({
            "seeds": seeds, "timings": result.timings, "cpu_timings": result.cpu_timings,
            "train_s": train_s, "train_cpu_s": train_cpu, "nightly_s": nightly_s,
            "peak_rss_mb": rss_train, "model_mb": size_mb, "fresh_load": fresh,
            "scoring": scoring, "table": rows, "segments": seg_rows,
            "metrics_first_seed": saved_metrics, "config": {"algorithm": args.algorithm, **hyper},
        }, indent=2, default=float))
    return 0


def dump_seeds(per_seed: list[dict], folder: Path) -> None:
    """Per-user arrays as .npy and the rest as JSON, to recompute the tables later."""
    folder.mkdir(parents=True, exist_ok=True)
    rest = []
    for s, models in enumerate(per_seed):
        rest.append({})
        for name, values in models.items():
            for metric, arr in (values.get("per_user") or {}).items():
                np.save(folder / f"{s}_{name}_{metric}.npy", arr)
            rest[s][name] = {k: v for k, v in values.items() if k != "per_user"}
    (folder / "seeds.json").write_text(json.dumps(rest, default=float))


def load_seeds(folder: Path) -> list[dict]:
    """What ``dump_seeds`` wrote."""
    per_seed = json.loads((folder / "seeds.json").read_text())
    for s, models in enumerate(per_seed):
        for name, values in models.items():
            values["per_user"] = {
                metric: np.load(folder / f"{s}_{name}_{metric}.npy")
                for metric in ("ndcg@20", "recall@20")
                if (folder / f"{s}_{name}_{metric}.npy").exists()
            }
    return per_seed


def _served_stage(name: str, baselines) -> bool:
    """True for the stages the nightly run pays for the served model."""
    if "shared" in name or "champion" in name:
        return "shared" in name
    return not any(b in name for b in baselines)


def _strip_per_user(metrics: dict) -> dict:
    """A copy of the metrics without the per-user arrays (not JSON)."""
    out = {k: v for k, v in metrics.items() if k != "per_user"}
    if "baselines" in out:
        out["baselines"] = {n: {k: v for k, v in b.items() if k != "per_user"}
                            for n, b in out["baselines"].items()}
    return out


def _dataset(ratings, books, config):
    """The benchmark's dataset (the same users the training run sampled)."""
    from bookrec.models.dataset import build_dataset

    return build_dataset(training.sample_users(ratings, config.sample_fraction, config.seed),
                         books)


def _split(dataset, config, seed):
    """The holdout of ``seed`` as the training run draws it."""
    from bookrec.evaluation import holdout_split

    return holdout_split(dataset.matrix, min_interactions=config.min_interactions,
                         test_fraction=config.test_fraction, seed=seed,
                         cold_users=config.cold_test_users)


def score_variants(ratings, books, config, seeds, variants: dict, per_seed: list,
                   components: list[dict] | None = None) -> None:
    """Fit and score each variant recipe on every seed's split; rows added in place.

    Variants that share the CF (or kNN) parameters share one fitted component per split
    (``fit.component_keys``; ``components[s]`` may hold the served model's, from
    ``extra_seeds``), so ranking-only variants (blend weights, slots) cost an evaluation,
    not a fit."""
    from bookrec.models.fit import component_keys, fit_cf, fit_hybrid, fit_knn
    from bookrec.models.hybrid import HybridParams

    dataset = _dataset(ratings, books, config)
    for s, (seed, models) in enumerate(zip(seeds, per_seed, strict=True)):
        split = _split(dataset, config, seed)
        train_ds = dataset.with_matrix(split.train)
        cache: dict = components[s] if components else {}
        for name, overrides in variants.items():
            started = time.perf_counter()
            params = HybridParams.from_dict({"cf_algorithm": config.algorithm, **overrides})
            cf_key, knn_key = component_keys(params)
            if ("cf", cf_key) not in cache:
                cache[("cf", cf_key)] = fit_cf(train_ds, params)
            if ("knn", knn_key) not in cache:
                cache[("knn", knn_key)] = fit_knn(train_ds, params)
            fitted = time.perf_counter() - started
            model = fit_hybrid(train_ds, params, cf_model=cache[("cf", cf_key)],
                               knn_model=cache[("knn", knn_key)])
            models[name] = training._evaluate_model(model, split, per_user=True)
            print(f"  seed {seed}: variant {name} fit + evaluate "
                  f"{time.perf_counter() - started:.1f}s (components {fitted:.1f}s), "
                  f"ndcg@20 {models[name]['ndcg@20']:.4f}, "
                  f"coverage@20 {models[name]['coverage@20']:.4f}", flush=True)
            del model
        cache.clear()


def extra_seeds(ratings, books, config, seeds: list[int],
                components: list[dict] | None = None) -> list[dict]:
    """Every model re-fitted and re-evaluated on the splits of ``seeds`` (no refit).
    ``components``: a list that receives, per seed, the served model's fitted
    components (for ``score_variants``)."""
    from dataclasses import replace

    out = []
    if not seeds:
        return out
    dataset = _dataset(ratings, books, config)
    for seed in seeds:
        cfg = replace(config, seed=seed)
        split = _split(dataset, cfg, seed)
        timer = training._Timer(lambda m, s=seed: print(f"  seed {s}: {m}", flush=True))
        cache = {} if components is not None else None
        out.append(_models_of(training.evaluate_models(dataset, split, cfg, timer,
                                                       per_user=True, components=cache)))
        if components is not None:
            components.append(cache)
    return out


if __name__ == "__main__":
    sys.exit(main())
