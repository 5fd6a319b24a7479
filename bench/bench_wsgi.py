"""CPU per request of the API's cached paths in-process, beside a trivial Flask endpoint.

Run:  .venv/bin/python -m bench.bench_wsgi [--redis redis://127.0.0.1:6379/12]
          [--requests 1000] [--repeats 7]

The app's WSGI callable is called in a loop (no gunicorn, no sockets), so what is measured
is the API's own work per request: Flask, the rate limit, the request id and model
snapshot, the cache lookup, headers, the metrics sample, the API-log record and the
impression, and the background threads that write them (process CPU time counts every
thread; the API-log lines go to /dev/null). The trivial endpoint is a plain Flask app that
returns the popular list's body, as in bench/bench_serving.py. Under gunicorn each request
also costs the server's HTTP parsing, socket calls and thread hand-overs (~200 us here),
so this is the low-noise part of what bench_serving.py measures; each path is run
``--repeats`` times, interleaved, and the minimum and median CPU per request are printed.

Setup: the data/sample cut (a small real model, 2,000 CF items), a local registry with it
as the champion, a fresh PostgreSQL database with its books (dropped at the end) and
``--redis`` (flushed before and after).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from bookrec import db  # noqa: E402
from bookrec.settings import Settings  # noqa: E402


def environ(path: str) -> dict:
    """A WSGI environ for a GET of ``path`` from 127.0.0.1."""
    route, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": route, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }


def call(app, path: str) -> tuple[str, bytes]:
    """One request: (status line, body)."""
    status = []
    body_iter = app(environ(path), lambda s, headers, exc=None: status.append(s))
    body = b"".join(body_iter)
    if hasattr(body_iter, "close"):
        body_iter.close()
    return status[0], body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each path")
    args = parser.parse_args()

    import redis
    from flask import Flask, Response

    from bench.bench_foldin import load
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid
    from bookrec.models.persist import save_model
    from bookrec.registry import Registry

    work = Path(tempfile.mkdtemp(prefix="bookrec-wsgi-"))
    ratings, books = load("sample")
    model = fit_hybrid(build_dataset(ratings, books), {"max_items": 2000})
    save_model(model, work / "model", extra={"version": "wsgi-bench"})
    admin_url = os.environ.get(
        "BENCH_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    name = f"bookrec_wsgi_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    rclient = redis.Redis.from_url(args.redis)
    rclient.flushdb()
    svc = None
    try:
        engine = sa.create_engine(url)
        db.upgrade(engine)
        import math

        rows = books.drop_duplicates("isbn").to_dict("records")
        for row in rows:
            for column, value in row.items():
                if isinstance(value, float) and math.isnan(value):
                    row[column] = None
            try:
                year = int(float(row["year"]))
            except (TypeError, ValueError):
                year = 0
            row["year"] = year if 0 < year < 32000 else None
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO books (isbn, title, author, year, publisher, image_url_s, "
                    "image_url_m, image_url_l) VALUES (:isbn, :title, :author, :year, "
                    ":publisher, :image_url_s, :image_url_m, :image_url_l)"
                ),
                rows,
            )
        engine.dispose()
        settings = Settings(
            database_url=url, home=work / "home", artifacts_uri=str(work / "store"),
            redis_url=args.redis, rate_limit="100000000 per minute",
        )
        registry = Registry.from_settings(settings)
        registry.add_version(work / "model", "wsgi-bench")
        registry.promote("wsgi-bench", by="bench", reason="bench")

        from serving.app import create_app

        app = create_app(settings, test_config={"BOOKREC_BACKGROUND": False})
        svc = app.extensions["bookrec"]
        svc.start_background()  # their CPU is part of a request's cost
        for handler in logging.getLogger("bookrec.api").handlers:
            handler.stream = open(os.devnull, "w")  # noqa: SIM115 - for the process's life

        popular = call(app, "/v1/books/popular?k=10")[1]
        trivial = Flask("trivial")

        @trivial.get("/trivial")
        def trivial_view():
            return Response(popular, mimetype="application/json")

        isbns = [item["isbn"] for item in json.loads(popular)["items"]]
        readers = sorted(set(ratings["user_id"].tolist()))[:200]
        paths = {
            "trivial": (trivial, ["/trivial"]),
            "popular k=10": (app, ["/v1/books/popular?k=10"]),
            "user recs (200 readers)": (
                app, [f"/v1/users/{u}/recommendations?k=10" for u in readers]
            ),
            "book details": (app, [f"/v1/books/{i}" for i in isbns]),
            "similar": (app, [f"/v1/books/{i}/similar?k=10" for i in isbns]),
        }
        for target, path_list in paths.values():  # warm: every list cached
            for path in path_list:
                status, body = call(target, path)
                assert status.startswith("200"), (path, status, body[:200])
        time.sleep(0.5)
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for label, (target, path_list) in paths.items():
                started = time.process_time()
                for i in range(args.requests):
                    call(target, path_list[i % len(path_list)])
                cpu[label].append((time.process_time() - started) / args.requests * 1e6)
        results = {
            label: {"min_us": round(min(v), 1), "median_us": round(statistics.median(v), 1)}
            for label, v in cpu.items()
        }
        for label, r in results.items():
            print(f"{label}: {r['min_us']:.0f} us CPU per request (median of runs "
                  f"{r['median_us']:.0f} us)")
        print(json.dumps({"requests": args.requests, "repeats": args.repeats,
                          "load_average": [round(x, 2) for x in os.getloadavg()],
                          "cpu_per_request": results}, indent=1))
    finally:
        if svc is not None:
            svc.close()
        rclient.flushdb()
        rclient.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
