"""The benchmark's seed-averaged tables: means, paired ratio intervals, segments."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_train import seed_table, segment_table


def _seed(rng, lift: float) -> dict:
    base = rng.random(3000)
    seg = {"readers": {"cold": {"users": 10, "ndcg@20": 0.01, "reachability": 0.5},
                       "heavy": {"users": 0, "ndcg@20": None, "reachability": None}},
           "popularity": {"low": {"users": 5, "ndcg@20": 0.02, "reachability": 0.2}}}
    def model(values, cov):
        return {"ndcg@20": values.mean(), "recall@20": values.mean() / 2, "coverage@20": cov,
                "per_user": {"ndcg@20": values, "recall@20": values / 2}, "segments": seg}
    return {"served": model(base * lift, 0.1), "ease_plain": model(base, 0.02)}


def test_seed_table_averages_over_seeds_with_paired_intervals():
    rng = np.random.default_rng(1)
    per_seed = [_seed(rng, 1.25), _seed(rng, 1.25), _seed(rng, 1.25)]
    rows = {r["model"]: r for r in seed_table(per_seed, n_boot=100)}
    served = rows["served"]
    assert served["seeds"] == 3
    assert served["coverage@20"] == pytest.approx(0.1)
    ratio, low, high = served["ndcg@20 ratio"]
    assert ratio == pytest.approx(1.25) and low == pytest.approx(1.25)
    assert rows["ease_plain"]["ndcg@20 ratio"][0] == pytest.approx(1.0)
    means = [s["served"]["ndcg@20"] for s in per_seed]
    assert served["ndcg@20"] == pytest.approx(np.mean(means))


def test_segment_table_skips_empty_segments_in_means():
    rng = np.random.default_rng(2)
    rows = segment_table([_seed(rng, 1.0), _seed(rng, 1.0)])
    by = {(r["model"], r["segment"]): r for r in rows}
    assert by[("served", "readers cold")]["ndcg@20"] == pytest.approx(0.01)
    assert by[("served", "readers heavy")]["ndcg@20"] is None
    assert by[("ease_plain", "books low")]["reachability"] == pytest.approx(0.2)


def test_dumped_seeds_combine_to_the_same_table(tmp_path):
    from bench.bench_train import dump_seeds, load_seeds

    rng = np.random.default_rng(3)
    per_seed = [_seed(rng, 1.1), _seed(rng, 1.3)]
    dump_seeds(per_seed[:1], tmp_path / "a")
    dump_seeds(per_seed[1:], tmp_path / "b")
    loaded = load_seeds(tmp_path / "a") + load_seeds(tmp_path / "b")
    assert seed_table(loaded, n_boot=50) == seed_table(per_seed, n_boot=50)


def test_variants_share_fitted_components_and_match_a_fresh_fit():
    """``--variant`` recipes reuse the served model's CF (and each other's kNN) on a split,
    and score what a model fitted from scratch scores."""
    from bench.bench_train import extra_seeds, score_variants
    from bookrec import training
    from bookrec.evaluation import holdout_split
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid

    from .conftest import clustered_frames

    ratings, books = clustered_frames()
    base = {"l2": 10.0, "max_items": 20, "keep": 20}
    config = training.TrainConfig(hyperparameters=base, baselines=("ease_plain",),
                                  cold_test_users=0)
    components: list[dict] = []
    per_seed = extra_seeds(ratings, books, config, [42, 43], components)
    assert len(components) == 2 and all(len(c) == 2 for c in components)
    variants = {"knn": {**base, "knn_items": 100, "knn_k": 20},
                "knn_slots": {**base, "knn_items": 100, "knn_k": 20, "knn_tail_slots": 3}}
    score_variants(ratings, books, config, [42, 43], variants, per_seed, components)
    assert set(per_seed[1]) == {"served", "ease_plain", "knn", "knn_slots"}
    dataset = build_dataset(ratings, books)
    split = holdout_split(dataset.matrix, seed=43, cold_users=0)
    fresh = fit_hybrid(dataset.with_matrix(split.train), variants["knn_slots"])
    expected = training._evaluate_model(fresh, split)
    assert per_seed[1]["knn_slots"]["ndcg@20"] == pytest.approx(expected["ndcg@20"])
    assert per_seed[1]["knn_slots"]["coverage@20"] == pytest.approx(expected["coverage@20"])
    rows = {r["model"]: r for r in seed_table(per_seed, n_boot=50)}
    assert "ndcg@20 ratio" in rows["knn"]
