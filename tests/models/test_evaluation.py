"""Metric functions against hand-computed values, and the seeded holdout split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.evaluation import (
    Split,
    coverage,
    evaluate,
    holdout_split,
    mean_popularity,
    model_recommend_fn,
    paired_bootstrap_ratio,
    popularity_terciles,
    ranking_metrics,
    scorable_items,
    segment_metrics,
    segments_from_lists,
)
from bookrec.models.cf import EASERecommender


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


def _split_by_hand():
    """Three readers: cold (2 training items), regular (6), heavy (100); held-out books
    of known popularity."""
    n_items = 120
    train = sp.lil_matrix((4, n_items), dtype=np.float32)
    test = sp.lil_matrix((4, n_items), dtype=np.float32)
    train[0, [0, 1]] = 1
    train[1, list(range(0, 6))] = 1
    train[2, list(range(0, 100))] = 1
    train[3, [0]] = 1  # never evaluated
    test[0, [100]] = 1
    test[1, [101, 0 + 110]] = 1
    test[2, [102, 111]] = 1
    return Split(train=sp.csr_matrix(train), test=sp.csr_matrix(test),
                 test_users=np.array([1, 2]), cold_users=np.array([0]))


def test_segments_by_hand():
    split = _split_by_hand()
    users = split.segment_users
    assert users.tolist() == [1, 2, 0]
    # reader 1 hits 101 at rank 1; reader 2 hits 111 at rank 2; reader 0 misses.
    lists = np.array([[101, 5, -1], [7, 111, 102], [50, 51, 52]])
    scorable = np.zeros(120, bool)
    scorable[[101, 102, 110]] = True
    seg = segments_from_lists(lists, users, split, scorable, k=3)
    r = seg["readers"]
    assert [r[n]["users"] for n in ("cold", "regular", "heavy")] == [1, 1, 1]
    assert r["cold"]["ndcg@3"] == 0.0 and r["cold"]["reachability"] == 0.0
    assert r["regular"]["ndcg@3"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert r["regular"]["recall@3"] == pytest.approx(0.5)
    assert r["regular"]["reachability"] == pytest.approx(1.0)
    # heavy: hits at ranks 2 and 3 of 2 relevant
    ideal = 1 + 1 / math.log2(3)
    assert r["heavy"]["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)
    assert r["heavy"]["reachability"] == pytest.approx(0.5)
    # Held-out books never read in training: every pair has 0 readers, one tercile "low".
    p = seg["popularity"]
    assert p["low"]["users"] == 3 and p["mid"]["users"] == 0 and p["high"]["users"] == 0
    assert p["mid"]["ndcg@3"] is None
    assert p["low"]["reachability"] == pytest.approx(3 / 5)


def test_popularity_terciles_split_pairs_by_training_readers():
    split = _split_by_hand()
    # held-out books of different popularity: 110 read by 2 readers, 111 and 100 by 1
    train = split.train.tolil()
    train[3, [110, 111, 100]] = 1
    train[0, [110]] = 1
    split = Split(sp.csr_matrix(train), split.test, split.test_users, split.cold_users)
    tercile, counts = popularity_terciles(split, split.segment_users)
    # pair order: reader 1 (101, 110), reader 2 (102, 111), reader 0 (100)
    assert counts.tolist() == [0, 2, 0, 1, 1]
    assert tercile.tolist() == [0, 2, 0, 1, 1]
    lists = np.array([[110, -1, -1], [111, -1, -1], [-1, -1, -1]])
    seg = segments_from_lists(lists, split.segment_users, split, None, k=3)["popularity"]
    assert seg["high"]["users"] == 1 and seg["high"]["ndcg@3"] == pytest.approx(1.0)
    assert seg["mid"]["users"] == 2 and seg["mid"]["ndcg@3"] == pytest.approx(0.5)
    assert seg["low"]["users"] == 2 and seg["low"]["ndcg@3"] == 0.0
    assert seg["low"]["reachability"] == 1.0 and seg["high"]["max_readers"] == 2


def test_cold_users_get_one_item_held_out_without_moving_the_headline_split():
    matrix = _random_matrix(3, users=80).tolil()
    for u in range(1, 30):  # readers with 2..5 interactions
        matrix[u, :] = 0
        matrix[u, list(range(2 + u % 4))] = 1
    matrix = sp.csr_matrix(matrix)
    plain = holdout_split(matrix, min_interactions=10, seed=5)
    with_cold = holdout_split(matrix, min_interactions=10, seed=5, cold_users=10)
    assert len(with_cold.cold_users) == 10
    assert np.array_equal(plain.test_users, with_cold.test_users)
    for u in plain.test_users:
        assert np.array_equal(plain.test[u].indices, with_cold.test[u].indices)
    counts = np.diff(matrix.indptr)
    for u in with_cold.cold_users:
        assert 2 <= counts[u] <= 5 and with_cold.test[u].nnz == 1
        assert 1 <= with_cold.train[u].nnz <= 4
    assert (with_cold.train + with_cold.test != matrix).nnz == 0


def test_segment_metrics_of_a_fitted_model_and_reachability_of_item_subsets():
    matrix = _random_matrix(4, users=120, items=60, density=0.3)
    split = holdout_split(matrix, min_interactions=10, seed=2, cold_users=5)
    ease = EASERecommender(l2=10.0, max_items=30).fit(split.train)
    seg = segment_metrics(ease, split, k=10)
    assert set(seg) == {"readers", "popularity"}
    assert seg["readers"]["regular"]["users"] == split.n_test_users
    mask = scorable_items(ease, 60)
    assert mask.sum() == 30
    assert seg["readers"]["regular"]["reachability"] == pytest.approx(
        mask[split.test[split.test_users].indices].mean())
    # the same lists through evaluate(segments=True) give the same report
    binary = split.train.astype(np.float32)
    m = evaluate(model_recommend_fn(ease, binary), split, k=10, scorable=mask, segments=True)
    assert m["segments"] == seg


def test_paired_bootstrap_ratio_point_and_interval():
    rng = np.random.default_rng(0)
    base = [rng.random(4000), rng.random(3000)]
    model = [b * 1.2 for b in base]  # exactly 1.2x for every user: no pairing noise
    ratio, low, high = paired_bootstrap_ratio(model, base, n_boot=200)
    assert ratio == pytest.approx(1.2) and low == pytest.approx(1.2) and high == pytest.approx(1.2)
    noisy = [b + rng.normal(0.1, 0.3, b.size) for b in base]  # +0.1 on a mean of ~0.5
    ratio, low, high = paired_bootstrap_ratio(noisy, base, n_boot=300)
    assert low < ratio < high and low > 1.1 and high < 1.3
    per_split = [n.mean() / b.mean() for n, b in zip(noisy, base, strict=True)]
    assert ratio == pytest.approx(np.mean(per_split))
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap_ratio([np.ones(3)], [np.ones(4)])


def test_evaluate_can_return_per_user_scores():
    split = holdout_split(_random_matrix(5), min_interactions=10, seed=1)
    ease = EASERecommender(l2=10.0, max_items=None).fit(split.train)
    m = evaluate(model_recommend_fn(ease, split.train), split, k=10, per_user=True)
    assert m["per_user"]["ndcg@10"].shape == (split.n_test_users,)
    assert m["per_user"]["ndcg@10"].mean() == pytest.approx(m["ndcg@10"])
