"""Popularity: the cold-start fallback.

A book's score blends how many readers it has (interaction count, log-scaled) with
a damped (Bayesian) mean of its explicit ratings: ``(sum + m * global_mean) / (n + m)``
over explicit 1..10 ratings only, so an implicit 0 never counts as a low rating and
a single 10 does not beat a hundred 9s.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bookrec.models.base import Recommender


def damped_mean(ratings: sp.csr_matrix, damping: float) -> np.ndarray:
    """Per item, the explicit-rating mean shrunk towards the global explicit mean.

    ``ratings`` stores ``rating + 1`` (so an implicit 0 is stored as 1 and ignored).
    """
    csc = sp.csc_matrix(ratings)
    explicit = csc.data > 1
    values = np.where(explicit, csc.data.astype(np.float64) - 1.0, 0.0)
    item_of = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    sums = np.bincount(item_of, weights=values, minlength=csc.shape[1])
    counts = np.bincount(item_of, weights=explicit.astype(np.float64), minlength=csc.shape[1])
    global_mean = sums.sum() / counts.sum() if counts.sum() else 5.0
    return (sums + damping * global_mean) / (counts + damping)


class PopularityRecommender(Recommender):
    """Scores every item by blended popularity, the same for every user.

    ``fit`` takes the ``rating + 1`` matrix (pass plain interaction weights and every
    rating is treated as implicit). ``rating_weight=0`` gives plain most-popular.
    """

    def __init__(self, damping: float = 10.0, rating_weight: float = 0.5):
        self.damping = damping
        self.rating_weight = rating_weight
        self.scores_: np.ndarray = np.empty(0, np.float32)
        self.counts_: np.ndarray = np.empty(0, np.float32)

    def fit(self, user_items: sp.csr_matrix) -> PopularityRecommender:
        """Count readers per item and compute the blended score."""
        user_items = sp.csr_matrix(user_items)
        self.n_items = user_items.shape[1]
        counts = np.bincount(user_items.indices, minlength=self.n_items).astype(np.float64)
        self.counts_ = counts.astype(np.float32)
        count_part = np.log1p(counts) / max(np.log1p(counts.max(initial=0.0)), 1e-9)
        score = count_part
        if self.rating_weight:
            mean = damped_mean(user_items, self.damping)
            score = count_part + self.rating_weight * (mean / 10.0) * (counts > 0)
        # Items nobody read are still rankable but always last.
        self.scores_ = np.where(counts > 0, score, -1.0).astype(np.float32)
        return self

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        """The same popularity row for every user."""
        return np.tile(self.scores_, (user_items.shape[0], 1))

    def recommend(self, user_items, n=10, *, filter_already_liked=True, batch_size=None):
        """The global top list minus each user's items, without a dense users x items array."""
        user_items = self._check_width(user_items)
        longest = int(np.diff(user_items.indptr).max(initial=0)) if filter_already_liked else 0
        m = min(self.n_items, n + longest)
        order = np.lexsort((np.arange(self.n_items), -self.scores_))[:m]
        ids = np.full((user_items.shape[0], n), -1, np.int64)
        scores = np.full((user_items.shape[0], n), -np.inf, np.float32)
        seen = (user_items[:, order] != 0).toarray() if filter_already_liked else None
        for row in range(user_items.shape[0]):
            picks = order if seen is None else order[~seen[row]]
            picks = picks[:n]
            ids[row, : len(picks)] = picks
            scores[row, : len(picks)] = self.scores_[picks]
        return ids, scores

    def similar_scores(self, item: int) -> np.ndarray:
        """Popularity knows no similarity: every item scores its popularity."""
        return self.scores_.copy()
