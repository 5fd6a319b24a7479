"""Fixtures for the serving tests: real small models in a real registry, the catalogue in
PostgreSQL, the Flask app, and a real gunicorn with several workers on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests
import sqlalchemy as sa

from bookrec.models.dataset import build_dataset
from bookrec.models.fit import fit_hybrid
from bookrec.models.persist import save_model
from bookrec.registry import Registry
from bookrec.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# pytest puts tests/ first on sys.path, where this folder would shadow the real ``serving``
# package as a namespace package; make the repository root win.
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))
if getattr(sys.modules.get("serving"), "__file__", "") is None:
    del sys.modules["serving"]
import serving  # noqa: E402,F401 - the real package, imported before anything shadows it
from tests.utils.frames import book_frame, rating_frame  # noqa: E402
from tests.utils.ports import free_port  # noqa: E402
from tests.utils.serving import ADMIN_TOKEN, settings_env  # noqa: E402
from tests.utils.tools import require_tool  # noqa: E402


@dataclass
class ModelSet:
    """Two fitted model versions saved as folders, ready to add to a registry."""

    folders: dict[str, Path]
    books: pd.DataFrame

    @property
    def versions(self) -> list[str]:
        """Version ids, oldest first."""
        return list(self.folders)


@pytest.fixture(scope="session")
def model_set(tmp_path_factory: pytest.TempPathFactory) -> ModelSet:
    """Fit two small real hybrids (different seeds) once per session."""
    root = tmp_path_factory.mktemp("serving-models")
    books = book_frame()
    folders = {}
    for n, version in enumerate(("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb")):
        model = fit_hybrid(build_dataset(rating_frame(seed=n), books))
        folder = root / version
        save_model(model, folder, extra={"version": version})
        folders[version] = folder
    return ModelSet(folders=folders, books=books)


def make_registry(settings: Settings, model_set: ModelSet, champion: str | None) -> Registry:
    """A registry on ``settings``' store with both versions added and ``champion`` promoted."""
    registry = Registry.from_settings(settings)
    for version, folder in model_set.folders.items():
        registry.add_version(folder, version)
    if champion:
        registry.promote(champion, by="tests", reason="fixture")
    return registry


def load_books(engine: sa.engine.Engine, books: pd.DataFrame) -> None:
    """Replace the books table's rows with ``books``."""
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE books, ratings, api_logs, impressions, rating_events"))
        conn.execute(
            sa.text(
                "INSERT INTO books (isbn, title, author, year, publisher, image_url_s, "
                "image_url_m, image_url_l) VALUES (:isbn, :title, :author, :year, :publisher, "
                ":image_url_s, :image_url_m, :image_url_l)"
            ),
            books.to_dict("records"),
        )


@pytest.fixture
def serving_settings(database_url: str, engine, tmp_path: Path, model_set: ModelSet) -> Settings:
    """Settings with a registry whose champion is the first version, and books in PostgreSQL."""
    settings = Settings(
        database_url=database_url,
        home=tmp_path / "home",
        artifacts_uri=str(tmp_path / "store"),
        admin_token=ADMIN_TOKEN,
        rate_limit="100000 per minute",
        model_poll_interval_s=0.5,
        reload_stagger_s=0.0,  # the stagger tests set their own
        api_log_flush_interval_s=0.2,
    )
    make_registry(settings, model_set, champion=model_set.versions[0])
    load_books(engine, model_set.books)
    return settings


@pytest.fixture
def key_headers(engine) -> dict[str, str]:
    """``Authorization`` headers with a fresh API key (unbound, a high rate) for writes."""
    from bookrec.apikeys import create_key

    created = create_key(engine, "serving tests", rate_per_minute=100_000)
    return {"Authorization": f"Bearer {created['key']}"}


@pytest.fixture
def cli_db(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Iterator[None]:
    """The ``bookrec`` command (in this process) pointed at the session database."""
    from bookrec.settings import get_settings

    monkeypatch.setenv("BOOKREC_DATABASE_URL", database_url)
    monkeypatch.setenv("BOOKREC_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def make_app() -> Iterator[Callable]:
    """Build apps without background threads; closes them afterwards."""
    from serving import create_app

    apps = []

    def build(settings: Settings, **config):
        app = create_app(settings, test_config={"BOOKREC_BACKGROUND": False, **config})
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["bookrec"].close()


@pytest.fixture
def app(make_app, serving_settings: Settings):
    """The API app on the test database and registry."""
    return make_app(serving_settings, TESTING=True)


@pytest.fixture
def client(app):
    """Flask test client."""
    return app.test_client()


class Gunicorn:
    """A real gunicorn running the project's config on a free loopback port."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ):
        """The environment is the settings' and nothing else, as under ``bookrec up``: no
        ``PROMETHEUS_MULTIPROC_DIR`` (the config makes its own folder)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("BOOKREC_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(settings_env(settings))
        env["BOOKREC_LOG_LEVEL"] = "warning"
        env.update(extra_env or {})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(REPO / "serving" / "gunicorn_conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Block until /readyz answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop gunicorn (graceful, then forced) and close its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn servers for a test; all are stopped afterwards."""
    servers: list[Gunicorn] = []

    def start(
        settings: Settings, workers: int = 3, extra_env: dict[str, str] | None = None
    ) -> Gunicorn:
        server = Gunicorn(
            settings, workers, tmp_path / f"gunicorn-{len(servers)}.log", extra_env=extra_env
        )
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A private redis-server on a free port (tests may stop it); yields its URL."""
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    binary = require_tool("redis-server", "install Debian's redis-server")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    server = {"proc": proc, "url": f"redis://127.0.0.1:{port}/0"}
    yield server
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


class PrivatePostgres:
    """An embedded PostgreSQL in a temporary folder that a test may stop."""

    def __init__(self, home: Path, books: pd.DataFrame):
        from bookrec import db

        self._settings = Settings(home=home)
        self.url = db.embedded_url(self._settings)
        engine = sa.create_engine(self.url)
        db.upgrade(engine)
        load_books(engine, books)
        engine.dispose()
        self.running = True

    def count(self, table: str) -> int:
        """Rows in ``table`` (a fresh connection each time)."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar())
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        from bookrec import db

        if self.running:
            db.stop_embedded(self._settings)
            self.running = False


@pytest.fixture
def private_postgres(model_set: ModelSet) -> Iterator[PrivatePostgres]:
    """A second PostgreSQL server with the schema and the test books; stopped afterwards.

    Its folder is outside pytest's private (0700) temp tree: when running as root the
    embedded server runs as its own user, which must be able to reach the folder.
    """
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="bookrec-test-pg-"))
    home.chmod(0o755)
    server = PrivatePostgres(home, model_set.books)
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)
