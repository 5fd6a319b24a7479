"""The artifact store: the same behaviour from the local folder and from S3 (moto over HTTP)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bookrec.settings import Settings
from bookrec.store import (
    ArtifactStore,
    LocalStore,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    open_store,
)


def test_put_get_list_delete_roundtrip(store: ArtifactStore) -> None:
    etag = store.put("models/v1/a.json", b'{"a": 1}')
    etag_b = store.put("models/v1/b.npy", b"\x00\x01")
    store.put("models/v2/a.json", b"{}")
    assert store.get("models/v1/a.json") == b'{"a": 1}'
    data, etag_read = store.get_with_etag("models/v1/a.json")
    assert (data, etag_read) == (b'{"a": 1}', etag)
    assert store.list("models/v1/") == ["models/v1/a.json", "models/v1/b.npy"]
    assert store.list_dirs("models/") == ["v1", "v2"]
    info = store.stat("models/v1/b.npy")
    assert info is not None and (info.size, info.etag) == (2, etag_b)
    store.delete("models/v1/a.json")
    assert store.stat("models/v1/a.json") is None
    assert store.list("models/v1/") == ["models/v1/b.npy"]
    store.delete("models/v1/a.json")  # deleting again is not an error


def test_missing_object_is_object_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="nope.json"):
        store.get("nope.json")
    with pytest.raises(ObjectNotFound):
        store.get_file("nope.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_if_none_match_creates_once_and_never_overwrites(store: ArtifactStore) -> None:
    store.put("v/file", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="v/file"):
        store.put("v/file", b"second", if_none_match=True)
    assert store.get("v/file") == b"first"


def test_put_file_if_none_match(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(b"payload" * 1000)
    store.put_file("v/x.bin", src, if_none_match=True)
    src.write_bytes(b"other")
    with pytest.raises(PreconditionFailed):
        store.put_file("v/x.bin", src, if_none_match=True)
    store.get_file("v/x.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"payload" * 1000
    info = store.stat("v/x.bin")
    assert info is not None and info.size == 7000 and info.sha256 is not None


def test_if_match_is_compare_and_swap(store: ArtifactStore) -> None:
    first = store.put("pointer", b"A")
    second = store.put("pointer", b"B", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("pointer", b"C", if_match=first)  # stale ETag
    assert store.get("pointer") == b"B"
    store.put("pointer", b"D", if_match=second)
    assert store.get("pointer") == b"D"
    with pytest.raises(PreconditionFailed):
        store.put("absent", b"x", if_match=first)
    assert store.stat("absent") is None


def _race_once(store: ArtifactStore, label: str, contenders: int) -> list[int]:
    """Let ``contenders`` threads CAS the same ETag at once; return the winners."""
    _, etag = store.get_with_etag("pointer")
    barrier = threading.Barrier(contenders)
    wins: list[int] = []

    def contend(n: int) -> None:
        barrier.wait()
        try:
            store.put("pointer", f"{label}-{n}".encode(), if_match=etag)
            wins.append(n)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins


def test_racing_compare_and_swap_has_exactly_one_winner(race_settings: Settings) -> None:
    store = open_store(race_settings.resolved_artifacts_uri, race_settings)
    store.put("pointer", b"start")
    for round_no in range(10):
        wins = _race_once(store, str(round_no), 4)
        assert len(wins) == 1, wins
        assert store.get("pointer") == f"{round_no}-{wins[0]}".encode()


def test_folder_upload_and_download(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.npy", "b.json", "manifest.json"):
        (src / name).write_bytes(name.encode())
    order: list[str] = []
    store.upload_folder(src, "models/v/", ["a.npy", "b.json", "manifest.json"],
                        progress=order.append)
    assert order == ["a.npy", "b.json", "manifest.json"]
    store.download_folder("models/v/", tmp_path / "dst", ["a.npy", "b.json", "manifest.json"])
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a.npy", "b.json",
                                                                    "manifest.json"]
    with pytest.raises(PreconditionFailed):
        store.upload_folder(src, "models/v/", ["a.npy"])


@pytest.mark.parametrize("key", ["../escape", "a/../b", "/abs", "a//b", "a\\b", ""])
def test_keys_that_could_escape_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(StoreError, match="invalid store key"):
        store.put(key, b"x")


def test_local_store_hides_temp_and_lock_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    etag = store.put("p", b"1")
    store.put("p", b"2", if_match=etag)
    (tmp_path / "s" / ".p.deadbeef.tmp").write_bytes(b"partial")
    assert store.list() == ["p"]


def test_open_store_picks_the_implementation(tmp_path: Path, moto_server: str) -> None:
    settings = Settings(home=tmp_path, s3_endpoint_url=moto_server)
    assert isinstance(open_store(str(tmp_path / "a"), settings), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path / 'b'}", settings), LocalStore)
    s3 = open_store("s3://some-bucket/prefix/", settings)
    assert (s3.bucket, s3.prefix) == ("some-bucket", "prefix/")  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="unsupported scheme"):
        open_store("gs://bucket/x", settings)
    with pytest.raises(StoreError, match="no bucket"):
        open_store("s3:///x", settings)
