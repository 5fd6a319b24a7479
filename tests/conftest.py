"""Shared fixtures: a real PostgreSQL database per session, moto's S3 server over HTTP,
Redis on loopback, and Prefect's test harness. Nothing here mocks a service that runs here."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec import db
from bookrec.settings import Settings
from tests.utils.ports import free_port, port_open

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "book-crossing"
SAMPLE_DIR = REPO / "data" / "sample"

DATA_TABLES = ("quarantine", "ingest_runs", "ratings", "users", "books")


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database: the local server where it answers,
    else an embedded one in a temporary folder (BOOKREC_TEST_DATABASE_URL overrides both)."""
    configured = os.environ.get("BOOKREC_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
        return
    settings = Settings(home=tmp_path_factory.mktemp("embedded-pg"))
    yield db.embedded_url(settings)
    db.stop_embedded(settings)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for this test session, migrated to head, dropped afterwards."""
    name = f"bookrec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    db.upgrade(engine)
    engine.dispose()
    yield url
    db.dispose_engines()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests), dropped afterwards."""
    name = f"bookrec_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> sa.engine.Engine:
    """The pooled engine for the session database."""
    return db.get_engine(Settings(database_url=database_url), url=database_url)


@pytest.fixture
def clean_db(engine: sa.engine.Engine) -> sa.engine.Engine:
    """The session database with every data table emptied."""
    with engine.begin() as conn:
        existing = set(sa.inspect(conn).get_table_names())
        tables = [t for t in DATA_TABLES if t in existing]
        extra = [t for t in ("promotions", "api_logs") if t in existing]
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables + extra)} RESTART IDENTITY CASCADE"))
    return engine


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session database and a per-test artifact folder."""
    return Settings(
        database_url=database_url,
        home=tmp_path / "home",
        artifacts_uri=str(tmp_path / "artifacts"),
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 (and CloudWatch, CloudFormation) server over HTTP on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(moto_server: str) -> str:
    """A fresh bucket on the moto server; returns its name."""
    import boto3

    name = f"bookrec-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def worker_redis_url() -> str:
    """This test process's Redis database: ``BOOKREC_TEST_REDIS_URL`` (default db 15 on the
    local server). Under pytest-xdist, worker N takes the N-th of its comma-separated URLs,
    or, past the list, the first URL's database number minus N (15, 14, ... by default), so
    that parallel workers never flush each other's database."""
    urls = os.environ.get("BOOKREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15").split(",")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    if worker < len(urls):
        return urls[worker].strip()
    base, _, db = urls[0].strip().rpartition("/")
    if not db.isdigit() or int(db) < worker:
        raise RuntimeError(f"BOOKREC_TEST_REDIS_URL: no Redis database for xdist worker {worker}")
    return f"{base}/{int(db) - worker}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database on the local server, flushed before and after the test."""
    import redis

    url = worker_redis_url()
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not answering at {url}; .ci/run starts it")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def spawn() -> Iterator:
    """``subprocess.Popen`` for a test: every process it started is killed and reaped at
    teardown, the test passed or failed (a failed assertion must not leave them running)."""
    procs: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(*args, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=30)  # reaps it and closes its pipes
        except ValueError:  # the test closed a pipe itself
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def up_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A Prefect server started the way ``bookrec up`` starts it (its own session, SQLite
    under <home>/prefect, <home>/run/prefect-server.pid naming its URL) on a free port.
    Yields ``{"home", "url", "pid_file", "proactive_s"}``; stopped at the end of the session.
    Its triggers service evaluates proactive automations every ``proactive_s`` seconds
    (Prefect's default is 5) so that the watchdog test waits less."""
    from cli import prefect_server, processes

    home = tmp_path_factory.mktemp("up-prefect-home")
    settings = Settings(home=home)
    proactive_s = 1
    env = {**prefect_server.server_env(settings), "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": f"PT{proactive_s}S"}
    url, _ = prefect_server.start_local_server(settings, free_port(), env, timeout=300)
    service = processes.services(settings)["prefect-server"]
    yield {"home": home, "url": url, "pid_file": service.pid_file, "proactive_s": proactive_s}
    service.stop()


@pytest.fixture(scope="session")
def prefect_harness(up_prefect_server: dict) -> Iterator[None]:
    """A real Prefect server (on SQLite) for this process's flow runs, for the whole session:
    the ``up_prefect_server``, so that a session boots one Prefect server, not two (its
    start-up runs Prefect's migrations, the costliest fixture of the suite).

    Flow runs in this process send no heartbeats (as ``bookrec``'s short flow commands,
    cli/main.py): the heartbeat thread only marks runs that stop reporting as crashed after
    minutes, and joining it costs up to a second at the end of every flow and subflow run."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    with temporary_settings(
        updates={PREFECT_API_URL: up_prefect_server["url"], PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ), _temporary_global_settings_context(get_settings_context()):
        # (as prefect_test_harness does: threads that start with an empty context, such as
        # Prefect's log and event workers, see these settings too, not an ephemeral server)
        yield
        # send what this process still holds (logs, events) before the server stops
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all()
        EventsWorker.drain_all()
