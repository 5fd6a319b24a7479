"""The model registry: immutable versions and a champion pointer in the artifact store.

Layout under the store root::

    models/<version>/<file>...        written once, manifest.json last (If-None-Match)
    models/<version>.status.json      small mutable status next to the immutable version
    models/champion.json              the pointer, replaced only by compare-and-swap (If-Match)
    rollouts/current.json             the running rollout (or none), compare-and-swap too
    rollouts/<id>.json                every rollout's record, running or ended

A version without its manifest is incomplete (an interrupted upload) and can never
be promoted. The pointer carries the stack of earlier champions so that a rollback
knows "the one before" without a database.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bookrec.artifacts import (
    MANIFEST,
    ArtifactError,
    manifest_sha256,
    read_manifest,
    verify_folder,
)
from bookrec.store import ArtifactStore, ObjectNotFound, PreconditionFailed, open_store

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.settings import Settings

MODELS = "models/"
POINTER_KEY = "models/champion.json"
HISTORY_LIMIT = 50
AWAITING = "awaiting_approval"
ROLLOUTS = "rollouts/"
ROLLOUT_KEY = "rollouts/current.json"
_ROLLOUT_ID_RE = re.compile(r"[0-9a-f]{32}")
_IO_THREADS = 8  # parallel object requests: a model is a few dozen files
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: no trailing newline


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says why."""


class VersionExists(RegistryError):
    """A version with different content is already in the store (versions are immutable)."""


class VersionNotFound(RegistryError):
    """No such version in the store."""


class IncompleteVersion(RegistryError):
    """The version has no manifest or is missing files (an interrupted upload)."""


class PromotionConflict(RegistryError):
    """The champion pointer changed between reading and writing it (a concurrent promotion)."""


class RolloutRefused(RegistryError, ValueError):
    """A rollout cannot start or end as asked (the message says why)."""


class RolloutRunning(RolloutRefused):
    """Another rollout is running; end it first."""


class RolloutConflict(RolloutRefused):
    """The rollout to end is not the running one (ended already, or another one runs)."""


@dataclass(frozen=True)
class ChampionState:
    """The pointer as read, with the ETag a compare-and-swap must match."""

    pointer: dict[str, Any] | None
    etag: str | None

    @property
    def version(self) -> str | None:
        """The champion's version, or None before the first promotion."""
        return self.pointer["version"] if self.pointer else None


