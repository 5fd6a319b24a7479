"""The one reference to the model a worker serves, and the machinery that replaces it.

The champion pointer in the artifact store is the source of truth. A background thread
(at low CPU priority, so requests keep their latency) checks it when told to (Redis
pub/sub message, ``POST /admin/reload``) and every ``model_poll_interval_s`` seconds;
a new champion is downloaded into a local folder shared by all workers (so the
memory-mapped arrays are shared pages), verified against the pointer's manifest
checksum, loaded with the serving loader, warmed, and only then swapped in by
assigning one attribute. A failed load keeps the old model and is logged.

A rollout (``rollouts/current.json``, ``bookrec.rollout``) is learnt the same way, in the
same check: while one runs the worker also holds the candidate, loaded and verified like a
champion, in ``variants`` (the rollout record and the candidate model, swapped together as
one reference); when it ends the reference is dropped. Files of the candidate identical to
the champion's (the catalogue, training histories, text features when both were fitted on
the same data) are hard links to one file in the local folder, so their pages are mapped
once for both models and every worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bookrec.artifacts import MANIFEST, manifest_sha256
from bookrec.settings import Settings
from serving.metrics import Metrics

log = logging.getLogger(__name__)

KEEP_LOCAL_VERSIONS = 3
LOADER_NICE = 10


def _verifies(folder: Path) -> bool:
    """True when every file of ``folder`` matches its manifest checksum."""
    from bookrec.artifacts import ArtifactError, verify_folder

    try:
        verify_folder(folder)
    except (ArtifactError, OSError):
        return False
    return True


def _remove(folder: Path) -> None:
    """Move ``folder`` aside and delete it (workers that mapped its files keep them)."""
    aside = folder.parent / f".{folder.name}.{os.getpid()}.damaged"
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _share_identical_files(folder: Path) -> int:
    """Replace files of ``folder`` by hard links to identical files (same sha256 in their
    manifests) of the other local versions beside it; the number of files linked.

    The page cache then holds one copy of each shared array for every model and worker
    that maps it. Called under the local folder's lock; a replaced file keeps its inode for
    any process that still maps it."""
    import json

    def files_of(version_dir: Path) -> dict[str, str]:
        try:
            manifest = json.loads((version_dir / MANIFEST).read_text())
            return {name: sha for name, sha in manifest["files"].items() if isinstance(sha, str)}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    by_name: dict[tuple[str, str], Path] = {}
    by_sha: dict[str, Path] = {}
    for other in sorted(folder.parent.iterdir()):
        if other == folder or not other.is_dir() or other.name.startswith("."):
            continue
        for name, sha in files_of(other).items():
            by_name.setdefault((name, sha), other / name)
            by_sha.setdefault(sha, other / name)
    linked = 0
    for name, sha in files_of(folder).items():
        source = by_name.get((name, sha)) or by_sha.get(sha)
        target = folder / name
        try:
            if source is None or os.path.samefile(source, target):
                continue
            if source.stat().st_size != target.stat().st_size:
                continue
            tmp = folder / f".{name}.{os.getpid()}.link"
            os.link(source, tmp)
            os.replace(tmp, target)
            linked += 1
        except OSError:
            continue  # another file system, or the other folder was pruned: keep the copy
    return linked


@dataclass(frozen=True)
class Variants:
    """A running rollout and the candidate model it serves beside the champion."""

    rollout: dict[str, Any]
    candidate: Any

    @property
    def rollout_id(self) -> str:
        """The rollout's id."""
        return self.rollout["id"]


