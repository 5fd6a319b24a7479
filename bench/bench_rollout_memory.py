"""Memory of a gunicorn serving a rollout: the champion and a candidate in every worker.

Run:  .venv/bin/python bench/bench_rollout_memory.py --champion DIR --candidate DIR
          [--workers 4] [--requests 3000] [--work /tmp/bookrec-rollout-mem]
      .venv/bin/python bench/bench_rollout_memory.py --fit-full [--half-data] [--max-items 5000]

``--fit-full`` fits two hybrids on the full Book-Crossing data (Kaggle CSVs, cached under
--work): the champion with the default parameters and a candidate with another L2 and
dropout, as a nightly retrain with a new recipe would be (with ``--half-data``: the default
recipe on the ratings of half the readers, so that fewer arrays are the same); otherwise
give two saved model folders. The issue's goal: with 4 workers, the memory while a rollout runs is at most 2.2x
one copy of the model.

Steps, all on the project's gunicorn configuration with --workers workers, a fresh
PostgreSQL database (schema only: readers' lists come from their training histories) and
no Redis (each worker's in-process cache):

1. champion alone: traffic (--requests user lists of random readers, popular, similar),
   then total PSS of master + workers and the PSS of the mapped model files;
2. a rollout starts (interleave 0.5, canary 0.5: every reader is served by the candidate,
   interleaved or alone, so both models are touched); the same traffic; the same figures;
3. the same app with no model (empty store): the bare PSS;
4. one copy: the RSS a fresh process adds by loading the champion and touching every page.

Reported, as ``bench_serving.py`` does for one model: what the models cost master +
workers = the private memory loading each added (PSS, mapped model files excluded: for the
champion against the bare app, for the candidate against the moment before the rollout
started) plus the PSS of the mapped model files after the traffic (pages shared through
the page cache, split among the processes mapping them), over one copy. As bounds: every
page of both models' files touched (their distinct bytes; hard links count once), and the
total PSS after the traffic minus the bare app (charges all traffic growth, caches and
allocator arenas included, to the models). And how many of the candidate's bytes are hard
links to the champion's files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_serving import Server, model_rss_mb  # noqa: E402

from bookrec import db  # noqa: E402


def fit_full(work: Path, max_items: int, half_data: bool) -> tuple[Path, Path]:
    """Fit (or reuse) the full-data champion and candidate; their folders. The candidate
    differs by its L2 and dropout, or with ``half_data`` by its data (half the readers)."""
    from fulldata import load_csv

    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid
    from bookrec.models.persist import save_model

    folders = {
        "champion": (work / f"full-{max_items}-champion", {"max_items": max_items}),
        "candidate": (
            work / f"full-{max_items}-{half_data and 'half' or 'candidate'}",
            {"max_items": max_items} if half_data
            else {"max_items": max_items, "l2": 200.0, "dropout": 0.1},
        ),
    }
    missing = [k for k, (f, _) in folders.items() if not (f / "manifest.json").is_file()]
    if missing:
        ratings, books = load_csv()
        for name in missing:
            folder, params = folders[name]
            data = ratings
            if name == "candidate" and half_data:  # the ratings of every other reader
                data = ratings[ratings["user_id"] % 2 == 0]
            shutil.rmtree(folder, ignore_errors=True)
            started = time.perf_counter()
            model = fit_hybrid(build_dataset(data, books), params)
            print(f"{name}: fit in {time.perf_counter() - started:.0f} s", flush=True)
            save_model(model, folder, extra={"version": f"mem-{name}"})
    return folders["champion"][0], folders["candidate"][0]


def traffic(url: str, users: list[int], isbns: list[str], n: int, seed: int) -> int:
    """``n`` requests over 8 threads (user lists, popular, similar); non-200 answers."""
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        if i % 10 == 0:
            paths.append("/v1/books/popular?k=10")
        elif i % 10 == 1:
            paths.append(f"/v1/books/{rng.choice(isbns)}/similar?k=10")
        else:
            paths.append(f"/v1/users/{rng.choice(users)}/recommendations?k=10")

    def get(path: str) -> int:
        return requests.get(url + path, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(get, paths))
    return sum(s not in (200, 404) for s in statuses)


def shared_bytes(local: Path, champion: str, candidate: str) -> tuple[int, int]:
    """(bytes of the candidate's files that are hard links to the champion's, all bytes)."""
    shared = total = 0
    for path in (local / candidate).iterdir():
        size = path.stat().st_size
        total += size
        if any(
            other.stat().st_ino == path.stat().st_ino for other in (local / champion).iterdir()
        ):
            shared += size
    return shared, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--champion", type=Path)
    parser.add_argument("--candidate", type=Path)
    parser.add_argument("--fit-full", action="store_true")
    parser.add_argument("--half-data", action="store_true",
                        help="with --fit-full: a candidate fitted on half the readers")
    parser.add_argument("--max-items", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bookrec-rollout-mem"))
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.fit_full:
        args.champion, args.candidate = fit_full(work, args.max_items, args.half_data)
    if not (args.champion and args.candidate):
        parser.error("give --champion and --candidate, or --fit-full")

    from bookrec.models.persist import load_model
    from bookrec.registry import Registry
    from bookrec.settings import Settings

    run = work / f"run-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    store = run / "store"
    registry = Registry.from_settings(Settings(artifacts_uri=str(store), home=run / "home"))
    versions = {}
    for name, folder in (("champion", args.champion), ("candidate", args.candidate)):
        version = json.loads((folder / "manifest.json").read_text()).get("version") or folder.name
        registry.add_version(folder, version)
        versions[name] = version
    registry.promote(versions["champion"], by="bench", reason="bench")
    model = load_model(args.champion)
    rng = random.Random(3)
    users = rng.sample([int(u) for u in model.user_ids], min(20000, len(model.user_ids)))
    isbns = [r.isbn for r in model.popular(200)]
    del model

    admin_url = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    name = f"bookrec_rollout_mem_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    db.upgrade(engine)
    engine.dispose()
    env = {
        "BOOKREC_HOME": str(run / "home"),
        "BOOKREC_ARTIFACTS_URI": str(store),
        "BOOKREC_DATABASE_URL": url,
        "BOOKREC_RATE_LIMIT": "100000000 per minute",
        "BOOKREC_MODEL_POLL_INTERVAL_S": "1",
        "BOOKREC_ADMIN_TOKEN": uuid.uuid4().hex,
    }
    local = run / "home" / "serving" / "models"
    results: dict = {"workers": args.workers, "requests_per_phase": args.requests,
                     "versions": versions}
    servers: list[Server] = []
    try:
        api = Server(env, args.workers, None, run / "api.log")
        servers.append(api)
        api.wait("/readyz")
        time.sleep(2.0)
        at_start = {"pss": api.pss_mb(), "mapped": api.mapped_mb(local)}
        bad = traffic(api.url, users, isbns, args.requests, 1)
        champion_alone = {"pss": api.pss_mb(), "mapped": api.mapped_mb(local), "failed": bad}

        registry.start_rollout(
            versions["candidate"], interleave=0.5, canary=0.5, started_by="bench"
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            text = requests.get(api.url + "/metrics", timeout=5).text
            if text.count("bookrec_rollout_info{") >= args.workers and " 0.0" not in "".join(
                line for line in text.splitlines() if line.startswith("bookrec_rollout_info{")
            ):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the workers did not all load the candidate")
        time.sleep(1.0)
        loaded = {"pss": api.pss_mb(), "mapped": api.mapped_mb(local)}
        bad = traffic(api.url, users, isbns, args.requests, 2)
        with_rollout = {"pss": api.pss_mb(), "mapped": api.mapped_mb(local), "failed": bad}
        shared, total = shared_bytes(local, versions["champion"], versions["candidate"])
        champion_files = sum(p.stat().st_size for p in (local / versions["champion"]).iterdir())
        api.stop()
        servers.remove(api)

        bare = Server({**env, "BOOKREC_ARTIFACTS_URI": str(run / "empty")}, args.workers, None,
                      run / "bare.log")
        servers.append(bare)
        bare.wait("/livez")
        time.sleep(2.0)
        bare_pss = bare.pss_mb()
        bare.stop()
        servers.remove(bare)
        one_copy = model_rss_mb(args.champion)
        one_candidate = model_rss_mb(args.candidate)
        private_champion = (at_start["pss"] - at_start["mapped"]) - bare_pss
        private_candidate = (loaded["pss"] - loaded["mapped"]) - (
            champion_alone["pss"] - champion_alone["mapped"]
        )
        cost_alone = private_champion + champion_alone["mapped"]
        cost_rollout = private_champion + private_candidate + with_rollout["mapped"]
        every_page = private_champion + private_candidate + (
            champion_files + total - shared
        ) / 2**20

        def r(x: float) -> float:
            return round(x, 1)

        results.update(
            one_copy_rss_mb=r(one_copy),
            one_candidate_copy_rss_mb=r(one_candidate),
            bare_pss_mb=r(bare_pss),
            at_start={k: r(v) for k, v in at_start.items()},
            champion_alone={k: r(v) for k, v in champion_alone.items()},
            candidate_loaded={k: r(v) for k, v in loaded.items()},
            with_rollout={k: r(v) for k, v in with_rollout.items()},
            private_from_loading={"champion": r(private_champion),
                                  "candidate": r(private_candidate)},
            model_cost={"champion_alone": r(cost_alone), "with_rollout": r(cost_rollout)},
            ratio={"champion_alone": round(cost_alone / one_copy, 2),
                   "with_rollout": round(cost_rollout / one_copy, 2)},
            bound_every_page_touched_ratio=round(every_page / one_copy, 2),
            upper_bound_all_growth_ratio=round((with_rollout["pss"] - bare_pss) / one_copy, 2),
            candidate_bytes_shared_with_champion=f"{shared / 2**20:.1f} of {total / 2**20:.1f} MB",
        )
        print(
            f"{args.workers} workers: the models cost {cost_alone:.0f} MB with the champion "
            f"alone ({cost_alone / one_copy:.2f}x one copy of {one_copy:.0f} MB) and "
            f"{cost_rollout:.0f} MB with the rollout ({cost_rollout / one_copy:.2f}x; goal <= "
            f"2.2x): private from loading {private_champion:.0f} + {private_candidate:.0f} MB, "
            f"mapped files {with_rollout['mapped']:.0f} MB PSS after traffic. Bounds: every page "
            f"touched {every_page / one_copy:.2f}x; all growth since the bare app "
            f"{results['upper_bound_all_growth_ratio']}x. Candidate files shared with the "
            f"champion: {results['candidate_bytes_shared_with_champion']}"
        )
    finally:
        for server in servers:
            server.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(run, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
