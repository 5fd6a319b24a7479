"""Offline evaluation: one seeded holdout split and full-ranking metrics.

The same code serves training (the metrics in the manifest), validation and the
benchmark. Users with at least ``min_interactions`` interactions have
``test_fraction`` of them held out (seeded); every model ranks the whole
catalogue for them (no sampled negatives) with their training items filtered.

Definitions (k=20 unless named): Recall@k = hits in the top k / min(k, held-out
count); NDCG@k = DCG / ideal DCG with binary gains and log2(rank + 1) discounts;
HR@10 = share of users with at least one hit in their top 10; coverage = share of
catalogue items that appear in any top-k list; mean popularity = average number
of training readers of the recommended items.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

RecommendFn = Callable[[np.ndarray, int], np.ndarray]
"""Given user row indices and k, return an (n_users, k) array of item ids, -1 padded."""


@dataclass
class Split:
    """Training matrix (same shape as the input) and the held-out interactions."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    test_users: np.ndarray  # row indices of users with held-out items

    @property
    def n_test_users(self) -> int:
        """How many users are evaluated."""
        return len(self.test_users)


def holdout_split(
    matrix: sp.csr_matrix,
    *,
    min_interactions: int = 10,
    test_fraction: float = 0.2,
    seed: int = 42,
) -> Split:
    """Hold out ``test_fraction`` (rounded, at least 1) of each eligible user's interactions.

    Users below ``min_interactions`` keep everything in training. The split depends
    only on the matrix and the seed.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rng = np.random.default_rng(seed)
    counts = np.diff(matrix.indptr)
    eligible = np.flatnonzero(counts >= min_interactions)
    test_mask = np.zeros(matrix.nnz, dtype=bool)
    for user in eligible:
        start, n = matrix.indptr[user], counts[user]
        n_test = max(1, int(round(n * test_fraction)))
        test_mask[start + rng.choice(n, size=n_test, replace=False)] = True
    row_of = np.repeat(np.arange(matrix.shape[0]), counts)

    def part(mask: np.ndarray) -> sp.csr_matrix:
        out = sp.csr_matrix(
            (matrix.data[mask], (row_of[mask], matrix.indices[mask])), shape=matrix.shape
        )
        out.sort_indices()
        return out

    return Split(train=part(~test_mask), test=part(test_mask), test_users=eligible)


def ranking_metrics(
    recommended: np.ndarray,
    relevant: list[np.ndarray],
    *,
    k: int = 20,
    hr_k: int = 10,
) -> dict[str, float]:
    """Mean Recall@k, NDCG@k and HR@hr_k over users (rows of ``recommended``, -1 = empty slot)."""
    if len(relevant) != recommended.shape[0]:
        raise ValueError("one relevant set per recommended row is needed")
    if recommended.shape[0] == 0:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0, f"hr@{hr_k}": 0.0}
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs, hits_at = [], [], []
    for row, truth in zip(recommended[:, :k], relevant, strict=True):
        truth = np.asarray(truth)
        if truth.size == 0:
            raise ValueError("a user with no held-out items cannot be evaluated")
        hit = np.isin(row, truth) & (row >= 0)
        n_rel = min(k, truth.size)
        recalls.append(hit.sum() / n_rel)
        ndcgs.append((hit * discounts[: len(row)]).sum() / discounts[:n_rel].sum())
        hits_at.append(bool(hit[:hr_k].any()))
    return {
        f"recall@{k}": float(np.mean(recalls)),
        f"ndcg@{k}": float(np.mean(ndcgs)),
        f"hr@{hr_k}": float(np.mean(hits_at)),
    }


def coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue that appears in at least one list."""
    ids = recommended[recommended >= 0]
    return float(np.unique(ids).size / n_items) if n_items else 0.0


def mean_popularity(recommended: np.ndarray, item_counts: np.ndarray) -> float:
    """Average training reader count of the recommended items (lower = more long tail)."""
    ids = recommended[recommended >= 0]
    return float(item_counts[ids].mean()) if ids.size else 0.0


def evaluate(
    recommend: RecommendFn,
    split: Split,
    *,
    k: int = 20,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Rank the catalogue for every test user and compute all metrics (plus timing)."""
    started = time.perf_counter()
    test = split.test
    item_counts = np.bincount(split.train.indices, minlength=split.train.shape[1])
    lists = []
    for start in range(0, split.n_test_users, batch_size):
        users = split.test_users[start : start + batch_size]
        ids = np.asarray(recommend(users, k))
        if ids.shape != (len(users), k):
            raise ValueError(f"recommend returned shape {ids.shape}, expected {(len(users), k)}")
        lists.append(ids)
    recommended = np.vstack(lists) if lists else np.empty((0, k), np.int64)
    relevant = [test.indices[test.indptr[u] : test.indptr[u + 1]] for u in split.test_users]
    metrics = ranking_metrics(recommended, relevant, k=k)
    metrics[f"coverage@{k}"] = coverage(recommended, split.train.shape[1])
    metrics[f"mean_popularity@{k}"] = mean_popularity(recommended, item_counts)
    metrics["users"] = float(split.n_test_users)
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def model_recommend_fn(model, train_weights: sp.csr_matrix) -> RecommendFn:
    """Adapt a base ``Recommender`` fitted on ``train_weights`` to ``evaluate``."""

    def recommend(users: np.ndarray, k: int) -> np.ndarray:
        ids, _ = model.recommend(train_weights[users], k)
        return ids

    return recommend
