"""Serving benchmark: throughput and p99 with wrk on loopback, hot reload under load, memory.

Run:  .venv/bin/python bench/bench_serving.py [--duration 16] [--workers N] [--threads 4]
          [--memory-workers 4] [--max-items 5000]
      A/B of the cached paths and uncached search against the same API with another worker
      class, code tree or environment (e.g. --compare-worker-class gthread, --compare-tree ../base,
      --compare-env BOOKREC_RATE_LIMIT_SYNC_S=0), alone with --compare-only.

What it does, all in one run and on the same gunicorn configuration (serving/gunicorn_conf.py;
by default one worker per CPU):
1. fits the hybrid on the full Book-Crossing data (Kaggle CSVs; cached under --work),
   saves it as two versions in a local registry and promotes the first; loads the books
   into a fresh PostgreSQL database; uses a private Redis database for the cache;
2. baseline: a trivial Flask app returning a JSON body of the same size as the popular
   list, under the same gunicorn config. Each cached/precomputed API path (popular, warmed
   per-user lists, book details, similar) is measured in ROUNDS rounds interleaved with the
   trivial endpoint (trivial, path, path, trivial, ...; --duration seconds of each in all),
   so that both see the same periods of the machine; the ratio is the path's requests over
   the trivial's, and p99 is over all of the path's requests (pooled from wrk's percentile
   tables of the rounds, rounded up). Then uncached paths (random users and ISBNs, title
   search, and fold-in: readers with 1-100 ratings whose lists were never requested, so
   each request reads the reader's ratings from PostgreSQL and scores them), one run each. wrk -c16; both servers first get a 3 s warm-up that is not counted;
3. reload under load: steady wrk run, then a run during which the second version is
   promoted and signalled; reports failed/5xx responses, p99 vs steady, and how long
   until every worker serves the new version (from the merged /metrics);
4. memory, on a separate server with --memory-workers workers (the goal is stated for 4):
   what the model costs master + workers (the private memory loading it adds, from PSS at
   start against the same app with no model, plus the PSS of its memory-mapped files after
   traffic touched them) against the RSS one process needs to load and touch one copy; and,
   as an upper bound, total PSS after traffic minus the bare app.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import psutil
import requests
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bookrec import db  # noqa: E402
from bookrec.settings import Settings  # noqa: E402

CONF = REPO / "serving" / "gunicorn_conf.py"
VERSIONS = ("bench-a", "bench-b")
FOLDIN = "fold-in (uncached, random readers with 1-100 ratings)"


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- setup ---------------------------------------------------------------------------------
def fit_models(work: Path, max_items: int) -> tuple[Path, object, object]:
    """Fit (or reuse) the full-data model; returns (models folder, ratings, books)."""
    from fulldata import load_csv

    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid
    from bookrec.models.persist import save_model

    ratings, books = load_csv()
    models = work / f"models-{max_items}"
    if not all((models / v / "manifest.json").is_file() for v in VERSIONS):
        shutil.rmtree(models, ignore_errors=True)
        started = time.perf_counter()
        model = fit_hybrid(build_dataset(ratings, books), {"max_items": max_items})
        print(f"fit on {len(ratings):,} ratings in {time.perf_counter() - started:.0f} s")
        for version in VERSIONS:
            save_model(model, models / version, extra={"version": version})
    return models, ratings, books


def prepare_store(work: Path, models: Path) -> str:
    """A fresh local registry with both versions, the first promoted."""
    from bookrec.registry import Registry

    store = work / f"store-{uuid.uuid4().hex[:6]}"
    registry = Registry.from_settings(Settings(artifacts_uri=str(store), home=work / "home"))
    for version in VERSIONS:
        registry.add_version(models / version, version)
    registry.promote(VERSIONS[0], by="bench", reason="bench")
    return str(store)


def prepare_database(books, ratings) -> tuple[str, str]:
    """A new database on the local server with the schema, the books and the ratings (what
    ingest leaves: fold-in reads each reader's ratings from it) (admin URL, URL)."""
    import io

    admin_url = os.environ.get(
        "BENCH_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    name = f"bookrec_bench_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    db.upgrade(engine)
    frame = books.copy()
    frame["year"] = frame["year"].where(frame["year"].str.fullmatch(r"\d{1,4}"), "")
    frame["year"] = frame["year"].map(lambda y: y if y and 0 < int(y) < 32000 else "")
    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False)
    buf.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(
                "COPY books (isbn, title, author, year, publisher, image_url_s, image_url_m, "
                "image_url_l) FROM STDIN WITH (FORMAT csv)",
                buf,
            )
            buf = io.StringIO()
            ratings[["user_id", "isbn", "rating"]].to_csv(buf, index=False, header=False)
            buf.seek(0)
            cur.copy_expert("COPY ratings (user_id, isbn, rating) FROM STDIN WITH (FORMAT csv)",
                            buf)
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return admin_url, url


def drop_database(admin_url: str, url: str) -> None:
    """Drop the benchmark database."""
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# -- servers -------------------------------------------------------------------------------
class Server:
    """gunicorn with the project's config, serving ``app`` (default: the bookrec API)."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int | None,
        app: str | None,
        log: Path,
        repo: Path = REPO,
        extra_args: tuple[str, ...] = (),
    ):
        """``repo``: the checkout whose code and gunicorn config to run (another one for an
        A/B comparison); ``extra_args`` go to gunicorn after the config."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
        full_env.update(env)
        full_env["PROMETHEUS_MULTIPROC_DIR"] = str(log.with_suffix(".prom"))
        full_env["PYTHONPATH"] = f"{repo}:{REPO / 'bench'}"
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(repo / "serving" / "gunicorn_conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            *extra_args,
        ]
        if workers is not None:
            argv += ["--workers", str(workers)]
        else:  # the configuration's default: one per CPU
            workers = len(os.sched_getaffinity(0))
        if app:
            argv.append(app)
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=repo, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.workers = workers

    def wait(self, path: str = "/livez", timeout_s: float = 120) -> None:
        """Until ``path`` answers 200 and all workers are up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if (
                    requests.get(self.url + path, timeout=2).status_code == 200
                    and len(psutil.Process(self.proc.pid).children()) == self.workers
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server did not start; see {self._log.name}")

    def pss_mb(self) -> float:
        """Total PSS of the master and its workers, in MB."""
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]
        return sum(p.memory_full_info().pss for p in procs) / 2**20

    def mapped_mb(self, folder: Path) -> float:
        """PSS of the model files mapped under ``folder``, summed over master and workers."""
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]
        prefix = str(folder.resolve())
        return (
            sum(
                m.pss
                for p in procs
                for m in p.memory_maps(grouped=True)
                if m.path.startswith(prefix)
            )
            / 2**20
        )

    def stop(self) -> None:
        """Graceful stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def trivial_app():
    """The baseline: one Flask route returning a fixed JSON body (size set by the caller)."""
    from flask import Flask, Response

    body = Path(os.environ["BENCH_TRIVIAL_BODY"]).read_bytes()
    app = Flask(__name__)

    @app.get("/trivial")
    def trivial():
        return Response(body, mimetype="application/json")

    return app


# -- wrk -----------------------------------------------------------------------------------
WARMUP_S = 3
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


_PERCENTILES = [round(90 + i * 0.01, 2) for i in range(1001)]  # 90.00 ... 100.00


WRK_THREADS = 2


def wrk(
    url: str,
    paths: list[str],
    duration: float,
    connections: int = 16,
    tail: bool = False,
    distinct: bool = False,
) -> dict:
    """Run wrk over ``paths`` (round robin per thread); req/s, p99 ms, errors, and with
    ``tail`` the latency percentile table from 90 to 100 (us) for pooling several runs.
    Each thread walks its own half of ``paths`` from its start, so no path is requested
    twice until a thread has used up its half (``distinct`` says the caller relies on it)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    table = script.with_suffix(".pct")
    # percent-encoded (an HTTP request line is ASCII; Lua has no \u escapes)
    quoted = ",".join(json.dumps(urllib.parse.quote(p, safe="/?=&%+-._~")) for p in paths)
    # Each wrk thread starts at its own share of the list (an unseeded math.random gives
    # every thread the same start, so the second thread repeated the first one's requests
    # and half of an "uncached" run hit the cache).
    lua = (
        "local paths = {" + quoted + "}\nlocal threads = 0\nlocal i = 0\n"
        "setup = function(thread)\n  thread:set('offset', threads)\n  threads = threads + 1\n"
        "end\n"
        "init = function(args)\n  i = (offset or 0) * math.floor(#paths / 2)\nend\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n"
    )
    if tail:
        lua += (
            "done = function(summary, latency, requests)\n"
            f"  local f = io.open({json.dumps(str(table))}, 'w')\n"
            "  for i = 0, 1000 do f:write(latency:percentile(90 + i / 100), '\\n') end\n"
            "  f:close()\nend\n"
        )
    script.write_text(lua)
    out = subprocess.run(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99_value, p99_unit = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out).groups()
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    result = {
        "rps": rps,
        "p99_ms": float(p99_value) * _UNITS[p99_unit],
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
        "requests": total,
    }
    if tail:
        result["tail_us"] = [float(line) for line in table.read_text().split()]
        table.unlink()
    return result


def pooled_p99_ms(runs: list[dict]) -> float:
    """The 99th percentile over all requests of ``runs``, from their percentile tables.

    A run's share of requests at or under x is taken as the largest tabulated percentile
    whose latency is <= x (0 below its 90th): a lower bound, so the result rounds up."""
    total = sum(r["requests"] for r in runs)
    for x in sorted({v for r in runs for v in r["tail_us"]}):
        below = 0.0
        for r in runs:  # the table is non-decreasing: the last entry <= x by bisection
            i = bisect.bisect_right(r["tail_us"], x)
            below += r["requests"] * (_PERCENTILES[i - 1] if i else 0.0) / 100
        if below >= 0.99 * total:
            return x / 1000
    return max(r["tail_us"][-1] for r in runs) / 1000


ROUNDS = 4  # two ABBA pairs: the machine's drift over a path's rounds weighs on both sides
SEARCH_SLICE = 12_000  # distinct texts per measured search round (3,000 req/s for 4 s)
COMPARE_SEARCH = "search (uncached)"
COMPARE_SEARCH_SLICE = 5_000  # per round and server in the A/B (1,250 req/s for 4 s)


def search_queries(books, rng: random.Random) -> list[str]:
    """Distinct texts a reader might search for, shuffled: words of 3+ letters from titles
    and author names, and pairs of adjacent title words (half and half, up to 30,000 each)."""
    words: set[str] = set()
    pairs: set[str] = set()
    letters = re.compile(r"[^\W\d_]+")
    for title in books["title"].dropna():
        tokens = [t for t in letters.findall(str(title).casefold()) if len(t) >= 3]
        words.update(tokens)
        pairs.update(f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False))
    for author in books["author"].dropna():
        words.update(t for t in letters.findall(str(author).casefold()) if len(t) >= 3)
    chosen = rng.sample(sorted(words), min(30_000, len(words)))
    chosen += rng.sample(sorted(pairs), min(30_000, len(pairs)))
    rng.shuffle(chosen)
    return chosen


def interleaved(
    trivial_url: str, api_url: str, paths: list[str], duration: float, distinct: int = 0
) -> dict:
    """The path and the trivial endpoint in ROUNDS alternating rounds (ABBA order), each
    ``duration`` seconds in all; throughput ratio and pooled p99 of each. ``distinct``: each
    round of the path gets its own slice of that many ``paths`` (never requested before)."""
    step = duration / ROUNDS
    runs: dict[str, list[dict]] = {"path": [], "trivial": []}
    for i in range(ROUNDS):
        order = ("trivial", "path") if i % 2 == 0 else ("path", "trivial")
        for which in order:
            if which == "trivial":
                runs[which].append(wrk(trivial_url, ["/trivial"], step, tail=True))
                continue
            run_paths = paths[i * distinct : (i + 1) * distinct] if distinct else paths
            runs[which].append(wrk(api_url, run_paths, step, tail=True, distinct=bool(distinct)))
    out = {}
    for which, rs in runs.items():
        out[which] = {
            "rps": round(sum(r["rps"] for r in rs) / len(rs), 1),
            "p99_ms": round(pooled_p99_ms(rs), 2),
            "p99_ms_rounds": [round(r["p99_ms"], 2) for r in rs],
            "requests": sum(r["requests"] for r in rs),
            "non_2xx": sum(r["non_2xx"] for r in rs),
            "socket_errors": sum(r["socket_errors"] for r in rs),
        }
    out["path"]["ratio_to_trivial"] = round(out["path"]["requests"] / out["trivial"]["requests"], 3)
    return out


def user_lookups(url: str) -> tuple[float, float]:
    """(hits, misses) of the user-list cache so far, summed over the workers' /metrics."""
    text = requests.get(url + "/metrics", timeout=5).text
    found = []
    for name in ("bookrec_cache_hits_total", "bookrec_cache_misses_total"):
        values = re.findall(rf'^{name}\{{[^}}]*kind="user"[^}}]*\}} ([0-9.e+]+)$', text, re.M)
        found.append(sum(float(v) for v in values))
    return found[0], found[1]


def worker_versions(url: str) -> dict[str, str]:
    """pid -> served version from the merged metrics."""
    text = requests.get(url + "/metrics", timeout=5).text
    pattern = r'bookrec_model_version_info\{pid="(\d+)",version="([^"]+)"\} 1\.0'
    return dict(re.findall(pattern, text))


def model_rss_mb(folder: Path) -> float:
    """RSS growth of a fresh process that loads one copy of the model and touches it."""
    code = (
        "import sys, psutil, numpy as np\n"
        "from bookrec.models.persist import load_model\n"
        "p = psutil.Process(); before = p.memory_info().rss\n"
        f"m = load_model({str(folder)!r}, mmap=True)\n"
        "[int(np.ascontiguousarray(a).view(np.uint8).sum()) for a in m.arrays.values()]\n"
        "m.popular(10); m.recommend(int(m.user_ids[0]), 10)\n"
        "print((p.memory_info().rss - before) / 2**20)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    return float(out.strip().splitlines()[-1])


def cpu_seconds(server: Server) -> float:
    """User + system CPU seconds used so far by the server's master and workers."""
    master = psutil.Process(server.proc.pid)
    return sum(sum(p.cpu_times()[:2]) for p in [master, *master.children()])


def redis_cpu_seconds(client) -> float:
    """CPU seconds used so far by the Redis server."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def compare_servers(
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    api: Server,
    cached_paths: dict[str, list[str]],
    searches: list[str],
    servers: list[Server],
    rclient,
) -> dict:
    """A/B: the API as configured ("this") against the same API with another worker class,
    code tree or environment ("other"), on the same data, Redis and database; each cached
    path and uncached search (distinct texts) in ROUNDS interleaved rounds (ABBA),
    ``--duration`` seconds per server in all. Besides req/s and pooled p99, the CPU the
    server's processes (and the Redis server) spent per request in its rounds: on a loaded
    machine throughput follows the other load, CPU per request much less."""
    extra_env = dict(item.split("=", 1) for item in args.compare_env)
    extra_args = ("--worker-class", args.compare_worker_class) if args.compare_worker_class else ()
    other = Server(
        {**env, **extra_env},
        args.workers,
        None,
        work / "other.log",
        repo=(args.compare_tree or REPO).resolve(),
        extra_args=extra_args,
    )
    servers.append(other)
    other.wait("/readyz")
    time.sleep(2.0)  # every worker has loaded the model
    described = {
        "worker_class": args.compare_worker_class,
        "tree": str(args.compare_tree) if args.compare_tree else None,
        "env": extra_env,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "paths": {},
    }
    print(f"A/B against {described}")
    every = [p for paths in cached_paths.values() for p in paths]
    wrk(other.url, every, WARMUP_S)
    wrk(api.url, every, WARMUP_S)
    step = args.duration / ROUNDS
    # Uncached search too: each round of each server gets texts never asked before (the
    # tail of the list, which the main measurement only uses for its unmeasured warm-up).
    compared = {**cached_paths, COMPARE_SEARCH: searches[-COMPARE_SEARCH_SLICE * 2 * ROUNDS :]}
    for name, paths in compared.items():
        runs: dict[str, list[dict]] = {"this": [], "other": []}
        cpu = {"this": 0.0, "other": 0.0}
        redis_cpu = {"this": 0.0, "other": 0.0}
        for i in range(ROUNDS):
            for which in ("other", "this") if i % 2 == 0 else ("this", "other"):
                server = api if which == "this" else other
                run_paths = paths
                if name == COMPARE_SEARCH:
                    at = (2 * i + (which == "this")) * COMPARE_SEARCH_SLICE
                    run_paths = paths[at : at + COMPARE_SEARCH_SLICE]
                before, redis_before = cpu_seconds(server), redis_cpu_seconds(rclient)
                runs[which].append(wrk(server.url, run_paths, step, tail=True))
                cpu[which] += cpu_seconds(server) - before
                redis_cpu[which] += redis_cpu_seconds(rclient) - redis_before
        row = {}
        for which, rs in runs.items():
            requests_done = sum(r["requests"] for r in rs)
            row[which] = {
                "rps": round(sum(r["rps"] for r in rs) / len(rs), 1),
                "p99_ms": round(pooled_p99_ms(rs), 2),
                "requests": requests_done,
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "server_cpu_us_per_request": round(cpu[which] / requests_done * 1e6, 1),
                "redis_cpu_us_per_request": round(redis_cpu[which] / requests_done * 1e6, 1),
            }
        this, that = row["this"], row["other"]
        row["this_over_other_requests"] = round(this["requests"] / that["requests"], 3)
        described["paths"][name] = row
        print(
            f"{name}: this {this['rps']:.0f} req/s, p99 {this['p99_ms']:.1f} ms, "
            f"{this['server_cpu_us_per_request']:.0f} us server + "
            f"{this['redis_cpu_us_per_request']:.0f} us Redis CPU/request; other "
            f"{that['rps']:.0f} req/s, p99 {that['p99_ms']:.1f} ms, "
            f"{that['server_cpu_us_per_request']:.0f} + {that['redis_cpu_us_per_request']:.0f} "
            f"us; requests this/other {row['this_over_other_requests']:.3f}; non-2xx "
            f"{this['non_2xx']}/{that['non_2xx']}"
        )
    described["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    other.stop()
    servers.remove(other)
    return described


# -- main ----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=16, help="seconds of load per path")
    parser.add_argument(
        "--workers", type=int, default=None, help="API workers (default: the config's, 1 per CPU)"
    )
    parser.add_argument(
        "--memory-workers", type=int, default=4, help="workers of the memory measurement"
    )
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker")
    parser.add_argument("--max-items", type=int, default=5000, help="CF items of the model")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bookrec-bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument(
        "--compare-worker-class",
        metavar="CLASS",
        help="A/B: also run the API with this gunicorn worker class (e.g. gthread) and "
        "compare each cached path on both servers, interleaved",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        metavar="PATH",
        help="A/B: the other server runs the code of this checkout (e.g. a worktree of an "
        "earlier commit)",
    )
    parser.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A/B: extra environment of the other server (repeatable)",
    )
    parser.add_argument(
        "--compare-only", action="store_true", help="stop after the A/B comparison"
    )
    args = parser.parse_args()
    compare = bool(args.compare_worker_class or args.compare_tree or args.compare_env)
    if args.compare_only and not compare:
        parser.error("--compare-only needs --compare-worker-class, --compare-tree or --compare-env")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    models, ratings, books = fit_models(work, args.max_items)
    store = prepare_store(work, models)
    admin_url, db_url = prepare_database(books, ratings)
    channel = f"bookrec:bench:{os.getpid()}"
    env = {
        "BOOKREC_HOME": str(work / "home"),
        "BOOKREC_ARTIFACTS_URI": store,
        "BOOKREC_DATABASE_URL": db_url,
        "BOOKREC_REDIS_URL": args.redis,
        "BOOKREC_RELOAD_CHANNEL": channel,
        "BOOKREC_RATE_LIMIT": "100000000 per minute",
        "BOOKREC_MODEL_POLL_INTERVAL_S": "5",
        "BOOKREC_ADMIN_TOKEN": uuid.uuid4().hex,
        "BOOKREC_THREADS": str(args.threads),
    }
    import redis as redis_lib

    rclient = redis_lib.Redis.from_url(args.redis)
    rclient.flushdb()
    servers: list[Server] = []
    results: dict = {
        "threads": args.threads,
        "duration_s": args.duration,
        "connections": 16,
    }
    try:
        api = Server(env, args.workers, None, work / "api.log")
        servers.append(api)
        api.wait("/readyz")
        time.sleep(2.0)  # every worker has loaded the model (readyz answers from one)
        results["workers"] = api.workers
        models_dir = work / "home" / "serving" / "models"
        popular = requests.get(api.url + "/v1/books/popular?k=10", timeout=5).content
        body_file = work / "trivial.json"
        body_file.write_bytes(popular)
        trivial = Server(
            {**env, "BENCH_TRIVIAL_BODY": str(body_file)},
            args.workers,
            "bench_serving:trivial_app()",
            work / "trivial.log",
        )
        servers.append(trivial)
        trivial.wait("/trivial")

        rng = random.Random(7)
        users = sorted(set(ratings["user_id"].tolist()))
        model_isbns = [
            r["isbn"]
            for r in requests.get(api.url + "/v1/books/popular?k=100", timeout=5).json()["items"]
        ]
        warm_users = rng.sample(users, 200)
        cached_paths = {
            "popular k=10": ["/v1/books/popular?k=10"],
            "user recs (cached, 200 users)": [
                f"/v1/users/{u}/recommendations?k=10" for u in warm_users
            ],
            "book details (cached)": [f"/v1/books/{i}" for i in model_isbns],
            "similar (cached)": [f"/v1/books/{i}/similar?k=10" for i in model_isbns],
        }
        for paths in cached_paths.values():
            for path in paths:
                assert requests.get(api.url + path, timeout=30).status_code == 200, path
        all_isbns = rng.sample(sorted(set(ratings["isbn"])), 20000)
        random_users = rng.sample(users, 20000)
        # Fold-in: readers with 1..100 ratings not requested before (no cache entry exists;
        # with ~100,000 of them a run of a few thousand requests rarely repeats one).
        counts = ratings.groupby("user_id").size()
        fresh = sorted(set(counts[counts <= 100].index.tolist()) - set(random_users)
                       - set(warm_users))
        uncached_paths = {
            "user recs (uncached, random users)": [
                f"/v1/users/{u}/recommendations?k=10" for u in random_users
            ],
            FOLDIN: [f"/v1/users/{u}/recommendations?k=10" for u in fresh],
            "similar (uncached, random ISBNs)": [f"/v1/books/{i}/similar?k=10" for i in all_isbns],
        }
        searches = [f"/v1/books?q={q}" for q in search_queries(books, rng)]
        checked = [requests.get(api.url + p, timeout=30) for p in searches[-20:]]  # unmeasured
        assert all(r.status_code in (200, 503) for r in checked), [r.text for r in checked]
        print(f"search check: {[r.status_code for r in checked].count(200)} of 20 answered 200")

        if compare:
            results["compare"] = compare_servers(
                args, env, work, api, cached_paths, searches, servers, rclient
            )
            if args.compare_only:
                print(json.dumps(results, indent=1))
                return

        # Warm-up, not counted: each worker's first requests (threads spawned, Redis and
        # PostgreSQL connections opened, first cache fills) would otherwise land in the
        # first measured run's tail, whichever server or path that happens to be.
        wrk(trivial.url, ["/trivial"], WARMUP_S)
        wrk(api.url, [p for paths in cached_paths.values() for p in paths], WARMUP_S)
        results["cached"] = {}
        trivial_runs = []
        for name, paths in cached_paths.items():
            r = interleaved(trivial.url, api.url, paths, args.duration)
            results["cached"][name] = r
            trivial_runs.append(r["trivial"])
            path, base = r["path"], r["trivial"]
            print(
                f"{name}: {path['rps']:.0f} req/s ({path['ratio_to_trivial']:.2f}x the trivial "
                f"endpoint's {base['rps']:.0f} in the same rounds), p99 {path['p99_ms']:.1f} ms "
                f"(trivial {base['p99_ms']:.1f} ms), non-2xx {path['non_2xx']}"
            )
        # Uncached search beside the trivial endpoint: every request a text never asked
        # before in this run (so neither Redis nor a worker's memory holds its answer).
        wrk(api.url, searches[-SEARCH_SLICE:], WARMUP_S, distinct=True)
        r = interleaved(trivial.url, api.url, searches, args.duration, distinct=SEARCH_SLICE)
        results["search_uncached"] = r
        trivial_runs.append(r["trivial"])
        path, base = r["path"], r["trivial"]
        print(
            f"search (uncached, {SEARCH_SLICE} distinct texts per round): {path['rps']:.0f} "
            f"req/s ({path['ratio_to_trivial']:.2f}x the trivial endpoint's {base['rps']:.0f} "
            f"in the same rounds), p99 {path['p99_ms']:.1f} ms (trivial {base['p99_ms']:.1f} "
            f"ms), non-2xx {path['non_2xx']}; goal >= 1000 req/s and p99 <= 100 ms"
        )
        results["trivial_rps_range"] = [
            min(r["rps"] for r in trivial_runs),
            max(r["rps"] for r in trivial_runs),
        ]
        print(
            f"(trivial Flask JSON endpoint, {len(popular)} B: "
            f"{results['trivial_rps_range'][0]:.0f}-{results['trivial_rps_range'][1]:.0f} req/s)"
        )
        trivial.stop()
        servers.remove(trivial)
        results["uncached"] = {}
        for name, paths in uncached_paths.items():
            before = user_lookups(api.url)
            r = wrk(api.url, paths, args.duration)
            results["uncached"][name] = r
            print(
                f"{name}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, "
                f"non-2xx {r['non_2xx']} (404 for ISBNs unknown to the model count here)"
            )
            if name == FOLDIN:
                time.sleep(1.5)  # the workers fold their metric samples in once a second
                hits, misses = (a - b for a, b in zip(user_lookups(api.url), before,
                                                      strict=True))
                r["user_cache_hits"], r["user_cache_misses"] = hits, misses
                print(f"  fold-in run: {misses:.0f} uncached (computed) lists, {hits:.0f} "
                      "cache hits")

        # Reload under load: a mix of cached and uncached user lists.
        mix = cached_paths["user recs (cached, 200 users)"] + cached_paths["popular k=10"] * 50
        steady = wrk(api.url, mix, args.duration)
        results["reload_steady"] = steady
        from bookrec.registry import Registry

        registry = Registry.from_settings(Settings(artifacts_uri=store, home=work / "home"))
        converged: dict = {}

        def promote_and_watch() -> None:
            time.sleep(1.0)
            registry.promote(VERSIONS[1], by="bench", reason="reload under load")
            started = time.monotonic()
            rclient.publish(channel, json.dumps({"version": VERSIONS[1]}))
            while time.monotonic() - started < 30:
                seen = worker_versions(api.url)
                if len(seen) == api.workers and set(seen.values()) == {VERSIONS[1]}:
                    converged["seconds"] = round(time.monotonic() - started, 2)
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=promote_and_watch)
        watcher.start()
        during = wrk(api.url, mix, args.duration)
        watcher.join()
        results["reload_during"] = during
        results["reload_all_workers_s"] = converged.get("seconds")
        print(
            f"reload under load: steady p99 {steady['p99_ms']:.1f} ms / {steady['rps']:.0f} "
            f"req/s; during reload p99 {during['p99_ms']:.1f} ms "
            f"({during['p99_ms'] / steady['p99_ms']:.2f}x), {during['requests']} requests, "
            f"non-2xx {during['non_2xx']}, socket errors {during['socket_errors']}; "
            f"all {api.workers} workers on the new version after "
            f"{converged.get('seconds')} s"
        )
        api.stop()
        servers.remove(api)

        # Memory, on its own server with --memory-workers workers.
        mem = Server(env, args.memory_workers, None, work / "memory.log")
        servers.append(mem)
        mem.wait("/readyz")
        time.sleep(2.0)  # every worker has loaded the model
        pss_at_start = mem.pss_mb()
        mapped_at_start = mem.mapped_mb(models_dir)
        for paths in [*cached_paths.values(), *uncached_paths.values()]:
            wrk(mem.url, paths, 2)  # every route touches its part of the model
        with_model = mem.pss_mb()
        mapped_after = mem.mapped_mb(models_dir)
        mem.stop()
        servers.remove(mem)
        empty_store = work / f"empty-{uuid.uuid4().hex[:6]}"
        bare = Server(
            {**env, "BOOKREC_ARTIFACTS_URI": str(empty_store)},
            args.memory_workers,
            None,
            work / "bare.log",
        )
        servers.append(bare)
        bare.wait("/livez")
        time.sleep(2.0)
        without_model = bare.pss_mb()
        one_copy = model_rss_mb(models / VERSIONS[0])
        files_mb = sum(p.stat().st_size for p in (models / VERSIONS[0]).iterdir()) / 2**20
        # What the model costs the workers: the private memory loading it added (PSS at
        # start, model files excluded, minus the same app with no model) plus its file pages
        # after every route has touched them (shared through the page cache, so PSS splits
        # each page among the processes mapping it).
        private_load = (pss_at_start - mapped_at_start) - without_model
        model_cost = private_load + mapped_after
        # Upper bound: everything the served traffic grew in the workers is charged to the
        # model (response caches, allocator arenas, connection pools included).
        upper = with_model - without_model
        results["memory_mb"] = {
            "workers": args.memory_workers,
            "pss_total_at_start": round(pss_at_start, 1),
            "pss_total_after_traffic": round(with_model, 1),
            "pss_total_without_model": round(without_model, 1),
            "model_files_pss_at_start": round(mapped_at_start, 1),
            "model_files_pss_after_traffic": round(mapped_after, 1),
            "private_memory_from_loading": round(private_load, 1),
            "model_cost": round(model_cost, 1),
            "upper_bound_with_traffic_growth": round(upper, 1),
            "one_model_copy_rss": round(one_copy, 1),
            "model_files": round(files_mb, 1),
        }
        ratio = model_cost / one_copy
        results["memory_mb"]["ratio"] = round(ratio, 2)
        results["memory_mb"]["upper_bound_ratio"] = round(upper / one_copy, 2)
        # Had the traffic touched every page of the model files, they would add at most
        # their size (each page once in the page cache, split among the mappers).
        every_page = private_load + files_mb
        results["memory_mb"]["bound_every_page_touched"] = round(every_page, 1)
        results["memory_mb"]["bound_every_page_touched_ratio"] = round(every_page / one_copy, 2)
        print(
            f"memory: the model costs master+{args.memory_workers} workers {model_cost:.0f} MB "
            f"({private_load:.0f} MB private from loading + {mapped_after:.0f} MB of shared file "
            f"pages after traffic) vs {one_copy:.0f} MB for one copy in one process: "
            f"{ratio:.2f}x (goal <= 1.5x). Upper bound charging all traffic growth to the "
            f"model: PSS {with_model:.0f} MB after traffic - {without_model:.0f} MB without a "
            f"model = {upper:.0f} MB ({upper / one_copy:.2f}x); model files {files_mb:.0f} MB, "
            f"so with every page touched at most {every_page:.0f} MB "
            f"({every_page / one_copy:.2f}x)"
        )
    finally:
        for server in servers:
            server.stop()
        rclient.flushdb()
        rclient.close()
        drop_database(admin_url, db_url)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
