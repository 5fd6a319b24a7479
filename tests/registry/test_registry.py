"""The registry on both stores: immutable versions, verified fetches, CAS promotion, rollback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bookrec.artifacts import ArtifactError, manifest_sha256
from bookrec.registry import (
    POINTER_KEY,
    IncompleteVersion,
    PromotionConflict,
    Registry,
    RegistryError,
    VersionExists,
    VersionNotFound,
)
from bookrec.settings import Settings
from bookrec.store import StoreError
from tests.registry.conftest import FaultOnce
from tests.utils.versions import make_version_folder

REPO = Path(__file__).resolve().parents[2]


def _add(registry: Registry, tmp_path: Path, version: str, **kw: object) -> Path:
    folder = make_version_folder(tmp_path / "build", version, **kw)  # type: ignore[arg-type]
    registry.add_version(folder, version)
    return folder


def test_add_then_fetch_roundtrip_verifies(registry: Registry, tmp_path: Path) -> None:
    folder = make_version_folder(tmp_path / "build", "v1", metrics={"ndcg@20": 0.1})
    uploaded: list[str] = []
    registry.add_version(folder, "v1", progress=uploaded.append)
    assert uploaded[-1] == "manifest.json" and len(uploaded) == 4
    fetched = registry.fetch_version("v1", tmp_path / "cache")
    assert fetched == tmp_path / "cache" / "v1"
    for name in ("array_0.npy", "array_1.npy", "ids.json", "manifest.json"):
        assert (fetched / name).read_bytes() == (folder / name).read_bytes()
    assert registry.manifest("v1")["metrics"] == {"ndcg@20": 0.1}
    # A second fetch reuses the verified copy; a damaged local copy is fetched again.
    (fetched / "ids.json").write_text("{}")
    again = registry.fetch_version("v1", tmp_path / "cache")
    assert (again / "ids.json").read_bytes() == (folder / "ids.json").read_bytes()


def test_versions_are_never_overwritten(registry: Registry, tmp_path: Path) -> None:
    _add(registry, tmp_path, "v1", seed=1)
    before = registry.manifest_bytes("v1")
    registry.add_version(tmp_path / "build" / "v1", "v1")  # same content: a no-op
    other = make_version_folder(tmp_path / "other", "v1", seed=2)
    with pytest.raises(VersionExists, match="v1"):
        registry.add_version(other, "v1")
    assert registry.manifest_bytes("v1") == before
    registry.fetch_version("v1", tmp_path / "cache")  # still the original, still verifies


def test_add_version_refuses_an_unverified_local_folder(registry: Registry, tmp_path: Path) -> None:
    folder = make_version_folder(tmp_path / "build", "v1")
    (folder / "ids.json").write_text('{"changed": true}')
    with pytest.raises(ArtifactError, match="ids.json checksum mismatch"):
        registry.add_version(folder, "v1")
    assert registry.store.list("models/") == []


@pytest.mark.parametrize("bad", ["../x", "a/b", "champion.json", "", "x" * 200, "-lead"])
def test_bad_version_ids_are_refused(registry: Registry, tmp_path: Path, bad: str) -> None:
    folder = make_version_folder(tmp_path / "build", "ok")
    with pytest.raises(RegistryError, match="invalid version id"):
        registry.add_version(folder, bad)


def test_tampered_file_in_store_is_refused_on_fetch(registry: Registry, tmp_path: Path) -> None:
    _add(registry, tmp_path, "v1")
    key = "models/v1/array_0.npy"
    data = bytearray(registry.store.get(key))
    data[-1] ^= 0xFF
    registry.store.put(key, bytes(data))
    with pytest.raises(ArtifactError, match="array_0.npy (checksum mismatch|does not match)"):
        registry.fetch_version("v1", tmp_path / "cache")
    assert not (tmp_path / "cache" / "v1").exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial download left


def test_tamper_with_forged_s3_metadata_is_caught_by_the_bytes(
    s3_bucket: str, moto_server: str, tmp_path: Path
) -> None:
    registry = Registry.from_settings(Settings(
        home=tmp_path, artifacts_uri=f"s3://{s3_bucket}/r", s3_endpoint_url=moto_server))
    _add(registry, tmp_path, "v1")
    key = "models/v1/array_1.npy"
    info = registry.store.stat(key)
    data = bytearray(registry.store.get(key))
    data[-1] ^= 0xFF
    s3 = registry.store
    s3.client.put_object(Bucket=s3.bucket, Key=s3.prefix + key, Body=bytes(data),  # type: ignore[attr-defined]
                         Metadata={"sha256": info.sha256})
    registry.check_complete("v1")  # metadata alone cannot tell
    with pytest.raises(ArtifactError, match="array_1.npy checksum mismatch"):
        registry.fetch_version("v1", tmp_path / "cache")


def test_tampered_manifest_is_refused(registry: Registry, tmp_path: Path) -> None:
    folder = _add(registry, tmp_path, "v1", metrics={"ndcg@20": 0.1})
    registry.promote("v1", by="test", reason="first")
    pinned = registry.champion()["manifest_sha256"]
    assert pinned == manifest_sha256(folder)
    # Rewrite the manifest in the store with inflated metrics but valid file checksums.
    manifest = json.loads(registry.manifest_bytes("v1"))
    manifest["metrics"]["ndcg@20"] = 0.9
    registry.store.put("models/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="changed after upload"):
        registry.fetch_version("v1", tmp_path / "cache", expected_manifest_sha256=pinned)
    _add(registry, tmp_path, "v2")
    with pytest.raises(ArtifactError, match="manifest changed since it was checked"):
        registry.promote("v2", by="t", reason="r", manifest_sha256="0" * 64)
    # A manifest naming an unknown schema or a file outside the folder is refused too.
    manifest["schema_version"] = 99
    registry.store.put("models/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="unknown schema_version 99"):
        registry.fetch_version("v1", tmp_path / "cache")
    manifest["schema_version"] = 1
    manifest["files"]["../../etc/passwd"] = "0" * 64
    registry.store.put("models/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="bad file"):
        registry.fetch_version("v1", tmp_path / "cache")


def test_missing_and_incomplete_versions(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(VersionNotFound):
        registry.fetch_version("nope", tmp_path / "cache")
    folder = make_version_folder(tmp_path / "build", "half")
    registry.store.put_file("models/half/array_0.npy", folder / "array_0.npy")
    with pytest.raises(IncompleteVersion, match="did not finish"):
        registry.fetch_version("half", tmp_path / "cache")
    with pytest.raises(IncompleteVersion):
        registry.promote("half", by="t", reason="r")
    assert registry.champion() is None
    assert [(r.version, r.status) for r in registry.list_versions()] == [("half", "incomplete")]
    assert registry.next_candidate() is None


def test_promote_list_reject_and_rollback_stack(registry: Registry, tmp_path: Path) -> None:
    for i, v in enumerate(["a", "b", "c", "d"]):
        _add(registry, tmp_path, v, seed=i, metrics={"ndcg@20": i / 10})
        time.sleep(0.01)  # distinct created_at
    assert registry.next_candidate() == "d"
    registry.promote("a", by="t", reason="first")
    registry.promote("b", by="t", reason="better")
    registry.promote("c", by="t", reason="better")
    registry.mark_rejected("d", "NDCG@20 dropped", by="t")
    rows = {r.version: r for r in registry.list_versions()}
    assert {v: r.status for v, r in rows.items()} == {
        "a": "promoted", "b": "promoted", "c": "champion", "d": "rejected"}
    assert rows["c"].champion and not rows["b"].champion
    assert rows["d"].reason == "NDCG@20 dropped" and rows["d"].metrics == {"ndcg@20": 0.3}
    assert registry.store.list("models/d/")  # a rejected version stays in the store
    assert registry.next_candidate() is None
    with pytest.raises(RegistryError, match="never promoted"):
        registry.rollback_target("d")
    with pytest.raises(RegistryError, match="already the champion"):
        registry.rollback_target("c")
    with pytest.raises(RegistryError, match="champion"):
        registry.mark_rejected("c", "no", by="t")

    assert registry.rollback_target() == "b"
    registry.promote("b", by="t", reason="rollback", action="rolled back")
    pointer = registry.champion()
    assert (pointer["version"], pointer["action"], pointer["previous"]) == (
        "b", "rolled back", ["a"])
    assert registry.rollback_target() == "a"
    registry.promote("a", by="t", reason="rollback", action="rolled back")
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        registry.rollback_target()
    # Rolling "forward" to a version promoted before pushes the current champion.
    assert registry.rollback_target("c") == "c"
    registry.promote("c", by="t", reason="forward", action="rolled back")
    assert registry.champion()["previous"] == ["a"]
    assert registry.rollback_target() == "a"


@pytest.mark.parametrize("after_write", [True, False], ids=["answer-lost", "write-failed"])
def test_retried_swap_after_a_failed_status_write_is_a_success(
    registry: Registry, tmp_path: Path, after_write: bool
) -> None:
    _add(registry, tmp_path, "a", seed=1)
    _add(registry, tmp_path, "b", seed=2)
    registry.promote("a", by="t", reason="first")
    state = registry.champion_state()
    sha = registry.check_complete("b")
    flaky = Registry(FaultOnce(registry.store, "b.status.json", after_write=after_write))
    with pytest.raises(StoreError, match="injected"):
        flaky.promote("b", by="t", reason="better", expected=state, manifest_sha256=sha)
    landed = registry.champion()
    assert landed["version"] == "b"  # the swap happened before the status write failed
    # The task's retry: the same swap from the same expected state, then the status write.
    again = flaky.promote("b", by="t", reason="better", expected=state, manifest_sha256=sha)
    assert again == landed == registry.champion()  # the pointer is not rewritten
    assert registry.status("b")["status"] == "promoted"
    assert registry.status("b")["at"] == landed["promoted_at"]
    assert registry.champion()["previous"] == ["a"]


def test_retried_swap_whose_first_write_landed_unanswered_is_a_success(
    registry: Registry, tmp_path: Path
) -> None:
    _add(registry, tmp_path, "a", seed=1)
    state = registry.champion_state()
    flaky = Registry(FaultOnce(registry.store, "champion.json", after_write=True))
    with pytest.raises(StoreError, match="injected"):
        flaky.swap_champion("a", by="t", reason="first", expected=state)
    pointer = flaky.swap_champion("a", by="t", reason="first", expected=state)
    assert pointer == registry.champion() and pointer["version"] == "a"


def test_a_retry_that_finds_another_version_or_manifest_still_conflicts(
    registry: Registry, tmp_path: Path
) -> None:
    _add(registry, tmp_path, "a", seed=1)
    _add(registry, tmp_path, "b", seed=2)
    state = registry.champion_state()
    registry.promote("a", by="t", reason="first", expected=state)
    with pytest.raises(PromotionConflict, match="from None to a"):
        registry.swap_champion("b", by="t", reason="stale", expected=state)
    # Same version name, but the pointer was written for other bytes: not ours.
    pointer = registry.champion()
    registry.store.put(POINTER_KEY, json.dumps({**pointer, "manifest_sha256": "0" * 64}).encode())
    with pytest.raises(PromotionConflict):
        registry.swap_champion("a", by="t", reason="first", expected=state)


def test_stale_expected_state_loses(registry: Registry, tmp_path: Path) -> None:
    _add(registry, tmp_path, "a")
    _add(registry, tmp_path, "b")
    state = registry.champion_state()  # nothing promoted yet
    registry.promote("a", by="t", reason="first", expected=state)
    with pytest.raises(PromotionConflict, match="champion changed from None to a"):
        registry.promote("b", by="t", reason="stale", expected=state)
    assert registry.champion()["version"] == "a"


def test_racing_promotions_threads_exactly_one_wins(
    race_settings: Settings, tmp_path: Path
) -> None:
    registry = Registry.from_settings(race_settings)
    for v in ("base", "x0", "x1", "x2", "x3"):
        _add(registry, tmp_path, v)
    registry.promote("base", by="t", reason="base")
    state = registry.champion_state()
    barrier = threading.Barrier(4)
    results: dict[str, str] = {}

    def contend(version: str) -> None:
        barrier.wait()
        try:
            registry.promote(version, by=version, reason="race", expected=state)
            results[version] = "won"
        except PromotionConflict as exc:
            results[version] = f"lost: {exc}"

    threads = [threading.Thread(target=contend, args=(f"x{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, r in results.items() if r == "won"]
    assert len(winners) == 1, results
    assert all("champion changed from base" in r for v, r in results.items() if v not in winners)
    pointer = registry.champion()
    assert pointer["version"] == winners[0] and pointer["previous"] == ["base"]


_RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bookrec.registry import PromotionConflict, Registry
    from bookrec.settings import Settings
    uri, endpoint, version, gate_dir, home = sys.argv[1:6]
    settings = Settings(artifacts_uri=uri, s3_endpoint_url=endpoint or None, home=home)
    registry = Registry.from_settings(settings)
    state = registry.champion_state()
    # Written aside, then renamed: a ready file is never seen half-written.
    partial = Path(gate_dir) / f".partial-{version}"
    partial.write_text(state.version or "")
    partial.rename(Path(gate_dir) / f"ready-{version}")
    deadline = time.monotonic() + 120  # never spin on after the test is gone
    while not (Path(gate_dir) / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    try:
        registry.promote(version, by=version, reason="race", expected=state)
        print("won")
    except PromotionConflict as exc:
        print("lost", exc)
    """
)


