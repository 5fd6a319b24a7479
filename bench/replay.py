"""Replay readers from a held-out split through the real API, and run rollout scenarios.

    # once: split the full data, fit the models, score them offline (nice -n 10)
    .venv/bin/python -m bench.replay prepare --work /tmp/bookrec-replay
    # one scenario end to end (a: most-popular vs hybrid, b: hybrid on all vs half the
    # data, c: a candidate failing 5% of requests)
    .venv/bin/python -m bench.replay scenario a --work /tmp/bookrec-replay
    # only the traffic, against a running API
    .venv/bin/python -m bench.replay replay --api http://127.0.0.1:8000 --key KEY \\
        --truth /tmp/bookrec-replay/truth.json --rate 20 --duration 300

**Readers.** Each replayed reader GETs ``/v1/users/<id>/recommendations`` (with the key,
so the reader's variant is served as in production), then rates ``--ratings-per-reader``
books from their held-out truth: with probability ``--p-shown`` a held-out book the list
showed them (if any is left), else a held-out book they "found elsewhere" (not shown).
Each rating is POSTed with the key and the list's ``request_id`` (``X-Request-Id``), so
attribution, and with it the interleaving credit, works as in production. Requests are
paced by one token bucket at ``--rate`` requests/s over ``--threads`` threads. The report
counts requests and failures by kind (a failure is any answer that is not 2xx; answers the
test-only fault switch injected are counted apart) and per model version served.

**Prepare.** The Book-Crossing ratings (``bench/fulldata.py``) are split per reader with
``bookrec.evaluation.holdout_split`` (readers with >= 10 interactions keep 80% for
training, 20% held out; seed 42). On the training part it fits: ``hybrid-all`` (the
project's hybrid on all training ratings), ``hybrid-half`` (the same on a seeded half of
them) and ``most-popular`` (the same package with no CF component and no content fill,
so every list is the popularity list minus what the reader rated). Each is scored offline
on ``--eval-readers`` held-out readers (NDCG@20, hit rate@10, with the reader's training
ratings as history, as serving folds them in) and saved as a version folder. The truth
(held-out books with a catalogue row, per reader) and the training ratings are written
next to them.

**Scenario.** A fresh database (training ratings, books), artifact store, Prefect server
(started the way ``bookrec up`` does) and gunicorn API; the champion promoted; an API key
from ``bookrec apikeys create``; then ``bookrec rollout CANDIDATE --wait`` while readers
are replayed until it decides. Reports the decision, time to decision, readers used,
the online figures per variant and the order of online hit rate against offline NDCG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VERSIONS = {"hybrid-all": "replay-hybrid-all", "hybrid-half": "replay-hybrid-half",
            "most-popular": "replay-most-popular",
            # the same model as hybrid-all under another version (a manifest names its version)
            "hybrid-all-faulty": "replay-hybrid-all-faulty"}
# name: (champion, candidate, fault rate injected on the candidate)
SCENARIOS = {
    "a": ("hybrid-all", "most-popular", 0.0),
    "b": ("hybrid-half", "hybrid-all", 0.0),
    "c": ("hybrid-all", "hybrid-all-faulty", 0.05),
}
EXPECTED = {"a": "rollout_rolled_back", "b": "promoted", "c": "rollout_rolled_back"}
FAULT_ENV = "BOOKREC_TEST_FAULT_VERSION_ERROR_RATE"


# ---- the replay client ------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second, shared by threads (bursts of at most one second)."""

    def __init__(self, rate: float):
        self.rate = float(rate)
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, stop: threading.Event) -> bool:
        """Wait for a token; False if ``stop`` was set meanwhile."""
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - 1.0) + 1.0 / self.rate
            wait = self._next - now
        if wait > 0:
            return not stop.wait(wait)
        return not stop.is_set()


