"""The model artifact format: a folder of arrays and JSON with a checksummed manifest.

No pickle anywhere: arrays are ``.npy`` (memory-mappable, loaded with
``allow_pickle=False``), everything else is JSON. ``manifest.json`` is written last
and lists the sha256 of every other file; ``verify_folder`` checks all of them
before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


class ArtifactError(RuntimeError):
    """A model folder is incomplete, tampered with, or of an unknown schema."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_array(folder: Path, name: str, array: np.ndarray) -> str:
    """Write ``array`` as ``<name>.npy`` (object arrays are refused) and return the file name."""
    if array.dtype == object:
        raise ArtifactError(f"{name}: object arrays would need pickle; store strings as JSON")
    filename = f"{name}.npy"
    np.save(folder / filename, np.ascontiguousarray(array), allow_pickle=False)
    return filename


def load_array(folder: Path, name: str, *, mmap: bool = True) -> np.ndarray:
    """Read ``<name>.npy`` without pickle, memory-mapped by default (shared between workers)."""
    return np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)


def save_json(folder: Path, name: str, payload: Any) -> str:
    """Write ``payload`` as ``<name>.json`` (compact, UTF-8) and return the file name."""
    filename = f"{name}.json"
    with open(folder / filename, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, ensure_ascii=False, separators=(",", ":"))
    return filename


def load_json(folder: Path, name: str) -> Any:
    """Read ``<name>.json``."""
    with open(folder / f"{name}.json", encoding="utf-8") as fh:
        return json.load(fh)


def write_manifest(
    folder: Path,
    *,
    kind: str,
    params: dict[str, Any],
    data_fingerprint: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    code_version: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Checksum every file in ``folder`` and write ``manifest.json`` last (atomically)."""
    from bookrec import __version__

    files = {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "params": params,
        "data_fingerprint": data_fingerprint,
        "code_version": code_version or __version__,
        "metrics": metrics or {},
        "created_at": datetime.now(UTC).isoformat(),
        "files": files,
    }
    if extra:
        manifest.update(extra)
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(folder / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its schema version (no file checksums)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST} (incomplete or not a model folder)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{path}: missing the 'files' table")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ArtifactError(
            f"{path}: unknown schema_version {version!r} "
            f"(this code reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    return manifest


def verify_folder(folder: Path) -> dict[str, Any]:
    """Check the manifest's schema and every file's sha256; return the manifest.

    Raises ``ArtifactError`` naming the first missing, extra-suspicious or altered file.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, expected in manifest["files"].items():
        if "/" in name or "\\" in name or name.startswith(".."):
            raise ArtifactError(f"{folder}: manifest names a file outside the folder: {name!r}")
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder}: {name} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{folder}: {name} checksum mismatch (manifest {expected[:12]}, file {actual[:12]})"
            )
    return manifest


def manifest_sha256(folder: Path) -> str:
    """sha256 of the manifest file itself (what the champion pointer pins)."""
    return sha256_file(Path(folder) / MANIFEST)
