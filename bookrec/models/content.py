"""Content: TF-IDF over normalised title, author and publisher; cosine similarity.

Title words are ordinary terms; the author and the publisher each become one token
(``a_jrrtolkien``, ``p_penguinbooks``) so that "same author" is a strong, rare signal.
Edition-aware: items of the same work (``work_of_item``) are never similar to each
other and a reader's other editions are never recommended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from bookrec.models.base import Recommender, top_n
from bookrec.models.works import TOKEN_PATTERN, book_text  # noqa: F401 (book_text re-exported)


class ContentRecommender(Recommender):
    """Cosine similarity of TF-IDF vectors; a user's profile is the sum of their books'."""

    def __init__(
        self,
        texts: Sequence[str],
        work_of_item: np.ndarray | None = None,
        *,
        min_df: int = 2,
        max_df: float = 0.02,
        max_features: int | None = 200_000,
    ):
        self.texts = list(texts)
        self.work_of_item = (
            np.asarray(work_of_item, dtype=np.int64)
            if work_of_item is not None
            else np.arange(len(self.texts), dtype=np.int64)
        )
        self.min_df = min_df
        self.max_df = max_df
        self.max_features = max_features
        self.vectors_: sp.csr_matrix | None = None
        self.vectors_t_: sp.csr_matrix | None = None
        self.has_text_: np.ndarray = np.zeros(len(self.texts), bool)
        self.terms_: list[str] = []
        self.idf_: np.ndarray = np.empty(0, np.float32)

    def fit(self, user_items: sp.csr_matrix | None = None) -> ContentRecommender:
        """Learn the vocabulary and the L2-normalised TF-IDF vectors of every item."""
        self.n_items = len(self.texts)
        if user_items is not None and user_items.shape[1] != self.n_items:
            raise ValueError(f"{user_items.shape[1]} item columns but {self.n_items} texts")
        self.has_text_ = np.array([bool(t) for t in self.texts], dtype=bool)
        # Tiny catalogues (tests, samples) keep every term; big ones drop rare and
        # ubiquitous terms ("of", "novel"), which only add fan-out to every query.
        big = self.has_text_.sum() >= 5000
        min_df = self.min_df if big else 1
        max_df = self.max_df if big else 1.0
        vectorizer = TfidfVectorizer(
            min_df=min_df,
            max_df=max_df,
            max_features=self.max_features,
            sublinear_tf=True,
            dtype=np.float32,
            token_pattern=TOKEN_PATTERN,
        )
        if self.has_text_.any():
            vectors = vectorizer.fit_transform(self.texts).astype(np.float32)
        else:
            vectors = sp.csr_matrix((self.n_items, 1), dtype=np.float32)
        self.vectors_ = sp.csr_matrix(vectors)
        self.vectors_t_ = sp.csr_matrix(self.vectors_.T)
        if self.has_text_.any():
            # Column order (sklearn numbers the kept terms in sorted order) and idf: what a
            # new book's text needs to be transformed without the vectorizer object.
            self.terms_ = [str(t) for t in vectorizer.get_feature_names_out()]
            self.idf_ = np.asarray(vectorizer.idf_, dtype=np.float32)
        else:
            self.terms_, self.idf_ = [], np.empty(0, np.float32)
        return self

    def _scores_from(self, profile: sp.csr_matrix) -> np.ndarray:
        """Cosine scores of profile rows against every item; -inf for items without text."""
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1))).ravel()
        norms[norms == 0] = 1.0
        scores = (sp.diags(1.0 / norms) @ profile @ self.vectors_t_).toarray().astype(np.float32)
        scores[:, ~self.has_text_] = -np.inf
        return scores

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Similarity of every item to the weighted sum of the user's items' vectors."""
        return self._scores_from(sp.csr_matrix(user_items, dtype=np.float32) @ self.vectors_)

    def similar_scores(self, item: int) -> np.ndarray:
        """Cosine similarity of ``item`` to every item; its own other editions get -inf."""
        scores = self._scores_from(self.vectors_[item])[0]
        if not self.has_text_[item]:
            scores[:] = -np.inf
        scores[self.work_of_item == self.work_of_item[item]] = -np.inf
        return scores

    def recommend(self, user_items, n=10, *, filter_already_liked=True, batch_size=None):
        """Top-``n`` per user; with filtering, no edition of a work the user has comes back."""
        user_items = self._check_width(user_items)
        batch_size = batch_size or max(1, min(1024, (1 << 25) // max(self.n_items, 1)))
        all_ids, all_scores = [], []
        for start in range(0, user_items.shape[0], batch_size):
            rows = user_items[start : start + batch_size]
            scores = self.score(rows)
            if filter_already_liked:
                for r in range(rows.shape[0]):
                    seen = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
                    scores[r, np.isin(self.work_of_item, self.work_of_item[seen])] = -np.inf
            ids, best = top_n(scores, n)
            all_ids.append(ids)
            all_scores.append(best)
        if not all_ids:
            return np.empty((0, n), np.int64), np.empty((0, n), np.float32)
        return np.vstack(all_ids), np.vstack(all_scores)