@dataclass(frozen=True)
class VersionInfo:
    """One row of ``list_versions``."""

    version: str
    status: str  # champion | promoted | rejected | awaiting_approval | candidate | incomplete
    champion: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The shape ``bookrec models --json`` prints."""
        return {
            "version": self.version,
            "status": self.status,
            "champion": self.champion,
            "metrics": self.metrics,
        }


def check_version(version: str) -> str:
    """Refuse version ids that are not a simple file name (they become store keys)."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or version.endswith(".json"):
        raise RegistryError(
            f"invalid version id {version!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )
    return version


def new_version_id(now: datetime | None = None) -> str:
    """A sortable, unique version id such as ``20261125T173455Z-3f9a1c``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, indent=2, sort_keys=True).encode("utf-8")


class Registry:
    """Versions, statuses and the champion pointer on one ``ArtifactStore``."""

    def __init__(self, store: ArtifactStore):
        """Wrap ``store`` (see ``from_settings`` for the usual way in)."""
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry on ``settings.artifacts_uri`` (a folder by default, or S3)."""
        return cls(open_store(settings.resolved_artifacts_uri, settings))

    # -- keys -------------------------------------------------------------------------------

    @staticmethod
    def _file_key(version: str, name: str) -> str:
        return f"{MODELS}{check_version(version)}/{name}"

    @staticmethod
    def _status_key(version: str) -> str:
        return f"{MODELS}{check_version(version)}.status.json"

    # -- writing versions -------------------------------------------------------------------

    def add_version(
        self,
        local_dir: Path,
        version: str,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a verified model folder as ``version``: data files first, manifest last.

        Every write is create-only, so an existing version is never overwritten. Re-running
        after an interrupted upload resumes it (files already there with the same sha256
        are kept); different content under the same id raises ``VersionExists``.
        """
        local_dir = Path(local_dir)
        check_version(version)
        manifest = verify_folder(local_dir)
        manifest_bytes = (local_dir / MANIFEST).read_bytes()
        try:
            existing = self.store.get(self._file_key(version, MANIFEST))
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing == manifest_bytes:
                return manifest
            raise VersionExists(f"version {version} already exists with a different manifest")
        for name, sha in sorted(manifest["files"].items()):
            key = self._file_key(version, name)
            try:
                self.store.put_file(key, local_dir / name, if_none_match=True)
            except PreconditionFailed:
                info = self.store.stat(key)
                if info is None or info.sha256 != sha:
                    raise VersionExists(
                        f"version {version}: {name} already exists with different content"
                    ) from None
            if progress is not None:
                progress(name)
        try:
            self.store.put(self._file_key(version, MANIFEST), manifest_bytes, if_none_match=True)
        except PreconditionFailed:
            if self.store.get(self._file_key(version, MANIFEST)) != manifest_bytes:
                raise VersionExists(f"version {version} was added concurrently") from None
        if progress is not None:
            progress(MANIFEST)
        return manifest

    # -- reading versions -------------------------------------------------------------------

    def manifest_bytes(self, version: str) -> bytes:
        """The stored manifest's bytes; ``IncompleteVersion`` or ``VersionNotFound`` if absent."""
        try:
            return self.store.get(self._file_key(version, MANIFEST))
        except ObjectNotFound:
            if self.store.list(f"{MODELS}{version}/"):
                raise IncompleteVersion(
                    f"version {version} has no {MANIFEST}: its upload did not finish"
                ) from None
            raise VersionNotFound(f"no version {version} in {self.store.uri}") from None

    def manifest(self, version: str) -> dict[str, Any]:
        """The stored manifest, parsed and schema-checked (checksums are checked on fetch)."""
        data = self.manifest_bytes(version)
        try:
            manifest = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"version {version}: {MANIFEST} is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ArtifactError(f"version {version}: {MANIFEST} has no 'files' table")
        for name in manifest["files"]:
            if (not isinstance(name, str) or not name or "/" in name or "\\" in name
                    or name.startswith(".") or name == MANIFEST):
                raise ArtifactError(f"version {version}: manifest names a bad file {name!r}")
        return manifest

    def check_complete(self, version: str) -> str:
        """Check that the manifest and every file it lists are in the store; return its sha256.

        Cheap (metadata only); ``fetch_version`` checks the bytes themselves.
        """
        data = self.manifest_bytes(version)
        manifest = self.manifest(version)
        names = sorted(manifest["files"])
        keys = [self._file_key(version, name) for name in names]
        with ThreadPoolExecutor(_IO_THREADS) as pool:
            infos = list(pool.map(self.store.stat, keys))
        for name, info in zip(names, infos, strict=True):
            if info is None:
                raise IncompleteVersion(f"version {version}: {name} is missing from the store")
            if info.sha256 is not None and info.sha256 != manifest["files"][name]:
                raise ArtifactError(f"version {version}: {name} does not match its manifest")
        return hashlib.sha256(data).hexdigest()

    def fetch_version(
        self, version: str, dest_dir: Path, *, expected_manifest_sha256: str | None = None
    ) -> Path:
        """Download ``version`` to ``dest_dir/<version>``, verify every checksum, return the path.

        ``expected_manifest_sha256`` (from the pointer or a status object) also pins the
        manifest itself. The store must still hold every file; an existing local copy with
        the same manifest that still verifies is then reused instead of downloaded again.
        """
        dest_dir = Path(dest_dir)
        data = self.manifest_bytes(version)
        wanted_sha = hashlib.sha256(data).hexdigest()
        self.check_complete(version)  # a local copy is no use if serving cannot fetch it
        if expected_manifest_sha256 is not None and wanted_sha != expected_manifest_sha256:
            raise ArtifactError(
                f"version {version}: manifest in the store ({wanted_sha[:12]}) is not the one "
                f"recorded ({expected_manifest_sha256[:12]}); it was changed after upload"
            )
        final = dest_dir / check_version(version)
        if (final / MANIFEST).is_file() and manifest_sha256(final) == wanted_sha:
            try:
                verify_folder(final)
                return final
            except ArtifactError:
                pass  # a damaged local copy: download again
        dest_dir.mkdir(parents=True, exist_ok=True)
        partial = dest_dir / f".{version}.{uuid.uuid4().hex}.partial"
        partial.mkdir()
        try:
            (partial / MANIFEST).write_bytes(data)
            manifest = read_manifest(partial)

            def download(name: str) -> None:
                try:
                    self.store.get_file(self._file_key(version, name), partial / name)
                except ObjectNotFound:
                    raise ArtifactError(
                        f"version {version}: {name} is listed in the manifest but missing "
                        "from the store"
                    ) from None

            with ThreadPoolExecutor(_IO_THREADS) as pool:
                list(pool.map(download, sorted(manifest["files"])))
            verify_folder(partial)
            self._install(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final

    @staticmethod
    def _install(partial: Path, final: Path) -> None:
        """Move a verified download into place, replacing an older or damaged copy."""
        if final.exists():
            old = final.parent / f".{final.name}.{uuid.uuid4().hex}.old"
            try:
                os.rename(final, old)
            except FileNotFoundError:
                old = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(partial, final)
        except OSError:
            # Another process installed the same version first; keep theirs if it verifies.
            verify_folder(final)

    # -- status and listing -----------------------------------------------------------------

    def status(self, version: str) -> dict[str, Any] | None:
        """The version's status object (rejected / promoted, reason, when, by), if any."""
        try:
            return json.loads(self.store.get(self._status_key(version)))
        except ObjectNotFound:
            return None

    def _write_status(self, version: str, payload: dict[str, Any]) -> None:
        self.store.put(self._status_key(version), _dumps(payload))

    def mark_rejected(
        self, version: str, reason: str, *, by: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record that the gate rejected ``version``; the files stay in the store, untouched."""
        if self.champion_state().version == version:
            raise RegistryError(f"version {version} is the champion; roll back before rejecting it")
        payload = {"status": "rejected", "reason": reason, "at": _now(), "by": by}
        if details:
            payload["details"] = details
        self._write_status(version, payload)
        return payload

    def list_versions(self) -> list[VersionInfo]:
        """Every version in the store with its status and metrics, newest first."""
        state = self.champion_state()
        earlier = set(state.pointer.get("previous", [])) if state.pointer else set()
        versions = [v for v in self.store.list_dirs(MODELS) if _VERSION_RE.fullmatch(v)]

        def read(version: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
            try:
                manifest = self.manifest(version)
            except (RegistryError, ArtifactError):
                manifest = None
            return self.status(version) or {}, manifest

        with ThreadPoolExecutor(_IO_THREADS) as pool:
            found = list(pool.map(read, versions))
        rows = []
        for version, (status, manifest) in zip(versions, found, strict=True):
            if manifest is None:
                rows.append(VersionInfo(version, "incomplete", False, reason="no manifest"))
                continue
            if version == state.version:
                label = "champion"
            elif version in earlier or status.get("status") == "promoted":
                label = "promoted"
            elif status.get("status") == "rejected":
                label = "rejected"
            elif status.get("status") == AWAITING:
                label = AWAITING
            else:
                label = "candidate"
            rows.append(
                VersionInfo(
                    version,
                    label,
                    version == state.version,
                    manifest.get("metrics") or {},
                    manifest.get("created_at"),
                    status.get("reason"),
                )
            )
        rows.sort(key=lambda r: (r.created_at or "", r.version), reverse=True)
        return rows

    def next_candidate(self) -> str | None:
        """The newest complete version never promoted nor rejected."""
        for row in self.list_versions():
            if row.status == "candidate":
                return row.version
        return None

    # -- the champion pointer ---------------------------------------------------------------

    def champion_state(self) -> ChampionState:
        """The pointer and its ETag (both None before the first promotion)."""
        try:
            data, etag = self.store.get_with_etag(POINTER_KEY)
        except ObjectNotFound:
            return ChampionState(None, None)
        try:
            pointer = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{POINTER_KEY} is not valid JSON ({exc})") from exc
        return ChampionState(pointer, etag)

    def champion(self) -> dict[str, Any] | None:
        """The champion pointer: version, manifest_sha256, promoted_at, by, reason (or None)."""
        return self.champion_state().pointer

    def rollback_target(self, version: str | None = None) -> str:
        """The version a rollback goes to: ``version`` if it was promoted before, else the
        champion before the current one."""
        state = self.champion_state()
        if state.pointer is None:
            raise RegistryError("there is no champion to roll back from")
        previous = list(state.pointer.get("previous", []))
        if version is None:
            if not previous:
                raise RegistryError(
                    f"champion {state.version} has no earlier promoted version to roll back to"
                )
            return previous[-1]
        check_version(version)
        if version == state.version:
            raise RegistryError(f"version {version} is already the champion")
        status = self.status(version) or {}
        if version not in previous and status.get("status") != "promoted":
            if not status and not self.store.list(f"{MODELS}{version}/"):
                raise VersionNotFound(f"version {version} does not exist in {self.store.uri}")
            raise RegistryError(f"version {version} was never promoted; promote it instead")
        return version

    def promote(
        self,
        version: str,
        *,
        by: str,
        reason: str,
        expected: ChampionState | None = None,
        manifest_sha256: str | None = None,
        action: str = "promoted",
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Point the champion at ``version`` (``swap_champion``), then write its status
        (``record_champion_status``); returns the pointer. See ``swap_champion``."""
        pointer = self.swap_champion(
            version,
            by=by,
            reason=reason,
            expected=expected,
            manifest_sha256=manifest_sha256,
            action=action,
        )
        self.record_champion_status(pointer, details=details)
        return pointer

    def swap_champion(
        self,
        version: str,
        *,
        by: str,
        reason: str,
        expected: ChampionState | None = None,
        manifest_sha256: str | None = None,
        action: str = "promoted",
    ) -> dict[str, Any]:
        """Point the champion at ``version`` by compare-and-swap on the pointer's ETag.

        ``expected`` is the state the caller's decision was based on (read now if omitted);
        if the pointer changed since, ``PromotionConflict`` is raised and nothing is written.
        ``manifest_sha256`` pins the manifest the caller checked. ``action`` is "promoted"
        or "rolled back" (a rollback pops the stack of earlier champions).

        Safe to retry with the same ``expected``: a swap whose condition fails because the
        pointer already names ``version`` with this manifest (an earlier attempt landed, its
        answer or the step after it was lost) is a success and returns that pointer.
        """
        sha = self.check_complete(version)
        if manifest_sha256 is not None and sha != manifest_sha256:
            raise ArtifactError(
                f"version {version}: manifest changed since it was checked "
                f"({manifest_sha256[:12]} -> {sha[:12]})"
            )
        state = expected if expected is not None else self.champion_state()
        if state.version == version:
            raise RegistryError(f"version {version} is already the champion")
        previous = list(state.pointer.get("previous", [])) if state.pointer else []
        if version in previous and action == "rolled back":
            previous = previous[: len(previous) - 1 - previous[::-1].index(version)]
        elif state.version is not None:
            previous.append(state.version)
        pointer = {
            "version": version,
            "manifest_sha256": sha,
            "promoted_at": _now(),
            "by": by,
            "reason": reason,
            "action": action,
            "previous": previous[-HISTORY_LIMIT:],
        }
        data = _dumps(pointer)
        try:
            if state.etag is None:
                self.store.put(POINTER_KEY, data, if_none_match=True)
            else:
                self.store.put(POINTER_KEY, data, if_match=state.etag)
        except PreconditionFailed:
            landed = self.champion()
            if (
                landed is not None
                and landed.get("version") == version
                and landed.get("manifest_sha256") == sha
            ):
                return landed  # a retry of a swap that already happened
            raise PromotionConflict(
                f"champion changed from {state.version} to "
                f"{landed.get('version') if landed else None} while {action} {version}; "
                "nothing was changed, re-run to decide against the new champion"
            ) from None
        return pointer

    def record_champion_status(
        self, pointer: dict[str, Any], *, details: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Write the status object of the version ``pointer`` names (after ``swap_champion``).

        Idempotent, so it is retried on its own without repeating the swap. A rollback to a
        version already marked promoted keeps that status (and its promotion details).
        """
        version = pointer["version"]
        if pointer.get("action") != "promoted":
            current = self.status(version) or {}
            if current.get("status") == "promoted":
                return current
        payload = {
            "status": "promoted",
            "reason": pointer["reason"],
            "at": pointer["promoted_at"],
            "by": pointer["by"],
            "manifest_sha256": pointer["manifest_sha256"],
        }
        if details:
            payload["details"] = details
        self._write_status(version, payload)
        return payload

    # -- approvals --------------------------------------------------------------------------

    def mark_awaiting_approval(self, version: str, approval: dict[str, Any]) -> dict[str, Any]:
        """Record that ``version`` waits for a human (``approval``: flow run, deadline, the
        champion state at gate time); ``next_candidate`` skips it until it is decided."""
        payload = {"status": AWAITING, "at": _now(), **approval}
        self._write_status(version, payload)
        return payload

    def awaiting_approval(self) -> dict[str, dict[str, Any]]:
        """Every version that waits for approval, with its status object."""
        versions = [v for v in self.store.list_dirs(MODELS) if _VERSION_RE.match(v)]
        with ThreadPoolExecutor(_IO_THREADS) as pool:
            found = list(pool.map(self.status, versions))
        return {v: st for v, st in zip(versions, found, strict=True)
                if st and st.get("status") == AWAITING}

    # -- rollouts ---------------------------------------------------------------------------

    def _rollout_state(self) -> tuple[dict[str, Any], str | None]:
        """``rollouts/current.json`` as read ({"rollout": record or None}) and its ETag."""
        try:
            data, etag = self.store.get_with_etag(ROLLOUT_KEY)
        except ObjectNotFound:
            return {"rollout": None}, None
        try:
            state = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{ROLLOUT_KEY} is not valid JSON ({exc})") from exc
        return state, etag

    def _put_rollout_state(self, state: dict[str, Any], etag: str | None) -> None:
        if etag is None:
            self.store.put(ROLLOUT_KEY, _dumps(state), if_none_match=True)
        else:
            self.store.put(ROLLOUT_KEY, _dumps(state), if_match=etag)

    @staticmethod
    def _rollout_key(rollout_id: str) -> str:
        if not isinstance(rollout_id, str) or not _ROLLOUT_ID_RE.fullmatch(rollout_id):
            raise RolloutRefused(f"invalid rollout id {rollout_id!r}: 32 hex digits expected")
        return f"{ROLLOUTS}{rollout_id}.json"

    def current_rollout(self) -> dict[str, Any] | None:
        """The running rollout's record, or None."""
        return self._rollout_state()[0].get("rollout")

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        """One rollout's record, running or ended (None if there is no such rollout)."""
        try:
            return json.loads(self.store.get(self._rollout_key(rollout_id)))
        except ObjectNotFound:
            return None

    def start_rollout(
        self,
        candidate: str,
        *,
        interleave: float,
        canary: float,
        started_by: str,
        flow_run_id: str | None = None,
    ) -> dict[str, Any]:
        """Start serving ``candidate`` beside the champion to a share of readers.

        ``interleave``: share of readers whose list is a team-draft interleaving of the two
        models; ``canary``: share served by the candidate alone (``bookrec.rollout.assign``).
        Written by compare-and-swap on ``rollouts/current.json``, so of two concurrent
        starts one wins and the other gets ``RolloutRunning``. The record pins the champion
        at start, the candidate's manifest checksum and a fresh salt for the reader hash.
        The champion is not moved; serving picks the rollout up like a new champion (poll,
        reload signal, ``POST /admin/reload``).
        """
        shares = {"interleave": interleave, "canary": canary}
        for name, share in shares.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not (
                0.0 <= float(share) <= 1.0
            ):
                raise RolloutRefused(f"{name} must be a share between 0 and 1, not {share!r}")
        if float(interleave) + float(canary) > 1.0 + 1e-12:
            raise RolloutRefused(
                f"interleave + canary must be at most 1 (got {interleave} + {canary})"
            )
        if not isinstance(started_by, str) or not started_by.strip():
            raise RolloutRefused("started_by must name who or what starts the rollout")
        check_version(candidate)
        sha = self.check_complete(candidate)  # VersionNotFound / IncompleteVersion
        champion = self.champion_state()
        if champion.version is None:
            raise RolloutRefused("there is no champion to compare a candidate with")
        if champion.version == candidate:
            raise RolloutRefused(f"version {candidate} is already the champion")
        state, etag = self._rollout_state()
        running = state.get("rollout")
        if running is not None:
            raise RolloutRunning(
                f"rollout {running['id']} of {running['candidate']} is running; end it first"
            )
        record = {
            "id": uuid.uuid4().hex,
            "candidate": candidate,
            "candidate_manifest_sha256": sha,
            "champion": champion.version,
            "interleave": float(interleave),
            "canary": float(canary),
            "salt": secrets.token_hex(8),
            "started_at": _now(),
            "started_by": started_by,
            "flow_run_id": flow_run_id,
        }
        self.store.put(self._rollout_key(record["id"]), _dumps(record), if_none_match=True)
        try:
            self._put_rollout_state({**state, "rollout": record}, etag)
        except PreconditionFailed:
            now_running = self.current_rollout()
            raise RolloutRunning(
                "another rollout started at the same moment"
                + (f" ({now_running['id']} of {now_running['candidate']})" if now_running else "")
            ) from None
        return record

    def end_rollout(self, rollout_id: str, decision: str, reason: str) -> dict[str, Any]:
        """End the running rollout ``rollout_id`` (compare-and-swap: only if it is still the
        running one) and return its ended record (``ended_at``, ``decision``, ``reason``),
        kept readable as ``rollouts/<id>.json``. The champion is not moved here.

        Safe to retry: ending a rollout that this same decision ended already returns its
        record; one ended otherwise, or not running, raises ``RolloutConflict``.
        """
        key = self._rollout_key(rollout_id)
        if not isinstance(decision, str) or not decision.strip():
            raise RolloutRefused("decision must be a non-empty string")
        state, etag = self._rollout_state()
        running = state.get("rollout")
        if running is None or running.get("id") != rollout_id:
            last = state.get("last") or {}
            stored = self.rollout(rollout_id)
            if last.get("id") == rollout_id and stored != last:
                self.store.put(key, _dumps(last))  # the record write of that call was lost
                stored = last
            if stored is None:
                raise RolloutConflict(f"no rollout {rollout_id}")
            if stored.get("ended_at") and stored.get("decision") == decision:
                return stored  # a retry of an end that happened
            if stored.get("ended_at"):
                raise RolloutConflict(
                    f"rollout {rollout_id} ended already ({stored.get('decision')})"
                )
            raise RolloutConflict(f"rollout {rollout_id} is not the running rollout")
        ended = {**running, "ended_at": _now(), "decision": decision, "reason": reason}
        try:
            self._put_rollout_state({"rollout": None, "last": ended}, etag)
        except PreconditionFailed:
            raise RolloutConflict(
                f"the running rollout changed while ending {rollout_id}; nothing was changed"
            ) from None
        self.store.put(key, _dumps(ended))
        return ended