def test_racing_promotions_processes_exactly_one_wins(
    race_settings: Settings, tmp_path: Path, spawn
) -> None:
    registry = Registry.from_settings(race_settings)
    store_settings = race_settings
    for v in ("base", "p0", "p1", "p2"):
        _add(registry, tmp_path, v)
    registry.promote("base", by="t", reason="base")
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    procs = [
        spawn(
            [sys.executable, "-c", _RACER, store_settings.resolved_artifacts_uri,
             store_settings.s3_endpoint_url or "", f"p{i}", str(gate_dir), str(tmp_path / "h")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=os.environ,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 60
    while len(list(gate_dir.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Every racer has read the same champion before any of them writes.
    assert [p.read_text() for p in sorted(gate_dir.glob("ready-*"))] == ["base"] * 3
    (gate_dir / "go").touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    verdicts = [out.strip().split()[0] for out, _ in outputs]
    assert sorted(verdicts) == ["lost", "lost", "won"], outputs
    winner = f"p{verdicts.index('won')}"
    assert registry.champion()["version"] == winner


_UPLOADER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bookrec.registry import Registry
    from bookrec.settings import Settings
    settings = Settings(artifacts_uri=sys.argv[1], s3_endpoint_url=sys.argv[2] or None,
                        home=sys.argv[5])
    registry = Registry.from_settings(settings)

    def progress(name):
        print(name, flush=True)
        if name != "manifest.json":
            # Slow the upload down so the test can kill it between files.
            sys.stdin.readline()

    registry.add_version(Path(sys.argv[3]), sys.argv[4], progress=progress)
    """
)


def test_killed_upload_is_never_promotable(
    registry: Registry, store_settings: Settings, tmp_path: Path, spawn
) -> None:
    _add(registry, tmp_path, "good")
    registry.promote("good", by="t", reason="first")
    pointer_before = registry.store.get(POINTER_KEY)
    folder = make_version_folder(tmp_path / "build", "killed", n_files=6, size=200_000)
    proc = spawn(
        [sys.executable, "-c", _UPLOADER, store_settings.resolved_artifacts_uri,
         store_settings.s3_endpoint_url or "", str(folder), "killed", str(tmp_path / "h")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=os.environ,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "array_0.npy"  # first file is in the store
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "array_1.npy"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdin.close()
    proc.stdout.close()

    uploaded = registry.store.list("models/killed/")
    assert "models/killed/array_0.npy" in uploaded
    assert "models/killed/manifest.json" not in uploaded
    assert registry.store.get(POINTER_KEY) == pointer_before
    status = {r.version: r.status for r in registry.list_versions()}
    assert status == {"good": "champion", "killed": "incomplete"}
    assert registry.next_candidate() is None
    with pytest.raises(IncompleteVersion):
        registry.promote("killed", by="t", reason="should fail")
    assert registry.store.get(POINTER_KEY) == pointer_before
    # Re-running the upload resumes it: same files are kept, the manifest lands last.
    registry.add_version(folder, "killed")
    assert registry.next_candidate() == "killed"
    registry.fetch_version("killed", tmp_path / "cache")


def test_from_settings_uses_artifacts_uri(store_settings: Settings, tmp_path: Path) -> None:
    registry = Registry.from_settings(store_settings)
    assert registry.store.uri.rstrip("/").endswith(
        store_settings.resolved_artifacts_uri.rstrip("/").split("/")[-1])
    assert registry.champion() is None and registry.list_versions() == []
