"""Metric functions against hand-computed values, and the seeded holdout split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.evaluation import (
    coverage,
    evaluate,
    holdout_split,
    mean_popularity,
    ranking_metrics,
)


def test_ranking_metrics_by_hand():
    recommended = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, -1, -1, -1]])
    relevant = [np.array([2, 9]), np.array([8]), np.array([0, 1, 2, 3, 4])]
    m = ranking_metrics(recommended, relevant, k=4, hr_k=2)
    # user 0: hit at rank 2 of 2 relevant; user 1: hit at rank 4 of 1; user 2: no hit.
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg1 = (1 / math.log2(5)) / 1.0
    assert m["recall@4"] == pytest.approx((1 / 2 + 1 / 1 + 0) / 3)
    assert m["ndcg@4"] == pytest.approx((ndcg0 + ndcg1 + 0) / 3)
    assert m["hr@2"] == pytest.approx(1 / 3)


def test_recall_normalises_by_min_of_k_and_relevant():
    recommended = np.array([[0, 1]])
    m = ranking_metrics(recommended, [np.array([0, 1, 2, 3, 4])], k=2, hr_k=1)
    assert m["recall@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["hr@1"] == 1.0


def test_padding_never_counts_as_a_hit():
    m = ranking_metrics(np.array([[-1, -1]]), [np.array([-1])], k=2, hr_k=1)
    assert m["recall@2"] == 0.0 and m["ndcg@2"] == 0.0


def test_user_without_held_out_items_is_an_error():
    with pytest.raises(ValueError, match="no held-out"):
        ranking_metrics(np.array([[1, 2]]), [np.array([], dtype=int)], k=2)


def test_coverage_and_mean_popularity_by_hand():
    recommended = np.array([[0, 1, -1], [1, 2, 3]])
    assert coverage(recommended, 10) == pytest.approx(4 / 10)
    counts = np.array([10, 20, 30, 40, 0])
    assert mean_popularity(recommended, counts) == pytest.approx((10 + 20 + 20 + 30 + 40) / 5)


def _random_matrix(seed=0, users=50, items=40, density=0.3):
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < density).astype(np.float32)
    dense[0, :] = 0
    dense[0, :3] = 1  # user 0 is below the threshold
    return sp.csr_matrix(dense)


def test_holdout_split_is_seeded_partitions_and_respects_threshold():
    matrix = _random_matrix()
    a = holdout_split(matrix, min_interactions=10, test_fraction=0.2, seed=7)
    b = holdout_split(matrix, min_interactions=10, test_fraction=0.2, seed=7)
    c = holdout_split(matrix, min_interactions=10, test_fraction=0.2, seed=8)
    assert (a.test != b.test).nnz == 0
    assert (a.test != c.test).nnz > 0
    # Train and test partition the interactions.
    assert (a.train + a.test != matrix).nnz == 0
    assert a.train.multiply(a.test).nnz == 0
    counts = np.diff(matrix.indptr)
    assert 0 not in a.test_users.tolist()
    for user in a.test_users:
        assert counts[user] >= 10
        assert a.test[user].nnz == max(1, round(counts[user] * 0.2))


def test_evaluate_scores_an_oracle_perfectly():
    matrix = _random_matrix(1)
    split = holdout_split(matrix, min_interactions=10, test_fraction=0.2, seed=1)

    def oracle(users, k):
        out = np.full((len(users), k), -1)
        for r, u in enumerate(users):
            truth = split.test[u].indices[:k]
            out[r, : len(truth)] = truth
        return out

    m = evaluate(oracle, split, k=20)
    assert m["recall@20"] == pytest.approx(1.0)
    assert m["ndcg@20"] == pytest.approx(1.0)
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["users"] == split.n_test_users


def test_evaluate_refuses_wrong_shapes():
    split = holdout_split(_random_matrix(2), min_interactions=10, seed=1)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda users, k: np.zeros((len(users), k - 1), int), split)
