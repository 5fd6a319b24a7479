"""The hybrid's sparse item-kNN over a wider catalogue than the dense core (issue 15):
books outside the core become listable by CF, with reasons, under the hybrid's rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bookrec.models.dataset import build_dataset
from bookrec.models.fit import fit_hybrid
from bookrec.models.hybrid import HybridRecommender
from bookrec.models.persist import load_model, save_model
from bookrec.models.works import work_key

from .conftest import clustered_frames

KNN = ("knn_items", "knn_indptr", "knn_indices", "knn_data")
# a dense core of 20 books out of 60; the kNN covers every book with two readers
BASE = {"l2": 10.0, "max_items": 20, "keep": 20, "author_weight": 0.0, "publisher_weight": 0.0,
        "knn_items": 0}
# the kNN's own ranking dials at their neutral values (explicit, so a change of defaults leaves these tests alone)
WITH_KNN = {**BASE, "knn_items": 1000, "knn_k": 30, "knn_shrink": 2.0, "knn_user_norm": 0.0,
            "knn_weight": 0.0, "knn_tail_weight": 1.0, "knn_tail_slots": 0}
# the issue 15 candidate's dials (heavy readers damped, blended into the core, tail weight
# 0.5, 2 tail slots; docs/models.md "Issue 15") on the same small catalogue
RECIPE_DIALS = {**WITH_KNN, "knn_user_norm": 0.5, "knn_weight": 0.3, "knn_tail_weight": 0.5,
                "knn_tail_slots": 2}


@pytest.fixture(scope="module")
def data():
    return build_dataset(*clustered_frames())


@pytest.fixture(scope="module")
def plain(data):
    return fit_hybrid(data, BASE)


@pytest.fixture(scope="module", params=["neutral", "recipe_dials"])
def knn(request, data):
    return fit_hybrid(data, WITH_KNN if request.param == "neutral" else RECIPE_DIALS)


USERS = list(range(1, 241, 7))


def _tail(model, recs):
    core = set(model.cf_items.tolist())
    return [r for r in recs if model._item_index(r.isbn) not in core]


def test_off_answers_as_a_model_without_knn_arrays(plain):
    old = HybridRecommender({k: v for k, v in plain.arrays.items() if k not in KNN},
                            vars(plain.params))
    assert not len(old.knn_items)
    assert old.recommend_many(USERS, 10) == plain.recommend_many(USERS, 10)
    assert old.similar(plain.isbn(int(plain.cf_items[0])), 5) == \
        plain.similar(plain.isbn(int(plain.cf_items[0])), 5)


def test_books_outside_the_core_become_listable_with_reasons(plain, knn):
    assert knn.scorable_items().sum() > plain.scorable_items().sum() == 20
    lists = knn.recommend_many(USERS, 10)
    tail = [r for recs in lists for r in _tail(knn, recs) if r.source == "cf"]
    assert tail, "no book outside the dense core was listed by CF"
    for recs, user in zip(lists, USERS, strict=True):
        history = set(knn.history(user))
        for r in _tail(knn, recs):
            if r.source == "cf":
                assert r.reason.startswith("because you rated ")
                rated = r.reason.removeprefix("because you rated ")
                assert rated in {knn.book(i)["title"] for i in history}


def test_rules_hold_with_the_knn(knn):
    for user, recs in zip(USERS, knn.recommend_many(USERS, 15), strict=True):
        history = set(knn.history(user))
        works = {work_key(knn.book(i)["title"], knn.book(i)["author"]) for i in history}
        keys = [work_key(r.title, r.author) for r in recs]
        assert len(set(keys)) == len(keys)  # one edition per work
        assert not works & set(keys)  # nothing the reader has (or another edition of it)
        assert all(r.title for r in recs)  # the book-row rule
        scores = [r.score for r in recs if r.source == "cf"]
        assert scores == sorted(scores, reverse=True)


def test_fold_in_of_a_training_history_gives_the_trained_list(data, knn):
    for user in USERS[:10]:
        row = int(np.searchsorted(data.user_ids, user))
        lo, hi = data.matrix.indptr[row], data.matrix.indptr[row + 1]
        history = {str(data.isbns[i]): int(v) - 1
                   for i, v in zip(data.matrix.indices[lo:hi], data.matrix.data[lo:hi],
                                   strict=True)}
        assert knn.recommend_history(history, k=10) == knn.recommend(user, 10)


def test_tail_slots_reserve_the_last_positions(data):
    model = fit_hybrid(data, {**WITH_KNN, "knn_tail_weight": 1e-6, "knn_tail_slots": 3})
    without = fit_hybrid(data, {**WITH_KNN, "knn_tail_weight": 1e-6})
    filled = 0
    for user in USERS:
        recs, ref = model.recommend(user, 12), without.recommend(user, 12)
        if not (len(ref) == 12 and all(r.source == "cf" for r in ref) and not _tail(model, ref)):
            continue
        # with a negligible weight, tail books come after every core pick of a long list
        available = len(_tail(without, [r for r in without.recommend(user, 60)
                                         if r.source == "cf"]))
        tail = _tail(model, recs)
        assert len(tail) == min(3, available)
        assert recs[12 - len(tail):] == tail  # they take the last positions
        assert recs[: 12 - len(tail)] == ref[: 12 - len(tail)]  # the head is unchanged
        filled += bool(tail)
    assert filled


def test_similar_reaches_books_outside_the_core(knn):
    core = set(knn.cf_items.tolist())
    outside = [i for i in knn.knn_items.tolist() if i not in core and knn.has_meta[i]]
    recs = knn.similar(knn.isbn(outside[0]), 5)
    assert recs[0].source == "cf" and recs[0].reason.startswith("readers of ")


def test_round_trip_keeps_the_knn(knn, tmp_path: Path):
    save_model(knn, tmp_path / "v", extra={"version": "v"})
    loaded = load_model(tmp_path / "v")
    assert len(loaded.knn_items) == len(knn.knn_items)
    assert loaded.recommend_many(USERS, 10) == knn.recommend_many(USERS, 10)
