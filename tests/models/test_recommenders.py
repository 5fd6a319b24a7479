"""One suite every recommender passes, on checkerboard matrices with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.models.base import Recommender, top_n
from bookrec.models.cf import (
    EASERecommender,
    ImplicitALS,
    ImplicitItemKNN,
    ItemKNNRecommender,
    RP3BetaRecommender,
    knn_similarity,
    prune_rows,
    top_k_rows,
    user_norm_weights,
)
from bookrec.models.content import ContentRecommender
from bookrec.models.popularity import PopularityRecommender

from .conftest import checkerboard, checkerboard_texts


class RecommenderSuite:
    """Subclasses say how to build the model; the tests say what any model must do."""

    personalised = True

    def build(self) -> Recommender:
        raise NotImplementedError

    @pytest.fixture
    def data(self):
        return checkerboard()

    @pytest.fixture
    def model(self, data):
        return self.build().fit(data[0])

    def test_held_out_item_ranks_first(self, model, data):
        if not self.personalised:
            pytest.skip("non-personalised model: see its own known-answer test")
        matrix, held = data
        ids, scores = model.recommend(matrix, n=3)
        assert ids[:, 0].tolist() == held.tolist()
        assert np.all(np.isfinite(scores[:, 0]))

    def test_never_recommends_what_the_user_has(self, model, data):
        matrix, _ = data
        ids, _ = model.recommend(matrix, n=matrix.shape[1])
        for user in range(matrix.shape[0]):
            seen = set(matrix[user].indices.tolist())
            assert not seen & set(ids[user][ids[user] >= 0].tolist())

    def test_lists_are_sorted_and_padded(self, model, data):
        matrix, _ = data
        n = matrix.shape[1] + 5
        ids, scores = model.recommend(matrix[:3], n=n)
        assert ids.shape == scores.shape == (3, n)
        for row_ids, row_scores in zip(ids, scores, strict=True):
            valid = row_ids >= 0
            # Padding only at the end, scores descending over the real entries.
            assert not np.any(valid[1:] & ~valid[:-1])
            assert np.all(np.diff(row_scores[valid]) <= 1e-6)
            assert len(set(row_ids[valid].tolist())) == valid.sum()
        assert np.all(ids[:, -5:] == -1)

    def test_similar_items_stay_in_the_block_and_exclude_the_item(self, model, data):
        if not self.personalised:
            pytest.skip("popularity has no notion of similarity")
        ids, scores = model.similar_items(0, n=5)
        assert 0 not in ids.tolist()
        assert all(0 <= i < 10 for i in ids[ids >= 0].tolist())
        assert np.all(np.diff(scores[ids >= 0]) <= 1e-6)

    def test_deterministic(self, data):
        matrix, _ = data
        first = self.build().fit(matrix).recommend(matrix, n=5)[0]
        second = self.build().fit(matrix).recommend(matrix, n=5)[0]
        assert np.array_equal(first, second)

    def test_user_without_history_gets_a_valid_list(self, model, data):
        matrix, _ = data
        empty = sp.csr_matrix((1, matrix.shape[1]), dtype=np.float32)
        ids, scores = model.recommend(empty, n=4)
        assert ids.shape == (1, 4)
        assert all(-1 <= i < matrix.shape[1] for i in ids[0].tolist())

    def test_wrong_width_is_refused(self, model, data):
        matrix, _ = data
        with pytest.raises(ValueError, match="columns"):
            model.recommend(sp.csr_matrix((1, matrix.shape[1] + 1), dtype=np.float32), n=3)

    def test_similar_items_refuses_unknown_item(self, model, data):
        with pytest.raises(IndexError):
            model.similar_items(data[0].shape[1] + 3)


class TestEASE(RecommenderSuite):
    def build(self):
        return EASERecommender(l2=1.0, max_items=None)


class TestEASEPrunedSubset(RecommenderSuite):
    """Sparse (pruned) weights over a subset of the catalogue still find the answer."""

    def build(self):
        return EASERecommender(l2=1.0, max_items=20, keep=9)


class TestRP3Beta(RecommenderSuite):
    def build(self):
        return RP3BetaRecommender(alpha=1.0, beta=0.3, keep=10)


class TestItemKNN(RecommenderSuite):
    def build(self):
        return ImplicitItemKNN(k=10)


class TestItemKNNShrunk(RecommenderSuite):
    """Our item-kNN (cosine with shrinkage, damped heavy readers) over a subset."""

    def build(self):
        return ItemKNNRecommender(k=9, shrink=2.0, max_items=20, user_norm=0.5)


def test_knn_similarity_matches_the_shrunk_cosine():
    x = sp.random(300, 60, density=0.1, random_state=1, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    gram = (x.T @ x).toarray()
    norms = np.sqrt(np.diag(gram))
    full = gram / (np.outer(norms, norms) + 5.0)
    np.fill_diagonal(full, 0.0)
    sim = knn_similarity(x, 8, shrink=5.0).toarray()
    assert np.all((sim != 0).sum(axis=1) <= 8) and np.all(np.diag(sim) == 0)
    for i in range(60):
        got = np.flatnonzero(sim[i])
        assert np.allclose(sim[i, got], full[i, got], atol=1e-5)
        # the kept neighbours are the 8 largest shrunk similarities
        assert full[i, got].min() >= np.sort(full[i])[-8] - 1e-6


def test_top_k_rows_keeps_the_largest_entries():
    m = sp.csr_matrix(np.array([[0, 3, 1, 2], [5, 0, 0, 0], [1, 1, 1, 0]], np.float32))
    assert top_k_rows(m, 2).toarray().tolist() == [[0, 3, 0, 2], [5, 0, 0, 0], [1, 1, 0, 0]]



def test_top_k_rows_matches_a_sort_of_each_row_with_ties():
    # Reference: each row's entries sorted by value (descending), then column; first k.
    rng = np.random.default_rng(7)
    for _ in range(100):
        n_rows, n_cols = int(rng.integers(1, 25)), int(rng.integers(1, 30))
        k = int(rng.integers(1, 8))
        dense = rng.integers(0, 5, size=(n_rows, n_cols)).astype(np.float32) / 4  # many ties
        dense[rng.random((n_rows, n_cols)) < 0.4] = 0.0
        got = top_k_rows(sp.csr_matrix(dense), k)
        want = np.zeros_like(dense)
        for r in range(n_rows):
            cols = np.flatnonzero(dense[r])
            best = cols[np.lexsort((cols, -dense[r, cols]))][:k]
            want[r, best] = dense[r, best]
        assert np.array_equal(got.toarray(), want)
        assert got.nnz == np.count_nonzero(want)

class TestALS(RecommenderSuite):
    def build(self):
        return ImplicitALS(factors=8, iterations=15, regularization=0.01, seed=3)


class TestContent(RecommenderSuite):
    def build(self):
        return ContentRecommender(checkerboard_texts())

    def test_stored_terms_and_idf_reproduce_the_vectors(self, model):
        """What the artifact keeps of the vectorizer (terms in column order, idf) is
        enough to transform a text exactly as ``fit`` did (new books at serving time)."""
        from bookrec.models.works import tokens

        assert model.terms_ == sorted(model.terms_)  # column order is sorted: binary search
        column = {t: c for c, t in enumerate(model.terms_)}
        for row, text in enumerate(checkerboard_texts()):
            counts = np.bincount([column[t] for t in tokens(text)], minlength=len(column))
            vector = np.where(counts > 0, 1.0 + np.log(np.maximum(counts, 1)), 0.0) * model.idf_
            vector /= np.linalg.norm(vector)
            assert np.allclose(vector, model.vectors_[row].toarray().ravel(), atol=1e-6)


class TestPopularity(RecommenderSuite):
    personalised = False

    def build(self):
        return PopularityRecommender(rating_weight=0.0)

    @pytest.fixture
    def data(self):
        matrix, held = checkerboard()
        # One extra reader for item 13: now the single most-read item.
        extra = sp.csr_matrix(([1.0], ([0], [13])), shape=(1, matrix.shape[1]))
        return sp.vstack([matrix, extra]).tocsr(), held

    def test_most_read_item_first_for_everyone_who_lacks_it(self, model, data):
        matrix, _ = data
        ids, _ = model.recommend(matrix, n=1)
        lacks = np.asarray(matrix[:, 13].todense()).ravel() == 0
        assert set(ids[lacks, 0].tolist()) == {13}


def test_popularity_damped_mean_and_implicit_zeros():
    """Explicit 10 from one reader does not beat many 9s; implicit 0s are not low ratings."""
    # data = rating + 1: item 0 one explicit 10; item 1 five explicit 9s;
    # item 2 five implicit 0s (stored as 1) and one explicit 9.
    rows = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    cols = [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    vals = [11, 10, 10, 10, 10, 10, 1, 1, 1, 1, 1]
    rows, cols, vals = rows + [11], cols + [2], vals + [10]
    ratings = sp.csr_matrix((vals, (rows, cols)), shape=(12, 3), dtype=np.float32)
    from bookrec.models.popularity import damped_mean

    mean = damped_mean(ratings, damping=2.0)
    global_mean = (10 + 9 * 5 + 9) / 7
    assert mean[0] == pytest.approx((10 + 2 * global_mean) / 3)
    assert mean[1] == pytest.approx((45 + 2 * global_mean) / 7)
    # Only the single explicit 9 counts for item 2, not the five zeros.
    assert mean[2] == pytest.approx((9 + 2 * global_mean) / 3)
    model = PopularityRecommender(damping=2.0, rating_weight=0.5).fit(ratings)
    assert model.scores_[1] > model.scores_[0]


def test_top_n_breaks_ties_on_lower_id_and_skips_minus_inf():
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]], dtype=np.float32)
    ids, best = top_n(scores, 5)
    assert ids[0].tolist() == [1, 2, 4, 0, -1]
    assert best[0][:4].tolist() == [3.0, 3.0, 2.0, 1.0]


def test_ease_matches_the_closed_form():
    """Cholesky-based weights equal I - P/diag(P) computed with a plain inverse."""
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    model = EASERecommender(l2=5.0, max_items=None).fit(x)
    gram = (x.T @ x).toarray().astype(np.float64) + 5.0 * np.eye(12)
    p = np.linalg.inv(gram)
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights_, expected, atol=1e-4)


def test_dlae_dropout_adds_frequency_proportional_regularisation():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((60, 10)) < 0.4).astype(np.float32))
    model = EASERecommender(l2=2.0, max_items=None, dropout=0.25).fit(x)
    gram = (x.T @ x).toarray().astype(np.float64)
    p = np.linalg.inv(gram + np.diag(2.0 + (0.25 / 0.75) * np.diag(gram)))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights_, expected, atol=1e-4)
    with pytest.raises(ValueError, match="dropout"):
        EASERecommender(dropout=1.0).fit(x)


def test_user_norm_weights_damp_heavy_readers_and_keep_the_mass():
    x = sp.csr_matrix(np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    w = user_norm_weights(x, 0.5)
    # |u| = 4, 1, 0: raw weights 4^-0.5, 1, 1; rescaled so 4*w0 + 1*w1 = 5.
    scale = 5.0 / (4 * 0.5 + 1 * 1.0)
    assert np.allclose(w, [0.5 * scale, 1.0 * scale, 1.0 * scale])
    assert np.allclose(user_norm_weights(x, 0.0), 1.0)


def test_user_norm_matches_the_weighted_closed_form():
    """DLAE with user_norm solves (X'DX + L)^-1 with D = |u|^-a (mass-preserving)."""
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((50, 9)) < 0.35).astype(np.float32))
    model = EASERecommender(l2=2.0, max_items=None, dropout=0.2, user_norm=0.5).fit(x)
    n = np.asarray(x.sum(axis=1)).ravel()
    d = np.maximum(n, 1.0) ** -0.5
    d *= n.sum() / (d * n).sum()
    gram = (x.T @ sp.diags(d) @ x).toarray().astype(np.float64)
    p = np.linalg.inv(gram + np.diag(2.0 + (0.2 / 0.8) * np.diag(gram)))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights_, expected, atol=1e-4)


