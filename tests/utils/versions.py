"""Model versions for registry and serving tests: hand-made artifact folders in the real
format, fitted hybrids saved as versions, and manifest metrics in the training flow's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bookrec import artifacts


def make_version_folder(
    root: Path, name: str, *, seed: int = 0, metrics: dict[str, Any] | None = None,
    n_files: int = 2, size: int = 64,
) -> Path:
    """A small artifact folder in the real format: .npy arrays, JSON, manifest last."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        artifacts.save_array(folder, f"array_{i}", rng.random(size, dtype=np.float32))
    isbns = [f"{seed:04d}{i:06d}" for i in range(5)]
    artifacts.save_json(folder, "ids", {"seed": seed, "isbns": isbns})
    artifacts.write_manifest(
        folder, kind="test", params={"seed": seed}, data_fingerprint={"rows": size},
        metrics=metrics or {},
    )
    return folder


def model_metrics(ndcg: float, *, coverage: float = 0.2, popular: float = 0.05) -> dict[str, Any]:
    """Manifest metrics in the training flow's shape, with a most-popular baseline."""
    return {
        "ndcg@20": ndcg,
        "recall@20": ndcg * 1.5,
        "coverage@20": coverage,
        "baselines": {"most_popular": {"ndcg@20": popular, "coverage@20": 0.01}},
    }
