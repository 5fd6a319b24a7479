"""Save and load the served model as a checksummed folder of ``.npy`` arrays and JSON.

``load_model`` is the serving code's own loader: it verifies every file's sha256 and
the schema version (``verify_folder``) before reading anything, refuses files the
model does not expect or lacks, and memory-maps the arrays so that gunicorn workers
share one copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bookrec.artifacts import (
    ArtifactError,
    load_array,
    load_json,
    save_array,
    save_json,
    verify_folder,
    write_manifest,
)
from bookrec.models.hybrid import HybridRecommender

KIND = "hybrid"
PARAMS_FILE = "params"
ARRAY_LIST_FILE = "arrays"


def save_model(
    model: HybridRecommender,
    folder: Path,
    *,
    data_fingerprint: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    extra_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` into the empty (or new) ``folder``; return the manifest.

    ``extra_params`` are recorded next to the model's parameters in the manifest
    (the evaluation split, for instance) without changing the model.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ArtifactError(f"{folder}: refusing to write a model into a non-empty folder")
    names = sorted(model.arrays)
    for name in names:
        save_array(folder, name, np.asarray(model.arrays[name]))
    save_json(folder, PARAMS_FILE, {k: v for k, v in vars(model.params).items()})
    save_json(folder, ARRAY_LIST_FILE, names)
    manifest = write_manifest(
        folder,
        kind=KIND,
        params={**vars(model.params), **(extra_params or {})},
        data_fingerprint=data_fingerprint or {},
        metrics=metrics or {},
        extra=extra,
    )
    model.manifest = manifest
    model.version = str(manifest.get("version", ""))
    return manifest


def load_model(folder: Path, mmap: bool = True) -> HybridRecommender:
    """Verify ``folder`` and load the hybrid it holds (arrays memory-mapped by default).

    Raises ``ArtifactError`` for a tampered, incomplete or foreign folder.
    """
    folder = Path(folder)
    manifest = verify_folder(folder)
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{folder}: model kind {manifest.get('kind')!r}, expected {KIND!r}")
    files = manifest["files"]
    for needed in (f"{PARAMS_FILE}.json", f"{ARRAY_LIST_FILE}.json"):
        if needed not in files:
            raise ArtifactError(f"{folder}: manifest does not list {needed}")
    names = load_json(folder, ARRAY_LIST_FILE)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"{folder}/{ARRAY_LIST_FILE}.json: expected a list of array names")
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        if f"{name}.npy" not in files:
            raise ArtifactError(f"{folder}: array {name}.npy is not listed in the manifest")
        try:
            arrays[name] = load_array(folder, name, mmap=mmap)
        except ValueError as exc:
            raise ArtifactError(f"{folder}/{name}.npy: unreadable array ({exc})") from exc
    params = load_json(folder, PARAMS_FILE)
    try:
        model = HybridRecommender(arrays, params, manifest)
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{folder}: not a loadable {KIND} model ({exc})") from exc
    if not model.version:
        model.version = folder.name
    return model
