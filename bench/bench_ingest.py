"""Ingest benchmark: bookrec's ingest vs the naive pandas path vs a bare COPY floor.

Each path runs in its own process (so peak RSS is its own) against its own fresh
database on the same PostgreSQL server, on the same files:

- bookrec: ``bookrec.ingest.run_ingest`` (parse, clean, quarantine, COPY to staging,
  upsert, ingest_runs) in-process: the function the ingest flow's ``ingest-files`` task
  runs, without Prefect's bookkeeping;
- naive: ``pandas.read_csv`` + ``DataFrame.to_sql`` of the three files, no cleaning;
- floor: read the files and ``COPY`` them raw into text tables (no cleaning at all);
  PostgreSQL parses the CSV, Python only decompresses: the strict lower bound;
- floor_read: the same rows read with ``pandas.read_csv`` first (the issue's "bare COPY
  with the read"), written back as CSV and ``COPY``-ed into the same text tables;
- command: what users run, ``bookrec ingest DATA --json`` as a subprocess, with a Prefect
  server already up the way ``bookrec up`` leaves it (pid file in the command's home);
  the flow run, its tasks and artifacts land on that server;
- command_warm: the same with the warm flow runner that the first flow command leaves
  beside the server (``cli/warm.py``): the command is forked by it, Prefect already imported;
- command_cold: the same command in a new home with no Prefect server running: it starts
  the local server on first use (and leaves it running; stopped here afterwards), and
  Prefect creates its database (a one-time cost of each home);
- command_restart: the same with the server stopped after its database was made, as
  ``bookrec down`` leaves it: the command restarts it.

The command's cost beyond its own work is its wall time minus the in-process ``bookrec``
path's, both measured in this run.

    python bench/bench_ingest.py --data ../shared/data/book-crossing/original \\
        --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

FILES = {
    "books": "BX-Books.csv.gz",
    "ratings": "BX-Book-Ratings.csv.gz",
    "users": "BX-Users.csv.gz",
}
READ_OPTIONS = dict(sep=";", quotechar='"', escapechar="\\", doublequote=False, encoding="latin-1")


def _scratch_db(admin_url: str) -> str:
    name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_db(admin_url: str, url: str) -> None:
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run_bookrec(data: Path, url: str, repeat: int) -> dict:
    """The project's ingest, first load then (repeat - 1) re-ingests of the same files."""
    from bookrec import db
    from bookrec.ingest import run_ingest
    from bookrec.settings import Settings

    settings = Settings(database_url=url)
    engine = db.get_engine(settings)
    db.upgrade(engine)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = run_ingest(engine, settings, str(data))
        times.append(time.perf_counter() - t0)
    rows = {k: v["rows_read"] for k, v in report["files"].items()}
    return {"seconds": times[0], "reingest_seconds": times[1:], "rows": rows}


def run_naive(data: Path, url: str, repeat: int) -> dict:
    """pandas read_csv + to_sql, as a first attempt would write it."""
    import pandas as pd

    engine = sa.create_engine(url)
    t0 = time.perf_counter()
    rows = {}
    for kind, name in FILES.items():
        frame = pd.read_csv(data / name, dtype=str, **READ_OPTIONS)
        frame.to_sql(f"naive_{kind}", engine, if_exists="replace", index=False, chunksize=10_000)
        rows[kind] = len(frame)
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def _copy_into_text_tables(url: str, prefix: str, read) -> dict:
    """Time ``read(kind, name) -> (columns, COPY options, file)`` plus a bare COPY of that
    file into a fresh table of text columns, for each of the three files."""
    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    t0 = time.perf_counter()
    rows = {}
    with raw.cursor() as cur:
        for kind, name in FILES.items():
            columns, options, fh = read(kind, name)
            cols = ", ".join(f"c{i} text" for i in range(columns))
            cur.execute(f"CREATE TABLE {prefix}_{kind} ({cols})")
            cur.copy_expert(f"COPY {prefix}_{kind} FROM STDIN WITH ({options})", fh)
            rows[kind] = cur.rowcount
    raw.commit()
    raw.close()
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def run_floor(data: Path, url: str, repeat: int) -> dict:
    """Read the gzip files and COPY them as they are into text tables: the lower bound."""
    import gzip
    import io

    columns = {"books": 8, "ratings": 3, "users": 3}
    options = "FORMAT csv, HEADER true, DELIMITER ';', QUOTE '\"', ESCAPE '\\', ENCODING 'LATIN1'"

    def read(kind: str, name: str):
        return columns[kind], options, io.BytesIO(gzip.decompress((data / name).read_bytes()))

    return _copy_into_text_tables(url, "floor", read)


