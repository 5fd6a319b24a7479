"""Fit the served hybrid from a ``Dataset``: the component models, packed as arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bookrec import columns as C
from bookrec.models.cf import EASERecommender, ItemKNNRecommender, RP3BetaRecommender
from bookrec.models.content import ContentRecommender, book_text
from bookrec.models.dataset import Dataset, interactions
from bookrec.models.hybrid import STRING_FIELDS, HybridParams, HybridRecommender, StringTable
from bookrec.models.popularity import PopularityRecommender
from bookrec.models.works import normalize_author

_META_NAMES = {"title": C.TITLE, "author": C.AUTHOR, "publisher": C.PUBLISHER,
               "image_url_m": C.IMAGE_M}


def _isbn_array(isbns: np.ndarray) -> np.ndarray:
    """Sorted ISBN strings as fixed-width bytes (searchsorted-able, memory-mappable)."""
    encoded = np.char.encode(np.asarray(isbns, dtype=str), "utf-8")
    return np.asarray(encoded)


def side_features(dataset: Dataset, author_weight: float, publisher_weight: float):
    """Author and publisher indicator rows (features x items) scaled by sqrt(weight), so
    their Gram adds ``weight`` per pair of books sharing an author or publisher; None
    when both weights are 0."""
    blocks = []
    for column, weight in ((C.AUTHOR, author_weight), (C.PUBLISHER, publisher_weight)):
        if weight <= 0:
            continue
        keys = [normalize_author(v) for v in dataset.meta[column]]
        codes, names = pd.factorize(pd.Series(keys).replace("", None), use_na_sentinel=True)
        items = np.flatnonzero(codes >= 0)
        blocks.append(sp.csr_matrix(
            (np.full(len(items), np.sqrt(weight), np.float32), (codes[items], items)),
            shape=(len(names), dataset.n_items)))
    return sp.vstack(blocks).tocsr() if blocks else None


def fit_cf(dataset: Dataset, params: HybridParams):
    """The item-item CF component chosen by ``params.cf_algorithm``."""
    weights = interactions(dataset.matrix, explicit_weight=params.explicit_weight)
    if params.cf_algorithm == "ease":
        model = EASERecommender(
            l2=params.l2, max_items=params.max_items, keep=params.keep, dropout=params.dropout,
            user_norm=params.user_norm,
            side=side_features(dataset, params.author_weight, params.publisher_weight),
            popularity_exponent=params.popularity_exponent,
        )
    elif params.cf_algorithm == "rp3beta":
        model = RP3BetaRecommender(
            alpha=params.rp3_alpha, beta=params.rp3_beta, keep=params.keep,
            max_items=params.max_items,
        )
    else:
        raise ValueError(f"unknown cf_algorithm {params.cf_algorithm!r} (ease, rp3beta)")
    return model.fit(weights)


CF_FIELDS = ("cf_algorithm", "l2", "dropout", "user_norm", "max_items", "author_weight",
             "publisher_weight", "popularity_exponent", "keep", "explicit_weight", "rp3_alpha",
             "rp3_beta")
KNN_FIELDS = ("knn_items", "knn_k", "knn_shrink", "knn_user_norm")


def component_keys(params: HybridParams) -> tuple[tuple, tuple]:
    """(CF key, kNN key): recipes with equal keys fit equal components (the rest of the
    parameters only change the ranking)."""
    return (tuple(getattr(params, f) for f in CF_FIELDS),
            tuple(getattr(params, f) for f in KNN_FIELDS))


def fit_knn(dataset: Dataset, params: HybridParams) -> ItemKNNRecommender | None:
    """The sparse item-kNN over the ``knn_items`` most-read books (None when off)."""
    if params.knn_items <= 0:
        return None
    return ItemKNNRecommender(k=params.knn_k, shrink=params.knn_shrink,
                              max_items=params.knn_items,
                              user_norm=params.knn_user_norm).fit(dataset.matrix)


def _representatives(dataset: Dataset, counts: np.ndarray) -> np.ndarray:
    """One item per work that has a title: its most-read edition (lowest id on ties)."""
    items = np.flatnonzero(dataset.has_meta)
    if not len(items):
        return items
    works = dataset.work_of_item[items]
    order = np.lexsort((items, -counts[items], works))
    sorted_works = works[order]
    first = np.r_[True, sorted_works[1:] != sorted_works[:-1]]
    return np.sort(items[order][first])


def fit_hybrid(dataset: Dataset, params: HybridParams | dict[str, Any] | None = None,
               cf_model=None, knn_model=None) -> HybridRecommender:
    """Fit CF, item-kNN (if on), content and popularity on ``dataset.matrix`` and pack
    them as arrays.

    ``cf_model`` / ``knn_model`` may pass already fitted components (the evaluation and
    the benchmark's variants reuse them).
    """
    if not isinstance(params, HybridParams):
        params = HybridParams.from_dict(params or {})
    matrix = dataset.matrix
    n_items = dataset.n_items
    counts = np.bincount(matrix.indices, minlength=n_items).astype(np.int32)

    cf = cf_model if cf_model is not None else fit_cf(dataset, params)
    cf_items = np.asarray(cf.items_, dtype=np.int32)
    cf_weights = sp.csr_matrix(cf.weights_, dtype=np.float32)
    cf_pos = np.full(n_items, -1, np.int32)
    cf_pos[cf_items] = np.arange(len(cf_items), dtype=np.int32)

    knn = knn_model if knn_model is not None else fit_knn(dataset, params)
    if knn is not None:
        knn_items = np.asarray(knn.items_, dtype=np.int32)
        knn_weights = sp.csr_matrix(knn.weights_, dtype=np.float32)
    else:
        knn_items = np.empty(0, np.int32)
        knn_weights = sp.csr_matrix((0, 0), dtype=np.float32)

    reps = _representatives(dataset, counts)
    texts = [
        book_text(dataset.meta[C.TITLE][i], dataset.meta[C.AUTHOR][i], dataset.meta[C.PUBLISHER][i])
        for i in reps
    ]
    content = ContentRecommender(texts).fit()
    tfidf = sp.csr_matrix(content.vectors_, dtype=np.float32)
    terms = StringTable.build(content.terms_)
    tfidf_t = sp.csr_matrix(tfidf.T)
    content_row = np.full(n_items, -1, np.int32)
    # Every edition of a work maps to its work's content row.
    row_of_work = {int(dataset.work_of_item[it]): r for r, it in enumerate(reps)}
    for i in np.flatnonzero(dataset.has_meta):
        content_row[i] = row_of_work.get(int(dataset.work_of_item[i]), -1)
    has_text = np.array([bool(t) for t in texts], dtype=bool)
    content_row[content_row >= 0] = np.where(has_text[content_row[content_row >= 0]],
                                             content_row[content_row >= 0], -1)

    pop = PopularityRecommender(
        damping=params.popularity_damping, rating_weight=params.popularity_rating_weight
    ).fit(matrix)
    candidates = np.flatnonzero(dataset.has_meta & (counts > 0))
    order = candidates[np.lexsort((candidates, -pop.scores_[candidates]))]
    seen: set[int] = set()
    popular = []
    for item in order:
        work = int(dataset.work_of_item[item])
        if work in seen:
            continue
        seen.add(work)
        popular.append(int(item))
        if len(popular) >= params.popular_list_size:
            break
    popular_items = np.asarray(popular, dtype=np.int32)

    hist = sp.csr_matrix(matrix)
    hist.sort_indices()
    arrays: dict[str, np.ndarray] = {
        "user_ids": np.asarray(dataset.user_ids, dtype=np.int64),
        "hist_indptr": hist.indptr.astype(np.int64),
        "hist_items": hist.indices.astype(np.int32),
        "hist_ratings": (hist.data.astype(np.int16) - 1).astype(np.int8),
        "isbns": _isbn_array(dataset.isbns),
        "work_of_item": dataset.work_of_item.astype(np.int32),
        "years": dataset.years.astype(np.int16),
        "item_counts": counts,
        "cf_items": cf_items,
        "cf_pos": cf_pos,
        "cf_indptr": cf_weights.indptr.astype(np.int64),
        "cf_indices": cf_weights.indices.astype(np.int32),
        "cf_data": cf_weights.data.astype(np.float32),
        "knn_items": knn_items,
        "knn_indptr": knn_weights.indptr.astype(np.int64),
        "knn_indices": knn_weights.indices.astype(np.int32),
        "knn_data": knn_weights.data.astype(np.float32),
        "content_items": reps.astype(np.int32),
        "content_row": content_row,
        "tfidf_indptr": tfidf.indptr.astype(np.int64),
        "tfidf_indices": tfidf.indices.astype(np.int32),
        "tfidf_data": tfidf.data.astype(np.float32),
        "tfidf_t_indptr": tfidf_t.indptr.astype(np.int64),
        "tfidf_t_indices": tfidf_t.indices.astype(np.int32),
        "tfidf_t_data": tfidf_t.data.astype(np.float32),
        # The vocabulary (terms in column order, which is sorted) and idf: a book ingested
        # after training is transformed with them at request time (``similar(book=...)``).
        "tfidf_terms_blob": terms.blob,
        "tfidf_terms_offsets": terms.offsets,
        "tfidf_idf": content.idf_.astype(np.float32),
        "popular_items": popular_items,
        "popular_scores": pop.scores_[popular_items].astype(np.float32),
    }
    for name in STRING_FIELDS:
        table = StringTable.build(dataset.meta[_META_NAMES[name]])
        arrays[f"{name}_blob"] = table.blob
        arrays[f"{name}_offsets"] = table.offsets
    plain = {k: v for k, v in vars(params).items()}
    return HybridRecommender(arrays, plain)
