"""Time a rollback end to end, as users run it and in-process, with baselines from the same run.

    .venv/bin/python -m bench.bench_rollback [--model FOLDER] [--store s3://bucket/prefix]

Starts a Prefect server the way ``bookrec up`` leaves it (its own home, a pid file naming
its URL, a free port), promotes two versions of a model into a fresh store, then times:

- ``bookrec rollback --json`` as a subprocess, the command users run (goal: <= 3 s wall
  with a server up): finding the server, the admin token and the API from the home, the
  flow run on that server, Python start-up included; rolled back and forth ``--repeat``
  times cold (``BOOKREC_WARM=0``: the command imports Prefect and the flows) and then
  warm (forked by the flow runner that ``up`` leaves running, ``cli/warm.py``);
- ``rollback_flow()`` in this process: verify the store, download and check every sha256
  (reused from the local cache when it still verifies), load and answer the golden
  queries in a separate process, move the pointer, record the decision, emit the event,
  run the reload flow.

Baselines measured in the same run: ``load_model`` in this process (the floor of "verify
and load"), an empty Prefect flow run (the orchestration overhead) and ``python -c pass``
plus ``bookrec --help`` (interpreter start-up, the command's floor). No API runs, so the
reload flow has no instance to call (``BOOKREC_SERVING_URLS`` empty). ``--model`` takes a
trained version folder (e.g. the full-data model from ``bookrec train``); without it a
synthetic hybrid is fitted. Uses ``BOOKREC_DATABASE_URL`` (migrated here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _synthetic_model(folder: Path, seed: int, n_users: int, n_books: int) -> None:
    """Fit a hybrid on random ratings with a popularity skew and save it to ``folder``."""
    import numpy as np
    import pandas as pd

    from bookrec import columns as C
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid
    from bookrec.models.persist import save_model

    rng = np.random.default_rng(seed)
    isbns = np.array([f"{i:09d}X" for i in range(n_books)])
    books = pd.DataFrame({C.ISBN: isbns, C.TITLE: [f"Title {i % 997} {i}" for i in range(n_books)],
                          C.AUTHOR: [f"Author {i % 503}" for i in range(n_books)],
                          C.PUBLISHER: ["Pub"] * n_books})
    per_user = rng.integers(3, 40, n_users)
    p = 1.0 / np.arange(1, n_books + 1) ** 0.8
    items = rng.choice(n_books, size=int(per_user.sum()), p=p / p.sum())
    ratings = pd.DataFrame({C.USER_ID: np.repeat(np.arange(1, n_users + 1), per_user),
                            C.ISBN: isbns[items], C.RATING: rng.integers(0, 11, len(items))})
    model = fit_hybrid(build_dataset(ratings, books), {"max_items": 3000, "keep": 200})
    metrics = {"ndcg@20": 0.1 + seed / 100, "coverage@20": 0.05,
               "baselines": {"most_popular": {"ndcg@20": 0.05}}}
    save_model(model, folder, data_fingerprint={"synthetic": seed}, metrics=metrics)


def _copy_with_metrics(src: Path, dst: Path, ndcg: float) -> None:
    """A second version of the same trained folder with its own manifest metrics."""
    from bookrec.artifacts import read_manifest, write_manifest

    shutil.copytree(src, dst)
    (dst / "manifest.json").unlink()
    old = read_manifest(src)
    metrics = {**old.get("metrics", {}), "ndcg@20": ndcg}
    extra = {k: v for k, v in old.items() if k not in (
        "schema_version", "kind", "params", "data_fingerprint", "code_version", "metrics",
        "created_at", "files")}
    write_manifest(dst, kind=old["kind"], params=old["params"],
                   data_fingerprint=old["data_fingerprint"], metrics=metrics, extra=extra)


def _wall(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc


def main() -> None:
    """Set up, promote twice, time the command, the flow and the baselines, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained version folder to use")
    parser.add_argument("--store", help="artifact store URI (default: a temporary folder)")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--books", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="command rollbacks to time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    home = work / "home"
    os.environ["BOOKREC_HOME"] = str(home)
    os.environ["BOOKREC_ARTIFACTS_URI"] = args.store or str(work / "store")
    os.environ["BOOKREC_SERVING_URLS"] = ""
    for name in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[name]

    from bookrec import db
    from bookrec.models.persist import load_model
    from bookrec.registry import Registry
    from bookrec.settings import get_settings
    from cli import prefect_server, processes

    settings = get_settings()
    db.upgrade(db.get_engine(settings))
    port = _free_port()
    server_env = {**prefect_server.server_env(settings), "PREFECT_HOME": str(home / "prefect")}
    api_url, _ = prefect_server.start_local_server(settings, port, server_env)
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    try:
        started = time.perf_counter()
        if args.model:
            _copy_with_metrics(args.model, work / "a", 0.10)
        else:
            _synthetic_model(work / "a", 0, args.users, args.books)
        _copy_with_metrics(work / "a", work / "b", 0.11)
        print(f"model ready in {time.perf_counter() - started:.1f} s "
              f"({sum(f.stat().st_size for f in (work / 'a').iterdir()) / 1e6:.1f} MB)")
        registry = Registry.from_settings(settings)
        for name in ("a", "b"):
            registry.add_version(work / name, f"bench-{name}")

        from prefect import flow

        from flows.promote import promote_flow
        from flows.rollback import rollback_flow

        @flow(name="bench-empty")
        def empty() -> None:
            """Nothing: the cost of running a flow at all."""

        promote_flow("bench-a")
        promote_flow("bench-b")
        t0 = time.perf_counter()
        empty()
        empty_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_model(work / "a")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = rollback_flow()
        rollback_s = time.perf_counter() - t0
        assert result["champion"] == "bench-a", result

        # The command, as a user runs it: a fresh process with only the home to go by.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        bookrec = str(Path(sys.executable).parent / "bookrec")
        python_s, _ = _wall([sys.executable, "-c", "pass"], env)
        help_s, _ = _wall([bookrec, "--help"], env)
        # Cold: the command imports Prefect and the flows itself (BOOKREC_WARM=0). Warm: the
        # flow runner that `up` (or the first flow command) leaves running forks the command.
        timings: dict[str, list[float]] = {"cold": [], "warm": []}
        n = 0
        for mode in ("cold", "warm"):
            if mode == "warm":
                from cli import warm

                warm.start_for(env)
            for _ in range(args.repeat):
                target = "bench-b" if n % 2 == 0 else "bench-a"
                n += 1
                run_env = {**env, "BOOKREC_WARM": "0"} if mode == "cold" else env
                seconds, proc = _wall([bookrec, "rollback", target, "--json"], run_env)
                out = json.loads(proc.stdout or "{}")
                if proc.returncode != 0 or out.get("champion") != target:
                    raise RuntimeError(f"bookrec rollback failed: {proc.stdout} {proc.stderr}")
                timings[mode].append(seconds)
        forked = processes.services(settings)["flow-runner"].log_file.read_text().count(" exit ")
        if forked != args.repeat:
            raise RuntimeError(f"the flow runner ran {forked} of {args.repeat} warm commands")
    finally:
        for name in ("flow-runner", "prefect-server"):
            processes.services(settings)[name].stop()
    print(f"baseline  python -c pass                {python_s:6.2f} s")
    print(f"baseline  bookrec --help                {help_s:6.2f} s")
    print(f"baseline  empty Prefect flow run        {empty_s:6.2f} s")
    print(f"baseline  load_model in-process         {load_s:6.2f} s")
    print(f"rollback  rollback_flow() wall          {rollback_s:6.2f} s")
    for mode, what in (("cold", "imports Prefect itself, BOOKREC_WARM=0"),
                       ("warm", "forked by the flow runner")):
        runs = timings[mode]
        print(f"rollback  `bookrec rollback` wall, {what}: "
              + " / ".join(f"{s:.2f}" for s in runs)
              + f" s (median {sorted(runs)[len(runs) // 2]:.2f}; goal <= 3 s with a server up)")
    print(f"load average during the run: {os.getloadavg()}")
    shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
