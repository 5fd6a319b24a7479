"""Fixtures for the registry tests: a store of each kind and hand-made version folders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bookrec.registry import Registry
from bookrec.settings import Settings, get_settings
from bookrec.store import ArtifactStore, StoreError, open_store
from tests.utils.frames import tiny_frames
from tests.utils.ports import free_port
from tests.utils.versions import make_version_folder


@pytest.fixture
def version_folder() -> Callable[..., Path]:
    """The ``make_version_folder`` factory, for tests."""
    return make_version_folder


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A local folder URI or an s3:// URI on moto's server (both kinds run every test)."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/registry"


@pytest.fixture
def store_settings(store_uri: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose artifact store is ``store_uri`` (and moto's endpoint for S3)."""
    endpoint = request.getfixturevalue("moto_server") if store_uri.startswith("s3://") else None
    return Settings(home=tmp_path / "home", artifacts_uri=store_uri, s3_endpoint_url=endpoint)


@pytest.fixture
def store(store_settings: Settings) -> ArtifactStore:
    """The artifact store under test."""
    return open_store(store_settings.resolved_artifacts_uri, store_settings)


@pytest.fixture
def registry(store: ArtifactStore) -> Registry:
    """A registry on the store under test."""
    return Registry(store)


@pytest.fixture(scope="session")
def fitted_models():
    """Two small real hybrids fitted on different snapshots (they answer differently)."""
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid

    params = {"l2": 10.0, "max_items": 100, "keep": 50, "popular_list_size": 30}
    return [fit_hybrid(build_dataset(*tiny_frames(seed)), params) for seed in (0, 1)]


@pytest.fixture
def save_hybrid(fitted_models, tmp_path: Path) -> Callable[..., Path]:
    """Save fitted model ``which`` (0 or 1) as a version folder with the given metrics."""
    from bookrec.models.persist import save_model

    def save(name: str, metrics: dict[str, Any], which: int = 0) -> Path:
        folder = tmp_path / "built" / name
        save_model(fitted_models[which], folder, data_fingerprint={"ratings": 1},
                   metrics=metrics)
        return folder

    return save


@pytest.fixture(params=["local"])
def flow_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The flows' store: a local folder unless a test asks for ``s3`` (indirect parametrize);
    the registry tests already run every store operation on both."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('s3_bucket')}/registry"


@pytest.fixture
def flow_env(
    prefect_harness: None,
    database_url: str,
    clean_db: sa.engine.Engine,
    flow_store: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """Environment the flows' tasks read their settings from (entry-point style)."""
    store_uri = flow_store
    endpoint = request.getfixturevalue("moto_server") if store_uri.startswith("s3://") else ""
    monkeypatch.setenv("BOOKREC_DATABASE_URL", database_url)
    monkeypatch.setenv("BOOKREC_ARTIFACTS_URI", store_uri)
    monkeypatch.setenv("BOOKREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BOOKREC_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("BOOKREC_SERVING_URLS", f"http://127.0.0.1:{free_port()}")
    for name in ("BOOKREC_GATE_THRESHOLDS", "BOOKREC_ADMIN_TOKEN", "BOOKREC_REDIS_URL",
                 "BOOKREC_ROLLOUT_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def reg(flow_env: Settings) -> Registry:
    """The registry the flows use."""
    return Registry.from_settings(flow_env)


class _SerialMotoServer:
    """moto's S3 over HTTP answering one request at a time.

    moto's threaded server checks a write condition and then writes in two steps, so two
    concurrent conditional writers can both succeed (seen about once in ten runs of the
    race tests). S3 evaluates a condition atomically with its write; serving requests one
    at a time restores that guarantee, so the race tests test our code, not moto's.
    """

    def __init__(self, port: int):
        self.port = port
        self._server = None
        self._thread = None

    def start(self) -> None:
        import threading

        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", self.port, app, threaded=False,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


@pytest.fixture(scope="session")
def serial_moto_server(moto_server: str) -> Iterator[str]:
    """Endpoint of a one-request-at-a-time moto server (needs moto_server's AWS env)."""
    server = _SerialMotoServer(free_port())
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def race_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for the race tests: a local folder, or S3 with atomic conditional writes."""
    if request.param == "local":
        return Settings(home=tmp_path / "home", artifacts_uri=str(tmp_path / "store"))
    import uuid

    import boto3

    endpoint = request.getfixturevalue("serial_moto_server")
    bucket = f"bookrec-race-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Settings(home=tmp_path / "home", artifacts_uri=f"s3://{bucket}/registry",
                    s3_endpoint_url=endpoint)


class FaultOnce:
    """A real store whose first ``put`` of a key ending in ``suffix`` fails with a transient
    ``StoreError``: before writing, or after the write landed (a lost answer). Everything
    else goes to the wrapped store untouched."""

    def __init__(self, store: ArtifactStore, suffix: str, *, after_write: bool):
        self.store = store
        self.suffix = suffix
        self.after_write = after_write
        self.tripped = 0

    def put(self, key: str, data: bytes, **conditions: Any) -> str:
        """Write through, failing once as configured."""
        if key.endswith(self.suffix) and not self.tripped:
            self.tripped += 1
            if self.after_write:
                self.store.put(key, data, **conditions)
            raise StoreError(f"{key}: injected transient failure")
        return self.store.put(key, data, **conditions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
