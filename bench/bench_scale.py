"""Time and memory of each nightly stage at several data scales, and their growth exponents.

    .venv/bin/python -m bench.bench_scale --scales 1,3,10 --data-dir /tmp/bookrec-scale

For each scale it writes (once) a synthetic Book-Crossing with ``bench/synth.py`` (scale 1
is the real files byte for byte), creates a fresh database on the PostgreSQL server that
``--admin-url`` names, a fresh artifact folder, a Prefect server and a two-worker API, and
runs the stages of the nightly run as the ``bookrec`` commands users run: ``ingest``,
``train`` (the nightly run's training: served model plus most-popular), and ``promote``
(gate, smoke test in a separate process, compare-and-swap, reload of the running API).
Every stage's wall time and peak RSS (the largest process of its tree, from ``wait4``)
are printed; then the growth exponent of each stage's time, the slope of log(time) over
log(scale), which the 1x run is the baseline of. Goal at 10x: the whole run <= 15 min, no
process over 12 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "book-crossing"
STAGES = ("ingest", "train", "promote")  # then "reload": until every worker serves it
ALL_STAGES = (*STAGES, "reload")
GOAL_S = 15 * 60
GOAL_RSS_MB = 12 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _wait_version(url: str, version: str | None, timeout: float, streak: int = 12) -> str:
    """Poll readiness until ``streak`` answers in a row name ``version`` (any worker)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                got = json.loads(response.read()).get("model_version")
        except OSError:
            got = None
        seen = seen + 1 if got is not None and got == version else 0
        if seen >= streak:
            return got
        time.sleep(0.05 if seen else 0.5)
    raise TimeoutError(f"serving did not converge on {version} within {timeout:.0f} s")


def _run(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """Run a command; (wall s, peak RSS MB of its process tree, stdout)."""
    started = time.perf_counter()
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[1:4])} exited {code}; see {log}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def _data(scale: int, data_dir: Path, layout: str) -> Path:
    """The folder of the scale's files, written by bench/synth.py when missing."""
    if scale == 1:
        return SHARED / layout
    folder = data_dir / f"bx{scale}-{layout}"
    if not (folder / ".complete").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.synth",
                "--scale",
                str(scale),
                "--out",
                str(folder),
                "--layout",
                layout,
            ],
            check=True,
            cwd=REPO,
        )
        (folder / ".complete").touch()
    return folder


