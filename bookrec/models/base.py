"""One small base for every recommender: fit, score, recommend, similar_items.

Models work in index space: users are rows and items are columns of a
``scipy.sparse.csr_matrix`` of interaction weights. ``recommend`` takes the rows of
the users to score (their history) and returns ``(ids, scores)`` arrays; ids are -1
where a model has fewer than ``n`` candidates. Hyperparameters are constructor
arguments; models never open files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

NO_ITEM = -1


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ids and scores of the ``n`` highest finite scores, best first.

    Ties break on the lower item id so results are deterministic; -inf entries are
    never returned (their ids come back as -1).
    """
    scores = np.atleast_2d(scores)
    rows, cols = scores.shape
    n_eff = min(n, cols)
    if n_eff <= 0:
        return np.full((rows, n), NO_ITEM, np.int64), np.full((rows, n), -np.inf, np.float32)
    if n_eff < cols:
        part = np.argpartition(-scores, n_eff - 1, axis=1)[:, :n_eff]
    else:
        part = np.broadcast_to(np.arange(cols), (rows, cols))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    ids[~np.isfinite(best)] = NO_ITEM
    if n_eff < n:
        ids = np.pad(ids, ((0, 0), (0, n - n_eff)), constant_values=NO_ITEM)
        best = np.pad(best, ((0, 0), (0, n - n_eff)), constant_values=-np.inf)
    return ids, best


def mask_history(scores: np.ndarray, user_items: sp.csr_matrix) -> None:
    """Set the scores of items each user already has to -inf (in place)."""
    coo = user_items.tocoo()
    scores[coo.row, coo.col] = -np.inf


class Recommender(ABC):
    """Base class: subclasses implement ``fit``, ``score`` and ``similar_scores``."""

    n_items: int = 0

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> Recommender:
        """Learn from the users x items interaction weights; returns self."""

    @abstractmethod
    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense float32 scores (rows of ``user_items`` x all items); -inf = cannot score."""

    @abstractmethod
    def similar_scores(self, item: int) -> np.ndarray:
        """Float32 similarity of ``item`` to every item; -inf where unknown."""

    def recommend(
        self,
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        filter_already_liked: bool = True,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items for each row of ``user_items`` (already-seen items filtered).

        Users are scored in batches small enough that a dense batch stays near 128 MB.
        """
        batch_size = batch_size or max(1, min(1024, (1 << 25) // max(self.n_items, 1)))
        user_items = self._check_width(user_items)
        all_ids, all_scores = [], []
        for start in range(0, user_items.shape[0], batch_size):
            rows = user_items[start : start + batch_size]
            scores = self.score(rows)
            if filter_already_liked:
                mask_history(scores, rows)
            ids, best = top_n(scores, n)
            all_ids.append(ids)
            all_scores.append(best)
        if not all_ids:
            return np.empty((0, n), np.int64), np.empty((0, n), np.float32)
        return np.vstack(all_ids), np.vstack(all_scores)

    def _check_width(self, user_items) -> sp.csr_matrix:
        """``user_items`` as CSR, refusing a matrix whose columns are not the model's items."""
        user_items = sp.csr_matrix(user_items)
        if user_items.shape[1] != self.n_items:
            raise ValueError(
                f"user_items has {user_items.shape[1]} columns; the model knows {self.n_items}"
            )
        return user_items

    def similar_items(self, item: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items most similar to ``item`` (never ``item`` itself)."""
        if not 0 <= item < self.n_items:
            raise IndexError(f"item {item} is outside 0..{self.n_items - 1}")
        scores = np.array(self.similar_scores(item), dtype=np.float32, copy=True)
        scores[item] = -np.inf
        ids, best = top_n(scores[None, :], n)
        return ids[0], best[0]