class ModelHolder:
    """Holds the current model; ``model`` is read by requests, replaced by the loader thread."""

    def __init__(self, settings: Settings, metrics: Metrics):
        """Nothing is loaded here; call ``check()`` or ``start()``."""
        self.settings = settings
        self.metrics = metrics
        self.model: Any = None
        self.champion: dict[str, Any] | None = None
        self.variants: Variants | None = None  # while a rollout runs, else None
        self.loaded_at: float | None = None
        self.last_result: dict[str, Any] = {"status": "not_loaded"}
        self.local_root = settings.home_dir / "serving" / "models"
        self._registry: Any = None
        self._check_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._requested = 0
        self._completed = 0
        self._threads: list[threading.Thread] = []
        # Called as prewarm(new_model, previous_version) between loading and swapping.
        self.prewarm: Callable[[Any, str], int] | None = None

    # -- reading ---------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """The served version, or None before the first successful load."""
        model = self.model
        return model.version if model is not None else None

    @property
    def ready(self) -> bool:
        """True once a verified model is loaded."""
        return self.model is not None

    def registry(self) -> Any:
        """The model registry over the configured artifact store (built on first use)."""
        if self._registry is None:
            from bookrec.registry import Registry

            self._registry = Registry.from_settings(self.settings)
        return self._registry

    # -- loading ---------------------------------------------------------------------------
    def check(self, reason: str = "poll") -> dict[str, Any]:
        """Compare the served version with the champion pointer and load a new one if needed."""
        with self._check_lock:
            started = time.perf_counter()
            previous = self.version
            result: dict[str, Any] = {"pid": os.getpid(), "reason": reason, "previous": previous}
            try:
                champion = self.registry().champion()
                if champion is None:
                    result.update(status="no_champion", version=previous)
                elif previous == champion["version"]:
                    result.update(status="unchanged", version=previous)
                else:
                    variants = self.variants
                    if (
                        variants is not None
                        and variants.candidate.version == champion["version"]
                        and variants.rollout.get("candidate_manifest_sha256")
                        == champion.get("manifest_sha256")
                    ):
                        model = variants.candidate  # a rollout's candidate promoted: held already
                    else:
                        model = self._load(champion)
                    if previous is not None and self.prewarm is not None:
                        result["prewarmed"] = self._prewarm(model, previous)
                    if previous is not None and self.settings.reload_stagger_s > 0:
                        # Workers swap at spread-out moments: the first to swap fills the
                        # shared (Redis) cache for the new version, the others then hit it,
                        # instead of all of them missing every hot key at once.
                        self._stop.wait(random.uniform(0, self.settings.reload_stagger_s))
                    self.model = model  # the swap: one reference, atomic for readers
                    self.champion = champion
                    self.loaded_at = time.time()
                    self.metrics.set_model_version(model.version, previous)
                    outcome = "success" if previous is not None else "initial"
                    self.metrics.reloads.labels(outcome=outcome).inc()
                    result.update(status="reloaded", version=model.version)
                    log.info("model %s loaded (was %s, %s)", model.version, previous, reason)
                    self._prune_local()
            except Exception as exc:  # noqa: BLE001 - a bad load must never take down serving
                self.metrics.reloads.labels(outcome="failure").inc()
                error = f"{type(exc).__name__}: {exc}"
                result.update(status="failed", version=previous, error=error)
                log.error("model reload failed, keeping %s: %s", previous, result["error"])
            result["rollout"] = self._check_rollout()
            result["seconds"] = round(time.perf_counter() - started, 3)
            self.last_result = result
            return result

    def _check_rollout(self) -> dict[str, Any]:
        """Follow ``rollouts/current.json``: load the candidate of a new rollout, drop it
        when the rollout ends. A failed load leaves this worker serving the champion alone
        (``variants`` None) and is retried on the next check."""
        current = self.variants
        try:
            rollout = self.registry().current_rollout()
            if rollout is None:
                if current is not None:
                    self.variants = None
                    self.metrics.set_rollout(None, current.rollout_id)
                    log.info("rollout %s ended: candidate dropped", current.rollout_id)
                    return {"status": "ended", "id": None, "ended": current.rollout_id}
                return {"status": "none", "id": None}
            if current is not None and current.rollout_id == rollout["id"]:
                return {"status": "unchanged", "id": rollout["id"],
                        "candidate": current.candidate.version}
            if current is not None and current.candidate.version == rollout["candidate"]:
                candidate = current.candidate
            elif self.model is not None and self.model.version == rollout["candidate"]:
                candidate = self.model  # promoted already; the rollout is about to end
            else:
                candidate = self._load(
                    {
                        "version": rollout["candidate"],
                        "manifest_sha256": rollout.get("candidate_manifest_sha256"),
                    }
                )
            self.variants = Variants(rollout, candidate)  # one reference: record and model
            self.metrics.set_rollout(rollout["id"], current.rollout_id if current else None)
            log.info("rollout %s: candidate %s loaded", rollout["id"], candidate.version)
            return {"status": "loaded", "id": rollout["id"], "candidate": candidate.version}
        except Exception as exc:  # noqa: BLE001 - the champion keeps serving everybody
            if current is not None:
                self.variants = None
                self.metrics.set_rollout(None, current.rollout_id)
            self.metrics.reloads.labels(outcome="failure").inc()
            error = f"{type(exc).__name__}: {exc}"
            log.error("rollout check failed, serving the champion alone: %s", error)
            return {"status": "failed", "id": None, "error": error}

    def _prewarm(self, model: Any, previous: str) -> int:
        """Run the pre-warming hook; its failure is logged and does not stop the reload."""
        try:
            return self.prewarm(model, previous)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation
            log.warning("cache pre-warming for %s failed: %s", model.version, exc)
            return 0

    def _load(self, champion: dict[str, Any]) -> Any:
        """Fetch, verify and load the champion's version; raise if anything is off."""
        from bookrec.artifacts import ArtifactError
        from bookrec.models.persist import load_model

        version = champion["version"]
        expected_sha = champion.get("manifest_sha256")
        folder = self._local_copy(version, expected_sha)
        try:
            model = load_model(folder, mmap=True)
        except ArtifactError as exc:
            # A damaged local copy (a truncated or altered file): every later poll would
            # fail on it too, so remove it and fetch the version again, once.
            log.warning("local copy of %s failed verification (%s); fetching it again", version, exc)
            folder = self._local_copy(version, expected_sha, damaged=True)
            model = load_model(folder, mmap=True)
        if model.version != version:
            raise RuntimeError(f"{folder}: manifest version {model.version!r}, not {version!r}")
        model.popular(10)  # warm the pages requests touch first
        return model

    def _local_copy(self, version: str, expected_sha: str | None, damaged: bool = False) -> Path:
        """A verified local folder of ``version`` shared by all workers (downloaded once).

        ``damaged``: the copy failed verification; unless another worker has replaced it
        meanwhile, it is removed and downloaded again."""
        if "/" in version or version.startswith("."):
            raise RuntimeError(f"champion names an unsafe version {version!r}")
        self.local_root.mkdir(parents=True, exist_ok=True)
        dest = self.local_root / version
        with open(self.local_root / ".lock", "w") as lock_file:
            # One worker downloads; the others wait and then reuse its verified copy.
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            if damaged and not _verifies(dest):
                _remove(dest)
            have = (dest / MANIFEST).is_file() and (
                expected_sha is None or manifest_sha256(dest) == expected_sha
            )
            if not have:
                dest = Path(
                    self.registry().fetch_version(
                        version, self.local_root, expected_manifest_sha256=expected_sha
                    )
                )
                linked = _share_identical_files(dest)
                if linked:
                    log.info("%s: %d files shared with other local versions", version, linked)
        if expected_sha and manifest_sha256(dest) != expected_sha:
            raise RuntimeError(f"{dest}: manifest checksum differs from the champion pointer")
        return dest

    def _prune_local(self) -> None:
        """Delete local copies beyond the newest few (mapped files stay valid until unmapped)."""
        with contextlib.suppress(OSError):
            folders = sorted(
                (p for p in self.local_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )
            variants = self.variants
            keep = {self.version, variants.candidate.version if variants else None}
            for old in folders[KEEP_LOCAL_VERSIONS:]:
                if old.name not in keep:
                    shutil.rmtree(old, ignore_errors=True)

    def after_fork(self) -> None:
        """In a new worker: fresh store clients, and this process's version gauge."""
        self._registry = None
        self._check_lock = threading.Lock()
        if self.version is not None:
            self.metrics.set_model_version(self.version, None)
        if self.variants is not None:
            self.metrics.set_rollout(self.variants.rollout_id, None)

    # -- background ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loader thread (and the pub/sub listener when Redis is configured)."""
        if self._threads:
            return
        self._stop.clear()
        loader = threading.Thread(target=self._loader_loop, name="model-loader", daemon=True)
        self._threads.append(loader)
        if self.settings.redis_url:
            listener = threading.Thread(target=self._listen, name="model-pubsub", daemon=True)
            self._threads.append(listener)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the background threads."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def request_reload(self) -> None:
        """Ask the loader thread to check the champion pointer now (returns immediately)."""
        with self._cond:
            self._requested += 1
        self._wake.set()

    @property
    def background(self) -> bool:
        """True while the loader thread runs (it acts on ``request_reload``)."""
        return bool(self._threads)

    def reload_now(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Check the pointer now and wait for the outcome (used by ``POST /admin/reload``)."""
        if not self._threads:
            return self.check(reason="admin")
        with self._cond:
            self._requested += 1
            ticket = self._requested
        self._wake.set()
        with self._cond:
            done = self._cond.wait_for(lambda: self._completed >= ticket, timeout_s)
        if not done:
            return {"pid": os.getpid(), "status": "pending", "version": self.version}
        return self.last_result

    def _loader_loop(self) -> None:
        with contextlib.suppress(OSError):
            # Lower this thread's CPU priority only: hashing and loading yield to requests.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICE)
        while not self._stop.is_set():
            woken = self._wake.wait(self.settings.model_poll_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._cond:
                ticket = self._requested
            self.check(reason="signal" if woken else "poll")
            with self._cond:
                self._completed = ticket
                self._cond.notify_all()

    def _listen(self) -> None:
        """Wake the loader on every message on the reload channel; reconnect with backoff."""
        import redis

        backoff = 0.5
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=5, socket_connect_timeout=2
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.settings.reload_channel)
                backoff = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        log.info("reload signal on %s", self.settings.reload_channel)
                        self.request_reload()
            except (redis.RedisError, OSError) as exc:
                log.warning("reload channel unavailable (%s); retrying", exc.__class__.__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
                client.close()