def run_scale(scale: int, args: argparse.Namespace) -> dict:
    """All stages at one scale, on fresh infrastructure; returns the figures."""
    source = _data(scale, args.data_dir, args.layout)
    work = Path(tempfile.mkdtemp(prefix=f"bookrec-scale{scale}-", dir=args.data_dir))
    db_name = f"bookrec_scale_{scale}_{os.getpid()}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    url = sa.engine.make_url(args.admin_url).set(database=db_name)
    prefect_port, api_port = _free_port(), _free_port()
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "BOOKREC_DATABASE_URL": url.render_as_string(hide_password=False),
        "BOOKREC_ARTIFACTS_URI": str(work / "artifacts"),
        "BOOKREC_HOME": str(work / "home"),
        "BOOKREC_ADMIN_TOKEN": token,
        "BOOKREC_SERVING_URLS": f"http://127.0.0.1:{api_port}",
        "BOOKREC_RELOAD_STAGGER_S": "0",
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("BOOKREC_REDIS_URL", None)
    log = work / "bench.log"
    bookrec = str(Path(sys.executable).with_name("bookrec"))
    servers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(prefect_port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "prefect.log", "wb"),  # noqa: SIM115
        )
    ]
    figures: dict = {"scale": scale, "stages": {}}
    try:
        _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", 120)
        subprocess.run(
            [bookrec, "db", "upgrade"], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL
        )
        servers.append(
            subprocess.Popen(
                [bookrec, "serve", "--port", str(api_port), "--workers", "2"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(work / "api.log", "wb"),  # noqa: SIM115
            )
        )
        _wait_http(f"http://127.0.0.1:{api_port}/livez", 120)
        commands = {
            "ingest": [bookrec, "ingest", str(source), "--layout", args.layout, "--json"],
            "train": [bookrec, "train", "--json", "--baselines", "most_popular"],
            "promote": [bookrec, "promote", "--json"],
        }
        for stage in STAGES:
            wall, rss, out = _run(commands[stage], env, log)
            figures["stages"][stage] = {"seconds": round(wall, 1), "peak_rss_mb": round(rss)}
            if stage == "ingest":
                files = json.loads(out)["files"]
                figures["rows"] = {k: v["rows_read"] for k, v in files.items()}
            if stage == "promote":
                decision = json.loads(out)
                figures["decision"] = decision.get("decision")
                figures["champion"] = decision.get("champion")
                figures["reload"] = (decision.get("reload") or {}).get("status")
            print(f"  {scale}x {stage:<8} {wall:8.1f} s  {rss:8.0f} MB", flush=True)
        # Reload: until every worker answers with the new champion (several in a row).
        started = time.perf_counter()
        figures["served"] = _wait_version(
            f"http://127.0.0.1:{api_port}/readyz", figures.get("champion"), 600
        )
        wall = time.perf_counter() - started
        figures["stages"]["reload"] = {"seconds": round(wall, 1), "peak_rss_mb": 0}
        print(f"  {scale}x reload   {wall:8.1f} s  (every worker on {figures['served']})")
    finally:
        for proc in reversed(servers):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures["total_seconds"] = round(sum(s["seconds"] for s in figures["stages"].values()), 1)
    figures["peak_rss_mb"] = max(s["peak_rss_mb"] for s in figures["stages"].values())
    return figures


def _exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(value) over log(scale)."""
    if len(points) < 2:
        return None
    xs = [math.log(s) for s, _ in points]
    ys = [math.log(max(v, 1e-3)) for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,3,10")
    parser.add_argument("--layout", choices=["original", "kaggle"], default="original")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "bookrec-scale"
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "BOOKREC_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
        ),
        help="maintenance database of the PostgreSQL server to create the scale databases on",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep each scale's work folder")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    scales = [int(s) for s in args.scales.split(",")]
    results = []
    for scale in scales:
        print(f"scale {scale}x", flush=True)
        results.append(run_scale(scale, args))
    print()
    print(
        "| scale | ratings read | "
        + " | ".join(f"{s} s / peak MB" for s in ALL_STAGES)
        + " | total s | max RSS MB |"
    )
    print("|---:|---:|" + "---:|" * len(ALL_STAGES) + "---:|---:|")
    for r in results:
        cells = [
            f"{r['stages'][s]['seconds']} / {r['stages'][s]['peak_rss_mb']}" for s in ALL_STAGES
        ]
        print(
            f"| {r['scale']}x | {r['rows']['ratings']:,} | "
            + " | ".join(cells)
            + f" | {r['total_seconds']} | {r['peak_rss_mb']} |"
        )
    exps = {
        s: _exponent([(r["scale"], r["stages"][s]["seconds"]) for r in results]) for s in ALL_STAGES
    }
    exps["total"] = _exponent([(r["scale"], r["total_seconds"]) for r in results])
    print(
        "growth exponent of time (slope of log time over log scale): "
        + ", ".join(f"{k} {v:.2f}" for k, v in exps.items() if v is not None)
    )
    top = results[-1]
    ok = top["total_seconds"] <= GOAL_S and top["peak_rss_mb"] <= GOAL_RSS_MB
    print(
        f"goal at {top['scale']}x: total <= {GOAL_S} s and every process <= {GOAL_RSS_MB} MB: "
        f"{'meets' if ok else 'misses'} ({top['total_seconds']} s, {top['peak_rss_mb']} MB; "
        f"decision {top.get('decision')}, reload {top.get('reload')})"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "exponents": exps}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