def run_floor_read(data: Path, url: str, repeat: int) -> dict:
    """pandas reads the files (the read), then a bare COPY of the same rows into text tables."""
    import io

    import pandas as pd

    def read(kind: str, name: str):
        frame = pd.read_csv(data / name, dtype=str, keep_default_na=False, **READ_OPTIONS)
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False)
        buffer.seek(0)
        return frame.shape[1], "FORMAT csv", buffer

    return _copy_into_text_tables(url, "floor_read", read)


def _command_env(home: Path, url: str, port: int) -> dict[str, str]:
    """A user's environment for ``bookrec`` with its own home, database and Prefect port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "PREFECT_"))}
    env.update({"BOOKREC_HOME": str(home), "BOOKREC_DATABASE_URL": url,
                "BOOKREC_PREFECT_PORT": str(port), "BOOKREC_SERVING_URLS": ""})
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _time_command(data: Path, env: dict[str, str], repeat: int) -> dict:
    """Run ``bookrec ingest DATA --json`` ``repeat`` times; wall seconds of each."""
    times, report = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "bookrec"), "ingest", str(data),
                               "--json"], env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"bookrec ingest failed: {proc.stderr[-2000:]}")
        report = json.loads(proc.stdout)
    rows = {k: v["rows_read"] for k, v in report["files"].items()}
    return {"seconds": times[0], "reingest_seconds": times[1:], "rows": rows,
            "flow_duration_s": report["duration_s"], "stderr": proc.stderr.strip()}


def run_command(data: Path, url: str, repeat: int) -> dict:
    """``bookrec ingest`` with a Prefect server already up (started here, untimed)."""
    import tempfile

    from bookrec.settings import Settings
    from cli import prefect_server, processes

    home = Path(tempfile.mkdtemp(prefix="bench-ingest-home-"))
    settings = Settings(home=home)
    port = _free_port()
    env = {**prefect_server.server_env(settings), "PREFECT_HOME": str(home / "prefect")}
    prefect_server.start_local_server(settings, port, env)
    try:  # BOOKREC_WARM=0: the command imports Prefect itself (see command_warm)
        return _time_command(data, {**_command_env(home, url, port), "BOOKREC_WARM": "0"}, repeat)
    finally:
        processes.services(settings)["prefect-server"].stop()


def run_command_warm(data: Path, url: str, repeat: int) -> dict:
    """``bookrec ingest`` with a Prefect server up and the warm flow runner (``cli/warm.py``)
    that the first flow command leaves beside it: the command is forked by the runner."""
    import tempfile

    from bookrec.settings import Settings
    from cli import prefect_server, processes, warm

    home = Path(tempfile.mkdtemp(prefix="bench-ingest-warm-"))
    settings = Settings(home=home)
    port = _free_port()
    env = {**prefect_server.server_env(settings), "PREFECT_HOME": str(home / "prefect")}
    prefect_server.start_local_server(settings, port, env)
    try:
        command_env = _command_env(home, url, port)
        warm.start_for(command_env)
        result = _time_command(data, command_env, repeat)
        log = processes.services(settings)[warm.SERVICE].log_file.read_text()
        if log.count(" exit 0 ") != repeat:
            raise RuntimeError(f"the flow runner did not run every command: {log[-2000:]}")
        return result
    finally:
        for name in (warm.SERVICE, "prefect-server"):
            processes.services(settings)[name].stop()


def run_command_cold(data: Path, url: str, repeat: int, restart: bool = False) -> dict:
    """``bookrec ingest`` with no Prefect server running: the command starts one. A new
    home's first command also has Prefect create its database; with ``restart`` that was
    done beforehand (untimed: the server started once and stopped), as after `bookrec down`."""
    import tempfile

    from bookrec.settings import Settings
    from cli import prefect_server, processes

    home = Path(tempfile.mkdtemp(prefix="bench-ingest-cold-"))
    port = _free_port()
    env = _command_env(home, url, port)
    if restart:
        settings = Settings(home=home)
        server_env = {**prefect_server.server_env(settings), "PREFECT_HOME": str(home / "prefect")}
        prefect_server.start_local_server(settings, port, server_env)
        processes.services(settings)["prefect-server"].stop()
    try:
        return _time_command(data, env, 1)
    finally:
        subprocess.run([str(Path(sys.executable).parent / "bookrec"), "down", "--keep-db"],
                       env=env, capture_output=True, check=False)


def run_command_restart(data: Path, url: str, repeat: int) -> dict:
    """``bookrec ingest`` with the server stopped (as `bookrec down` leaves it): it restarts."""
    return run_command_cold(data, url, repeat, restart=True)


PATHS = {"bookrec": run_bookrec, "naive": run_naive, "floor": run_floor,
         "floor_read": run_floor_read, "command": run_command, "command_warm": run_command_warm,
         "command_cold": run_command_cold, "command_restart": run_command_restart}


def _child(path: str, data: str, url: str, repeat: int) -> None:
    result = PATHS[path](Path(data), url, repeat)
    # the largest of this process and the forked cleaners (they run concurrently, so the
    # sum of the two figures is an upper bound of what the machine held at once); for the
    # command paths, of this process and the largest finished child (the command)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["peak_rss_mb"] = own + children
    print(json.dumps(result))


def main() -> None:
    """Run the three paths, each in a fresh process and a fresh database, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/book-crossing/original"))
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BOOKREC_BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
        ),
        help="maintenance database of the server to use; scratch databases are made there",
    )
    parser.add_argument(
        "--paths",
        default="floor,floor_read,bookrec,naive,command,command_warm,command_restart,command_cold",
    )
    parser.add_argument("--repeat", type=int, default=2, help="bookrec runs (2nd+ are re-ingests)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return

    results = {}
    for path in args.paths.split(","):
        url = _scratch_db(args.database_url)
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    path,
                    str(args.data.resolve()),
                    url,
                    str(args.repeat),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parents[1],
            )
        except subprocess.CalledProcessError as exc:
            print(exc.stderr, file=sys.stderr)
            raise
        finally:
            _drop_db(args.database_url, url)
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{path:10s} {results[path]['seconds']:7.1f} s  peak RSS "
            f"{results[path]['peak_rss_mb']:7.0f} MB  rows {results[path]['rows']}",
            flush=True,
        )

    print()
    print("| path | wall s | peak RSS MB | vs bookrec |")
    print("|---|---:|---:|---:|")
    ours = results.get("bookrec", {}).get("seconds")
    for path, r in results.items():
        ratio = f"{r['seconds'] / ours:.2f}x" if ours else "-"
        print(f"| {path} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} |")
    if "bookrec" in results:
        re_runs = results["bookrec"].get("reingest_seconds") or []
        if re_runs:
            print(f"\nre-ingest of the same files (all unchanged): {min(re_runs):.1f} s")
        if "naive" in results:
            print(f"speed-up over naive: {results['naive']['seconds'] / ours:.2f}x (goal >= 2.5x)")
        if "floor" in results:
            print(f"bookrec / floor (COPY only): {ours / results['floor']['seconds']:.2f}x "
                  "(goal <= 2.5x)")
        if "floor_read" in results:
            print(f"bookrec / floor_read (pandas read + COPY): "
                  f"{ours / results['floor_read']['seconds']:.2f}x (goal <= 2.5x)")
    for path in ("command", "command_warm", "command_restart", "command_cold"):
        if path not in results:
            continue
        r = results[path]
        line = f"`bookrec ingest` ({path}): {r['seconds']:.1f} s wall"
        if ours:
            line += f", {r['seconds'] - ours:+.1f} s beyond the in-process path"
        if "naive" in results:
            line += f", {results['naive']['seconds'] / r['seconds']:.2f}x faster than naive"
        print(line)
        if r.get("reingest_seconds"):
            print(f"  re-ingest by the command: {min(r['reingest_seconds']):.1f} s")
        if r.get("stderr"):
            print(f"  its stderr: {r['stderr']}")
    print(f"load average during the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