@dataclass
class ReplayReport:
    """What a replay did: requests and failures by kind, per served version, readers."""

    readers: int = 0
    requests: Counter = field(default_factory=Counter)  # "GET 200", "POST 201", ...
    failures: Counter = field(default_factory=Counter)  # non-2xx not injected, by kind
    injected: int = 0  # non-2xx the fault switch injected
    exceptions: Counter = field(default_factory=Counter)  # transport errors
    versions: Counter = field(default_factory=Counter)  # X-Model-Version of lists
    variants: Counter = field(default_factory=Counter)  # X-Rollout-Variant, if sent
    shown_hits: int = 0  # ratings of a held-out book the list showed
    elsewhere: int = 0  # ratings of a held-out book not shown
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain dict with latency percentiles instead of the samples."""
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        total = sum(self.requests.values())
        return {
            "readers": self.readers, "requests": total, "seconds": round(self.seconds, 1),
            "rate": round(total / self.seconds, 2) if self.seconds else None,
            "by_kind": dict(self.requests), "failures": sum(self.failures.values()),
            "failures_by_kind": dict(self.failures), "injected_faults": self.injected,
            "transport_errors": dict(self.exceptions),
            "lists_by_version": dict(self.versions), "lists_by_variant": dict(self.variants),
            "ratings_of_shown_books": self.shown_hits, "ratings_found_elsewhere": self.elsewhere,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
        }


class Replayer:
    """Replays readers (``truth``: reader id -> {held-out ISBN: rating}) against ``api``."""

    def __init__(self, api: str, key: str, truth: dict[int, dict[str, int]], *, rate: float,
                 p_shown: float = 0.9, ratings_per_reader: int = 2, k: int = 10,
                 threads: int = 8, seed: int = 0, timeout_s: float = 30.0,
                 readers: list[int] | None = None):
        self.api = api.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"}
        self.truth = truth
        self.bucket = TokenBucket(rate)
        self.p_shown = p_shown
        self.ratings_per_reader = ratings_per_reader
        self.k = k
        self.threads = threads
        self.timeout_s = timeout_s
        order = list(readers if readers is not None else truth)
        random.Random(seed).shuffle(order)
        self._order = order
        self._next = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed + 1)
        self.report = ReplayReport()

    def _take_reader(self) -> int:
        with self._lock:
            uid = self._order[self._next % len(self._order)]
            self._next += 1
            self.report.readers += 1
            return uid

    def _count(self, method: str, response: Any, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            self.report.requests[f"{method} {response.status_code}"] += 1
            self.report.latencies_ms.append(ms)
            if len(self.report.latencies_ms) > 200_000:  # bounded: keep a thinned sample
                del self.report.latencies_ms[::2]
            if not 200 <= response.status_code < 300:
                code = ""
                with contextlib.suppress(ValueError, AttributeError):
                    code = (response.json().get("error") or {}).get("code", "")
                if code == "injected_fault":
                    self.report.injected += 1
                else:
                    self.report.failures[f"{method} {response.status_code} {code}".strip()] += 1

    def _visit(self, session: Any, stop: threading.Event) -> None:
        import requests

        uid = self._take_reader()
        truth = self.truth.get(uid) or {}
        if not self.bucket.take(stop):
            return
        started = time.perf_counter()
        try:
            response = session.get(f"{self.api}/v1/users/{uid}/recommendations",
                                   params={"k": self.k}, headers=self.headers,
                                   timeout=self.timeout_s)
        except requests.RequestException as exc:
            with self._lock:
                self.report.exceptions[f"GET {type(exc).__name__}"] += 1
            return
        self._count("GET", response, started)
        if response.status_code != 200:
            return
        shown = [item["isbn"] for item in response.json().get("items", [])]
        request_id = response.headers.get("X-Request-Id")
        with self._lock:
            self.report.versions[response.headers.get("X-Model-Version", "?")] += 1
            variant = response.headers.get("X-Rollout-Variant")
            if variant:
                self.report.variants[variant] += 1
        rated: set[str] = set()
        for _ in range(self.ratings_per_reader):
            hits = [b for b in shown if b in truth and b not in rated]
            rest = [b for b in truth if b not in rated and b not in shown]
            with self._lock:
                pick_shown = bool(hits) and (self._rng.random() < self.p_shown or not rest)
                if not hits and not rest:
                    break
                isbn = self._rng.choice(hits) if pick_shown else self._rng.choice(rest)
                if pick_shown:
                    self.report.shown_hits += 1
                else:
                    self.report.elsewhere += 1
            rated.add(isbn)
            body = {"isbn": isbn, "rating": int(truth[isbn])}
            if request_id:
                body["request_id"] = request_id
            if not self.bucket.take(stop):
                return
            started = time.perf_counter()
            try:
                answer = session.post(f"{self.api}/v1/users/{uid}/ratings", json=body,
                                      headers=self.headers, timeout=self.timeout_s)
            except requests.RequestException as exc:
                with self._lock:
                    self.report.exceptions[f"POST {type(exc).__name__}"] += 1
                continue
            self._count("POST", answer, started)

    def run(self, stop: threading.Event, duration_s: float | None = None,
            max_readers: int | None = None) -> ReplayReport:
        """Replay until ``stop`` is set, ``duration_s`` passed or ``max_readers`` visited
        (readers are cycled if the truth runs out)."""
        import requests

        started = time.monotonic()
        deadline = started + duration_s if duration_s else None

        def worker() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    if max_readers is not None and self.report.readers >= max_readers:
                        return
                    self._visit(session, stop)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.report.seconds = time.monotonic() - started
        return self.report


def load_truth(path: Path) -> dict[int, dict[str, int]]:
    """The truth file: ``{"readers": {"<id>": {"<isbn>": rating}}}``."""
    data = json.loads(Path(path).read_text())
    return {int(uid): books for uid, books in data["readers"].items()}


# ---- models -----------------------------------------------------------------------------


class NoCF:
    """A CF component with no items: every list falls to the popularity ranking."""

    def __init__(self) -> None:
        import numpy as np
        import scipy.sparse as sp

        self.items_ = np.empty(0, np.int32)
        self.weights_ = sp.csr_matrix((0, 0), dtype=np.float32)


def fit_most_popular(dataset: Any, params: dict[str, Any] | None = None) -> Any:
    """The served package with popularity only: no CF items, content fill switched off
    (a similarity above 1 is never reached), so lists are the popular books the reader has
    not read."""
    from bookrec.models.fit import fit_hybrid

    return fit_hybrid(dataset, {**(params or {}), "content_fill_min_similarity": 2.0,
                                "content_slots": 0, "knn_items": 0},
                      cf_model=NoCF())


def offline_scores(model: Any, histories: list[dict[str, int]], truth: list[set[str]],
                   k: int = 20, hit_k: int = 10) -> dict[str, float]:
    """NDCG@k and hit rate@hit_k of ``model`` on readers' held-out books, with their
    training ratings as history (as serving folds a reader's ratings in)."""
    import numpy as np

    ndcg, hits = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for start in range(0, len(histories), 512):
        lists = model.recommend_histories(histories[start:start + 512], k=k, reasons=False)
        for recs, relevant in zip(lists, truth[start:start + 512], strict=True):
            isbns = [r.isbn for r in recs]
            gains = np.array([1.0 if b in relevant else 0.0 for b in isbns[:k]])
            ideal = discounts[: min(len(relevant), k)].sum()
            ndcg.append(float((gains * discounts[: len(gains)]).sum() / ideal) if ideal else 0.0)
            hits.append(1.0 if any(b in relevant for b in isbns[:hit_k]) else 0.0)
    return {f"ndcg@{k}": float(np.mean(ndcg)), f"hit@{hit_k}": float(np.mean(hits)),
            "readers": float(len(ndcg))}


def prepare(work: Path, *, seed: int = 42, eval_readers: int = 3000,
            params: dict[str, Any] | None = None, data: Path | None = None) -> dict[str, Any]:
    """Split, fit the three models, score them offline, write truth, ratings and versions."""
    import numpy as np
    import pandas as pd

    from bench.fulldata import KAGGLE, load_csv
    from bookrec import columns as C
    from bookrec.evaluation import holdout_split
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid
    from bookrec.models.persist import save_model

    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.monotonic()
    ratings, books = load_csv(data or KAGGLE)
    full = build_dataset(ratings, books)
    split = holdout_split(full.matrix, min_interactions=10, test_fraction=0.2, seed=seed)
    timings["load_split_s"] = time.monotonic() - t

    def frame(matrix) -> pd.DataFrame:
        coo = matrix.tocoo()
        return pd.DataFrame({C.USER_ID: np.asarray(full.user_ids)[coo.row].astype(np.int64),
                             C.ISBN: np.asarray(full.isbns)[coo.col],
                             C.RATING: (coo.data - 1).astype(np.int16)})

    train, test = frame(split.train), frame(split.test)
    catalogued = set(books[C.ISBN])
    test = test[test[C.ISBN].isin(catalogued)]
    truth = {int(uid): dict(zip(g[C.ISBN], g[C.RATING].astype(int), strict=True))
             for uid, g in test.groupby(C.USER_ID)}
    (work / "truth.json").write_text(json.dumps(
        {"seed": seed, "readers": {str(u): b for u, b in truth.items()}}))
    train.to_csv(work / "train_ratings.csv.gz", index=False)
    books.to_csv(work / "books.csv.gz", index=False)

    rng = np.random.default_rng(seed)
    readers = sorted(truth)
    sample = sorted(rng.choice(readers, size=min(eval_readers, len(readers)), replace=False))
    by_user = {int(u): dict(zip(g[C.ISBN], g[C.RATING].astype(int), strict=True))
               for u, g in train[train[C.USER_ID].isin(sample)].groupby(C.USER_ID)}
    histories = [by_user.get(int(u), {}) for u in sample]
    relevant = [set(truth[int(u)]) for u in sample]

    half = train.sample(frac=0.5, random_state=seed)
    fits = {
        "hybrid-all": lambda: fit_hybrid(build_dataset(train, books), params),
        "hybrid-half": lambda: fit_hybrid(build_dataset(half, books), params),
        "most-popular": lambda: fit_most_popular(build_dataset(train, books), params),
    }
    out: dict[str, Any] = {"readers": len(truth), "train_ratings": len(train),
                           "held_out_ratings": int(len(test)), "models": {}}
    for name, fit in fits.items():
        folder = work / "models" / VERSIONS[name]
        if (folder / "manifest.json").is_file():
            for copy in [name] + (["hybrid-all-faulty"] if name == "hybrid-all" else []):
                manifest = work / "models" / VERSIONS[copy] / "manifest.json"
                out["models"][copy] = json.loads(manifest.read_text())["metrics"]
            continue
        t = time.monotonic()
        model = fit()
        timings[f"fit_{name}_s"] = time.monotonic() - t
        t = time.monotonic()
        scores = offline_scores(model, histories, relevant)
        timings[f"score_{name}_s"] = time.monotonic() - t
        metrics = {**scores, "coverage@20": 0.01,  # the gate needs one; not used here
                   "baselines": {"most_popular": {"ndcg@20": 0.0}}}
        copies = [name] + (["hybrid-all-faulty"] if name == "hybrid-all" else [])
        for copy in copies:
            target = work / "models" / VERSIONS[copy]
            if target.exists():
                shutil.rmtree(target)
            save_model(model, target, data_fingerprint={"ratings": len(train), "seed": seed},
                       metrics=metrics, extra={"version": VERSIONS[copy]})
            out["models"][copy] = metrics
        del model
    out["timings"] = {k: round(v, 1) for k, v in timings.items()}
    (work / "prepared.json").write_text(json.dumps(out, indent=2))
    return out


def simulate(work: Path, champion: str, candidate: str, *, readers: int = 2000, k: int = 10,
             p_shown: float = 0.9, ratings_per_reader: int = 2, level: float = 0.9875,
             seed: int = 0) -> dict[str, Any]:
    """Offline preview of an interleaving scenario (no API): each sampled reader's two lists
    from their training ratings, team-draft interleaved (``bookrec.rollout.team_draft``),
    rated as the replay does; returns the share of readers with a credit, the mean
    per-reader preference for the candidate and its spread, and roughly how many readers
    with a credit the rule needs to decide at ``level`` (normal approximation)."""
    import gzip

    import numpy as np
    import pandas as pd

    from bookrec import columns as C
    from bookrec.models.persist import load_model
    from bookrec.rollout import team_draft

    truth = load_truth(work / "truth.json")
    rng = random.Random(seed)
    sample = rng.sample(sorted(truth), min(readers, len(truth)))
    with gzip.open(work / "train_ratings.csv.gz", "rt") as f:
        train = pd.read_csv(f, dtype={C.ISBN: str})
    train = train[train[C.USER_ID].isin(sample)]
    hist = {int(u): dict(zip(g[C.ISBN], g[C.RATING].astype(int), strict=True))
            for u, g in train.groupby(C.USER_ID)}
    lists = {}
    for name in (champion, candidate):
        model = load_model(work / "models" / VERSIONS[name])
        recs = model.recommend_histories([hist.get(u, {}) for u in sample], k=k, reasons=False)
        lists[name] = [[r.isbn for r in rs] for rs in recs]
        del model
    prefs = []
    for i, uid in enumerate(sample):
        mixed = team_draft(lists[champion][i], lists[candidate][i], k, f"sim:{uid}")
        team = dict(mixed)
        shown = [b for b, _ in mixed]
        held, rated, credit = truth[uid], set(), [0, 0]
        for _ in range(ratings_per_reader):
            hits = [b for b in shown if b in held and b not in rated]
            rest = [b for b in held if b not in rated and b not in shown]
            if not hits and not rest:
                break
            if hits and (rng.random() < p_shown or not rest):
                book = rng.choice(hits)
                credit[team[book]] += 1
            else:
                book = rng.choice(rest)
            rated.add(book)
        prefs.append((credit[1] - credit[0], sum(credit) > 0))
    d = np.array([p for p, informative in prefs if informative], dtype=float)
    z = {0.95: 1.96, 0.975: 2.24, 0.9833: 2.39, 0.9875: 2.5}.get(round(level, 4), 2.5)
    mean, sd = (float(d.mean()), float(d.std())) if d.size else (0.0, 0.0)
    need = int(np.ceil((z * sd / abs(mean)) ** 2)) if mean else None
    return {"champion": champion, "candidate": candidate, "readers": len(sample),
            "with_credit_share": round(d.size / len(sample), 4),
            "mean_preference": round(mean, 4), "sd": round(sd, 4),
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
            "informative_needed": need,
            "interleaved_readers_needed": (int(np.ceil(need / (d.size / len(sample))))
                                           if need and d.size else None)}


# ---- the scenario driver ----------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_database(url: str, work: Path) -> dict[str, int]:
    """Migrate a fresh database and COPY the books and the training ratings into it."""
    import sqlalchemy as sa

    from bookrec import db

    engine = sa.create_engine(url)
    db.upgrade(engine)
    import pandas as pd

    from bookrec import columns as C

    books = pd.read_csv(work / "books.csv.gz", dtype=str, keep_default_na=False)
    year = pd.to_numeric(books[C.YEAR], errors="coerce")
    books[C.YEAR] = year.where((year > 0) & (year < 2100)).astype("Int64")
    books[C.TITLE] = books[C.TITLE].replace("", "(untitled)")
    cols = ["isbn", "title", "author", "year", "publisher", "image_url_s", "image_url_m",
            "image_url_l"]
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        tmp = work / f".books-{uuid.uuid4().hex}.csv"
        books[[C.ISBN, C.TITLE, C.AUTHOR, C.YEAR, C.PUBLISHER, C.IMAGE_S, C.IMAGE_M,
               C.IMAGE_L]].to_csv(tmp, index=False, header=False)
        with open(tmp) as f:
            cur.copy_expert(f"COPY books ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)", f)
        tmp.unlink()
        import gzip

        with gzip.open(work / "train_ratings.csv.gz", "rt") as f:
            cur.copy_expert("COPY ratings (user_id, isbn, rating) FROM STDIN WITH "
                            "(FORMAT csv, HEADER true)", f)
        raw.commit()
        cur.execute("ANALYZE books; ANALYZE ratings")
        raw.commit()
        cur.execute("SELECT (SELECT count(*) FROM books), (SELECT count(*) FROM ratings)")
        n_books, n_ratings = cur.fetchone()
    finally:
        raw.close()
        engine.dispose()
    return {"books": int(n_books), "ratings": int(n_ratings)}


def _bookrec(args: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bookrec {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def scenario(name: str, work: Path, *, rate: float, bake_minutes: float, check_every_s: float,
             max_extensions: int, interleave: float, canary: float, p_shown: float,
             ratings_per_reader: int, workers: int, redis_url: str, pg_admin_url: str,
             threads: int, cap_minutes: float, rule: dict[str, Any], keep: bool = False,
             say=print) -> dict[str, Any]:
    """Run scenario ``name`` end to end on the prepared ``work`` folder; the result."""
    import redis
    import requests
    import sqlalchemy as sa

    from bookrec import audit
    from bookrec import rollout as online_rollout
    from bookrec.registry import Registry
    from bookrec.settings import Settings

    champion_name, candidate_name, fault = SCENARIOS[name]
    champion = VERSIONS[champion_name]
    candidate = VERSIONS[candidate_name]
    prepared = json.loads((work / "prepared.json").read_text())
    run = work / f"run-{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    home = run / "home"
    (home / "run").mkdir(parents=True)
    db_name = f"bookrec_replay_{name}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    db_url = sa.engine.make_url(pg_admin_url).set(database=db_name).render_as_string(
        hide_password=False)
    procs: list[subprocess.Popen] = []
    prefect_service = None
    result: dict[str, Any] = {"scenario": name, "champion": champion, "candidate": candidate,
                              "fault_rate": fault}
    try:
        t = time.monotonic()
        result["database"] = load_database(db_url, work)
        say(f"[{name}] database {db_name}: {result['database']} in {time.monotonic() - t:.0f} s")
        redis.Redis.from_url(redis_url).flushdb()
        token = secrets.token_hex(24)
        api_port = _free_port()
        api = f"http://127.0.0.1:{api_port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BOOKREC_", "PREFECT_")) and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({
            "BOOKREC_HOME": str(home), "BOOKREC_DATABASE_URL": db_url,
            "BOOKREC_ARTIFACTS_URI": str(home / "artifacts"), "BOOKREC_REDIS_URL": redis_url,
            "BOOKREC_ADMIN_TOKEN": token, "BOOKREC_SERVING_URLS": api,
            "BOOKREC_RATE_LIMIT": "10000000 per minute", "BOOKREC_MODEL_POLL_INTERVAL_S": "2",
            "BOOKREC_API_LOG_FLUSH_INTERVAL_S": "1", "BOOKREC_LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
        })
        settings = Settings(home=home, artifacts_uri=str(home / "artifacts"))
        registry = Registry.from_settings(settings)
        for version in (champion, candidate):
            registry.add_version(work / "models" / version, version)
        registry.promote(champion, by="bench.replay", reason=f"scenario {name} champion")

        from cli import prefect_server, processes

        pf_env = {**prefect_server.server_env(Settings(home=home)),
                  "PREFECT_HOME": str(home / "prefect")}
        t = time.monotonic()
        pf_url, _ = prefect_server.start_local_server(Settings(home=home), _free_port(), pf_env,
                                                      timeout=600)
        prefect_service = processes.services(Settings(home=home))["prefect-server"]
        say(f"[{name}] Prefect server {pf_url} ready in {time.monotonic() - t:.0f} s")

        api_env = dict(env)
        if fault:
            api_env[FAULT_ENV] = f"{candidate}={fault}"
        log = open(run / "gunicorn.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "serving" / "gunicorn_conf.py"),
             "--bind", f"127.0.0.1:{api_port}", "--workers", str(workers)],
            cwd=REPO, env=api_env, stdout=log, stderr=subprocess.STDOUT))
        t = time.monotonic()
        while True:
            try:
                if requests.get(f"{api}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if procs[0].poll() is not None or time.monotonic() - t > 600:
                raise RuntimeError(f"the API did not start; see {run / 'gunicorn.log'}")
            time.sleep(1)
        say(f"[{name}] API {api} ({workers} workers) ready in {time.monotonic() - t:.0f} s")

        key = _bookrec(["apikeys", "create", "bench-replay", "--rate-per-minute",
                        "1000000", "--json"], env)["key"]
        truth = load_truth(work / "truth.json")
        params = [f"--param={k}={v}" for k, v in rule.items()]
        rollout_cmd = [sys.executable, "-m", "cli.main", "rollout", candidate,
                       "--interleave", str(interleave), "--canary", str(canary),
                       "--bake-minutes", str(bake_minutes), "--check-every", str(check_every_s),
                       "--max-extensions", str(max_extensions), *params, "--wait", "--json",
                       "--timeout", str(cap_minutes * 60 + 600)]
        stop = threading.Event()
        replayer = Replayer(api, key, truth, rate=rate, p_shown=p_shown,
                            ratings_per_reader=ratings_per_reader, threads=threads, seed=7)
        replay_thread = threading.Thread(target=replayer.run, args=(stop,), daemon=True)
        started = time.monotonic()
        rollout_log = open(run / "rollout.out", "w+")  # noqa: SIM115
        rollout_proc = subprocess.Popen(rollout_cmd, cwd=REPO, env=env, stdout=rollout_log,
                                        stderr=subprocess.PIPE, text=True)
        procs.append(rollout_proc)
        replay_thread.start()
        say(f"[{name}] rollout of {candidate} vs {champion} started; replaying at {rate:g} req/s")
        last_note = started
        while rollout_proc.poll() is None:
            time.sleep(2)
            if time.monotonic() - last_note > 60:
                last_note = time.monotonic()
                rep = replayer.report
                say(f"[{name}]   {(last_note - started) / 60:.1f} min: {rep.readers} readers, "
                    f"{sum(rep.requests.values())} requests, "
                    f"{sum(rep.failures.values())} failures, {rep.injected} injected")
            if time.monotonic() - started > cap_minutes * 60 + 600:
                rollout_proc.kill()
                break
        wall = time.monotonic() - started
        stop.set()
        replay_thread.join(timeout=60)
        stderr = rollout_proc.stderr.read() if rollout_proc.stderr else ""
        rollout_log.seek(0)
        text = rollout_log.read().strip()
        decision = json.loads(text.splitlines()[-1]) if text else {"error": stderr[-2000:]}
        engine = sa.create_engine(db_url)
        rows = [d for d in audit.decisions_for(engine, candidate)
                if d.decision in ("promoted", "rollout_rolled_back")]
        result["rollout_command"] = " ".join(rollout_cmd[2:])
        result["decision"] = decision.get("decision") or decision.get("error")
        result["reason"] = decision.get("reason")
        result["expected"] = EXPECTED[name]
        result["replay"] = replayer.report.to_json()
        result["wall_s_until_decided"] = round(wall, 1)
        if rows:
            row = rows[-1]
            online = row.online_figures or {}
            record = online.get("rollout") or {}
            from datetime import datetime

            started_at = datetime.fromisoformat(record["started_at"])
            result["time_to_decision_s"] = round((row.decided_at - started_at).total_seconds(), 1)
            verdict = online.get("verdict") or {}
            result["arms"] = verdict.get("arms")
            result["breach"] = verdict.get("breach")
            ended = registry.rollout(record["id"]) or record
            figures = online_rollout.figures(engine, ended)
            result["variants"] = figures["variants"]
            inter = figures["readers"]["interleave"]
            result["readers_used"] = {
                "interleaved": len(inter.get("user_id") or []),
                "interleaved_with_credit": sum(1 for a, b in zip(
                    inter.get("champion") or [], inter.get("candidate") or [], strict=True)
                    if a + b > 0),
                "canary": len(figures["readers"]["canary"].get("user_id") or []),
                "champion_only": len(figures["readers"]["champion"].get("user_id") or []),
            }
            result["online_vs_offline"] = _order(figures["variants"], prepared["models"],
                                                 champion_name, candidate_name)
        engine.dispose()
        (run / "result.json").write_text(json.dumps(result, indent=2, default=str))
        return result
    finally:
        for proc in procs[::-1]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if prefect_service is not None:
            prefect_service.stop()
        if not keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


def _order(variants: dict[str, Any], offline: dict[str, Any], champion: str,
           candidate: str) -> dict[str, Any]:
    """Online hit rate per model (interleaved teams; canary vs champion-only lists) beside
    the offline NDCG@20 and hit@10, and whether the two orders agree."""
    online_champ = variants.get("interleave_champion", {}).get("hit_rate")
    online_cand = variants.get("interleave_candidate", {}).get("hit_rate")
    canary = variants.get("canary", {})
    if canary.get("impressions"):
        online_cand_canary = canary.get("hit_rate")
        online_champ_alone = variants.get("champion", {}).get("hit_rate")
    else:
        online_cand_canary = online_champ_alone = None
    off_champ = offline[champion].get("ndcg@20")
    off_cand = offline[candidate].get("ndcg@20")
    out = {
        "offline_ndcg@20": {"champion": off_champ, "candidate": off_cand},
        "offline_hit@10": {"champion": offline[champion].get("hit@10"),
                           "candidate": offline[candidate].get("hit@10")},
        "online_interleaved_hit_rate": {"champion": online_champ, "candidate": online_cand},
        "online_canary_hit_rate": {"champion_alone": online_champ_alone,
                                   "canary": online_cand_canary},
    }
    if offline[champion] == offline[candidate]:
        out["agree"] = None  # the same model: nothing to order
    elif (online_champ is not None and online_cand is not None and off_champ is not None
          and online_champ != online_cand):
        out["agree"] = (online_cand > online_champ) == (off_cand > off_champ)
    else:
        out["agree"] = None  # no online difference to order
    return out


# ---- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``prepare``, ``replay`` or ``scenario``."""
    parser = argparse.ArgumentParser(prog="bench.replay", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    prep = verbs.add_parser("prepare", help="split, fit and score the models (full data)")
    prep.add_argument("--work", type=Path, required=True)
    prep.add_argument("--data", type=Path, default=None, help="Kaggle CSV folder")
    prep.add_argument("--seed", type=int, default=42)
    prep.add_argument("--eval-readers", type=int, default=3000)
    prep.add_argument("--params", default="{}", help="hybrid parameters as JSON")

    sim = verbs.add_parser("simulate", help="offline preview of an interleaving scenario")
    sim.add_argument("name", choices=sorted(SCENARIOS))
    sim.add_argument("--work", type=Path, required=True)
    sim.add_argument("--readers", type=int, default=2000)

    rep = verbs.add_parser("replay", help="replay readers against a running API")
    rep.add_argument("--api", required=True)
    rep.add_argument("--key", required=True)
    rep.add_argument("--truth", type=Path, required=True)
    rep.add_argument("--duration", type=float, default=60.0, help="seconds")
    rep.add_argument("--max-readers", type=int, default=None)

    sc = verbs.add_parser("scenario", help="run a rollout scenario end to end")
    sc.add_argument("name", choices=sorted(SCENARIOS))
    sc.add_argument("--work", type=Path, required=True)
    sc.add_argument("--bake-minutes", type=float, default=3.0)
    sc.add_argument("--check-every", type=float, default=20.0)
    sc.add_argument("--max-extensions", type=int, default=3)
    sc.add_argument("--interleave", type=float, default=0.5)
    sc.add_argument("--canary", type=float, default=0.1)
    sc.add_argument("--workers", type=int, default=2)
    sc.add_argument("--redis-url", default=os.environ.get("BOOKREC_TEST_REDIS_URL",
                                                          "redis://127.0.0.1:6379/12"))
    sc.add_argument("--pg-admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/"
                                              "postgres")
    sc.add_argument("--cap-minutes", type=float, default=15.0,
                    help="stop replaying (and fail) if undecided after this (plus 10 min)")
    sc.add_argument("--rule", default="{}",
                    help='rollout flow parameters as JSON, e.g. {"min_readers": 100}')
    sc.add_argument("--keep", action="store_true", help="keep the scenario's database")
    for p in (rep, sc):
        p.add_argument("--rate", type=float, default=20.0, help="requests per second")
        p.add_argument("--p-shown", type=float, default=0.9)
        p.add_argument("--ratings-per-reader", type=int, default=2)
        p.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    if args.verb == "prepare":
        out = prepare(args.work, seed=args.seed, eval_readers=args.eval_readers,
                      params=json.loads(args.params) or None, data=args.data)
        print(json.dumps(out, indent=2))
        return 0
    if args.verb == "simulate":
        champion, candidate, _ = SCENARIOS[args.name]
        print(json.dumps(simulate(args.work, champion, candidate, readers=args.readers),
                         indent=2))
        return 0
    if args.verb == "replay":
        stop = threading.Event()
        report = Replayer(args.api, args.key, load_truth(args.truth), rate=args.rate,
                          p_shown=args.p_shown, ratings_per_reader=args.ratings_per_reader,
                          threads=args.threads).run(stop, args.duration, args.max_readers)
        print(json.dumps(report.to_json(), indent=2))
        return 0 if not report.failures and not report.exceptions else 1
    result = scenario(
        args.name, args.work, rate=args.rate, bake_minutes=args.bake_minutes,
        check_every_s=args.check_every, max_extensions=args.max_extensions,
        interleave=args.interleave, canary=args.canary, p_shown=args.p_shown,
        ratings_per_reader=args.ratings_per_reader, workers=args.workers,
        redis_url=args.redis_url, pg_admin_url=args.pg_admin_url, threads=args.threads,
        cap_minutes=args.cap_minutes, rule=json.loads(args.rule), keep=args.keep,
        say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("decision") == result["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