def test_user_norm_is_neutral_when_every_user_reads_as_much():
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1],
                                [1, 0, 1, 0]], dtype=np.float32))
    plain = EASERecommender(l2=1.0, max_items=None).fit(x).weights_
    normed = EASERecommender(l2=1.0, max_items=None, user_norm=0.7).fit(x).weights_
    assert np.allclose(plain, normed, atol=1e-5)


def test_prune_rows_keeps_the_largest_magnitudes_negative_ones_included():
    w = np.array([[0.0, -0.9, 0.2, 0.5], [0.3, 0.0, -0.1, 0.05]], dtype=np.float32)
    pruned = prune_rows(w, 2).toarray()
    assert np.allclose(pruned, [[0.0, -0.9, 0.0, 0.5], [0.3, 0.0, -0.1, 0.0]])


class TestDLAE(RecommenderSuite):
    def build(self):
        return EASERecommender(l2=0.5, max_items=None, dropout=0.3)


def _block_authors(n: int = 20, block: int = 10) -> sp.csr_matrix:
    """One author per checkerboard block (features x items), weight 1."""
    return sp.csr_matrix((np.ones(n, np.float32), (np.arange(n) // block, np.arange(n))),
                         shape=(n // block, n))


class TestSideInformationEASE(RecommenderSuite):
    """cEASE: author rows in the Gram, with item-side popularity debiasing."""

    def build(self):
        return EASERecommender(l2=1.0, max_items=None, dropout=0.2, side=_block_authors() * 0.7,
                               popularity_exponent=0.3)


def test_side_information_matches_the_stacked_closed_form():
    """Rows S under X: (X'X + S'S + L)^-1; dropout still sees diag(X'X) only."""
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    side = sp.csr_matrix(np.kron(np.eye(3), np.ones((1, 4))).astype(np.float32) * 2.0)
    model = EASERecommender(l2=3.0, max_items=None, dropout=0.2, side=side).fit(x)
    gram = (x.T @ x).toarray().astype(np.float64)
    full = gram + (side.T @ side).toarray() + np.diag(3.0 + 0.25 * np.diag(gram))
    p = np.linalg.inv(full)
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights_, expected, atol=1e-4)


def test_side_information_links_books_nobody_read_together():
    """Two books by one author, never co-read: only the author row links them."""
    x = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]],
                               dtype=np.float32))
    plain = EASERecommender(l2=1.0, max_items=None).fit(x).weights_
    side = sp.csr_matrix(np.array([[1, 1, 0, 0]], dtype=np.float32))
    linked = EASERecommender(l2=1.0, max_items=None, side=side).fit(x).weights_
    assert plain[0, 1] == pytest.approx(0.0, abs=1e-6) and linked[0, 1] > 0.05


def test_popularity_exponent_scales_columns_by_readers():
    rng = np.random.default_rng(5)
    x = sp.csr_matrix((rng.random((60, 8)) < 0.4).astype(np.float32))
    plain = EASERecommender(l2=2.0, max_items=None).fit(x).weights_
    damped = EASERecommender(l2=2.0, max_items=None, popularity_exponent=0.5).fit(x).weights_
    readers = np.bincount(x.indices, minlength=8).astype(np.float64)
    assert np.allclose(damped, plain * readers[None, :] ** -0.5, atol=1e-5)
