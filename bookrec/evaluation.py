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

Segments (``segment_metrics``): readers by training interactions (cold 1-4, regular
5-99, heavy >= 100) and held-out books by popularity tercile. Reachability = share of
held-out books the model can score at all (its scorable catalogue), which caps NDCG.
Cold readers exist in a split only through ``cold_users`` (readers with 2-5
interactions, one held out); the headline metrics stay over ``test_users``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

PRIMARY = "ndcg@20"  # the metric models are compared and gated on
COLD_MAX_TRAIN = 4  # cold readers: 1-4 training interactions
HEAVY_MIN_TRAIN = 100  # heavy readers: >= 100; regular in between
READER_SEGMENTS = ("cold", "regular", "heavy")
POPULARITY_TERCILES = ("low", "mid", "high")

RecommendFn = Callable[[np.ndarray, int], np.ndarray]
"""Given user row indices and k, return an (n_users, k) array of item ids, -1 padded."""


@dataclass
class Split:
    """Training matrix (same shape as the input) and the held-out interactions."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    test_users: np.ndarray  # row indices of users with held-out items
    # readers with 2..COLD_MAX_TRAIN+1 interactions, one held out: the cold segment only
    cold_users: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def n_test_users(self) -> int:
        """How many users are evaluated."""
        return len(self.test_users)

    @property
    def segment_users(self) -> np.ndarray:
        """Every user with held-out items: the headline users plus the cold ones."""
        return np.concatenate([self.test_users, self.cold_users]).astype(np.int64)


def holdout_split(
    matrix: sp.csr_matrix,
    *,
    min_interactions: int = 10,
    test_fraction: float = 0.2,
    seed: int = 42,
    cold_users: int = 0,
) -> Split:
    """Hold out ``test_fraction`` (rounded, at least 1) of each eligible user's interactions.

    Users below ``min_interactions`` keep everything in training, except ``cold_users``
    of them (seeded sample of readers with 2..COLD_MAX_TRAIN + 1 interactions), who get
    one interaction held out so the cold segment can be measured; they are drawn from
    their own random stream, so the headline users' split does not depend on them.
    The split depends only on the matrix and the seed.
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
    cold = np.empty(0, np.int64)
    if cold_users > 0:
        cold_rng = np.random.default_rng([seed, 1])
        pool = np.flatnonzero((counts >= 2) & (counts <= COLD_MAX_TRAIN + 1)
                              & (counts < min_interactions))
        cold = np.sort(cold_rng.choice(pool, size=min(cold_users, len(pool)), replace=False))
        for user in cold:
            test_mask[matrix.indptr[user] + cold_rng.integers(counts[user])] = True
    row_of = np.repeat(np.arange(matrix.shape[0]), counts)

    def part(mask: np.ndarray) -> sp.csr_matrix:
        out = sp.csr_matrix(
            (matrix.data[mask], (row_of[mask], matrix.indices[mask])), shape=matrix.shape
        )
        out.sort_indices()
        return out

    return Split(train=part(~test_mask), test=part(test_mask), test_users=eligible,
                 cold_users=cold.astype(np.int64))


def per_user_scores(
    recommended: np.ndarray, relevant: list[np.ndarray], *, k: int = 20, hr_k: int = 10
) -> dict[str, np.ndarray]:
    """Per-user Recall@k, NDCG@k and hit@hr_k arrays (one entry per row of ``recommended``)."""
    if len(relevant) != recommended.shape[0]:
        raise ValueError("one relevant set per recommended row is needed")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    n = recommended.shape[0]
    recall, ndcg, hits = np.zeros(n), np.zeros(n), np.zeros(n, bool)
    for i, (row, truth) in enumerate(zip(recommended[:, :k], relevant, strict=True)):
        truth = np.asarray(truth)
        if truth.size == 0:
            raise ValueError("a user with no held-out items cannot be evaluated")
        hit = np.isin(row, truth) & (row >= 0)
        n_rel = min(k, truth.size)
        recall[i] = hit.sum() / n_rel
        ndcg[i] = (hit * discounts[: len(row)]).sum() / discounts[:n_rel].sum()
        hits[i] = bool(hit[:hr_k].any())
    return {f"recall@{k}": recall, f"ndcg@{k}": ndcg, f"hr@{hr_k}": hits}


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
    per_user = per_user_scores(recommended, relevant, k=k, hr_k=hr_k)
    return {name: float(np.mean(values)) for name, values in per_user.items()}


def coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue that appears in at least one list."""
    ids = recommended[recommended >= 0]
    return float(np.unique(ids).size / n_items) if n_items else 0.0


def mean_popularity(recommended: np.ndarray, item_counts: np.ndarray) -> float:
    """Average training reader count of the recommended items (lower = more long tail)."""
    ids = recommended[recommended >= 0]
    return float(item_counts[ids].mean()) if ids.size else 0.0


def rank_users(
    recommend: RecommendFn, users: np.ndarray, k: int, batch_size: int = 2048
) -> np.ndarray:
    """Top-k lists (n_users x k, -1 padded) for ``users``, asked in batches."""
    lists = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        ids = np.asarray(recommend(batch, k))
        if ids.shape != (len(batch), k):
            raise ValueError(f"recommend returned shape {ids.shape}, expected {(len(batch), k)}")
        lists.append(ids)
    return np.vstack(lists) if lists else np.empty((0, k), np.int64)


def held_out(split: Split, users: np.ndarray) -> list[np.ndarray]:
    """The held-out item ids of each of ``users``."""
    test = split.test
    return [test.indices[test.indptr[u] : test.indptr[u + 1]] for u in users]


def evaluate(
    recommend: RecommendFn,
    split: Split,
    *,
    k: int = 20,
    batch_size: int = 2048,
    scorable: np.ndarray | None = None,
    segments: bool = False,
    per_user: bool = False,
) -> dict[str, float]:
    """Rank the catalogue for every test user and compute all metrics (plus timing).

    With ``segments``, the cold users are ranked too and ``metrics["segments"]`` holds
    ``segments_from_lists`` (``scorable``: the model's scorable-item mask, see
    ``scorable_items``); the headline metrics are over ``test_users`` either way.
    ``per_user`` adds ``metrics["per_user"]``: NDCG@k and Recall@k arrays over
    ``test_users`` (for paired bootstrap intervals; not JSON).
    """
    started = time.perf_counter()
    item_counts = np.bincount(split.train.indices, minlength=split.train.shape[1])
    users = split.segment_users if segments else split.test_users
    ranked = rank_users(recommend, users, k, batch_size)
    recommended = ranked[: split.n_test_users]
    relevant = held_out(split, split.test_users)
    metrics: dict = ranking_metrics(recommended, relevant, k=k)
    if per_user:
        scores = per_user_scores(recommended, relevant, k=k)
        metrics["per_user"] = {name: scores[name] for name in (f"ndcg@{k}", f"recall@{k}")}
    metrics[f"coverage@{k}"] = coverage(recommended, split.train.shape[1])
    metrics[f"mean_popularity@{k}"] = mean_popularity(recommended, item_counts)
    metrics["users"] = float(split.n_test_users)
    if segments:
        metrics["segments"] = segments_from_lists(ranked, users, split, scorable, k=k)
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def model_recommend_fn(model, train_weights: sp.csr_matrix) -> RecommendFn:
    """Adapt a base ``Recommender`` fitted on ``train_weights`` to ``evaluate``."""

    def recommend(users: np.ndarray, k: int) -> np.ndarray:
        ids, _ = model.recommend(train_weights[users], k)
        return ids

    return recommend


def paired_bootstrap_ratio(
    model: list[np.ndarray],
    base: list[np.ndarray],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean over splits of mean(model) / mean(base), with a paired bootstrap interval.

    ``model[s]`` and ``base[s]`` are per-user values of the same users on split ``s``;
    each replicate resamples users with replacement within every split (the same draw
    for both models, so the pairing is kept) and averages the splits' ratios.
    Returns (ratio, low, high).
    """
    if len(model) != len(base) or not model:
        raise ValueError("one pair of per-user arrays per split is needed")
    rng = np.random.default_rng(seed)
    point, boots = [], np.zeros(n_boot)
    for m, b in zip(model, base, strict=True):
        m, b = np.asarray(m, float), np.asarray(b, float)
        if m.shape != b.shape or m.size == 0:
            raise ValueError(f"paired arrays must have one equal, non-zero length: {m.shape} {b.shape}")
        point.append(m.mean() / b.mean())
        idx = rng.integers(0, m.size, size=(n_boot, m.size))
        boots += m[idx].mean(axis=1) / b[idx].mean(axis=1)
    boots /= len(model)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [tail, 1.0 - tail])
    return float(np.mean(point)), float(low), float(high)


# ---- segments ---------------------------------------------------------------------------


def reader_segment(train_counts: np.ndarray) -> np.ndarray:
    """Segment index (0 cold, 1 regular, 2 heavy) per training-interaction count; -1 for 0."""
    seg = np.where(train_counts >= HEAVY_MIN_TRAIN, 2,
                   np.where(train_counts > COLD_MAX_TRAIN, 1, 0))
    return np.where(train_counts > 0, seg, -1)


def popularity_terciles(split: Split, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tercile (0 low, 1 mid, 2 high) of each held-out pair of ``users`` (in
    ``held_out`` order) by the book's training reader count, cut so each tercile holds
    about a third of the pairs (ties stay together); and each pair's count. Depends
    only on the split, so every model is cut the same way."""
    counts = np.bincount(split.train.indices, minlength=split.train.shape[1])
    relevant = held_out(split, users)
    pair_counts = counts[np.concatenate(relevant)] if relevant else np.empty(0, np.int64)
    if pair_counts.size == 0:
        return np.empty(0, np.int64), pair_counts
    low, mid = (np.quantile(pair_counts, q, method="lower") for q in (1 / 3, 2 / 3))
    return np.where(pair_counts <= low, 0, np.where(pair_counts <= mid, 1, 2)), pair_counts


def _group_metrics(recommended, relevant, reachable_share, k) -> dict[str, float]:
    """Mean NDCG@k, Recall@k and reachability over a group of users (None when empty)."""
    if not relevant:
        return {"users": 0, f"ndcg@{k}": None, f"recall@{k}": None, "reachability": None}
    per_user = per_user_scores(recommended, relevant, k=k)
    return {
        "users": len(relevant),
        f"ndcg@{k}": float(per_user[f"ndcg@{k}"].mean()),
        f"recall@{k}": float(per_user[f"recall@{k}"].mean()),
        "reachability": float(reachable_share),
    }


def segments_from_lists(
    recommended: np.ndarray,
    users: np.ndarray,
    split: Split,
    scorable: np.ndarray | None,
    *,
    k: int = 20,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per reader segment and per popularity tercile: users, NDCG@k, Recall@k, reachability.

    ``recommended`` holds the lists of ``users`` (rows in order). A tercile's NDCG and
    recall count only that tercile's held-out books as relevant, over users with at
    least one of them; reachability = share of those held-out pairs whose book is in
    ``scorable`` (None: every book).
    """
    relevant = held_out(split, users)
    n_items = split.train.shape[1]
    can = np.ones(n_items, bool) if scorable is None else np.asarray(scorable, bool)
    if can.shape != (n_items,):
        raise ValueError(f"scorable mask has shape {can.shape}, expected ({n_items},)")
    seg = reader_segment(np.diff(split.train.indptr)[users]) if len(users) else np.empty(0, int)
    readers = {}
    for s, name in enumerate(READER_SEGMENTS):
        rows = np.flatnonzero(seg == s)
        pairs = np.concatenate([relevant[r] for r in rows]) if len(rows) else np.empty(0, int)
        share = can[pairs].mean() if pairs.size else None
        readers[name] = _group_metrics(recommended[rows], [relevant[r] for r in rows], share, k)
    tercile, pair_counts = popularity_terciles(split, users)
    owner = np.repeat(np.arange(len(users)), [len(r) for r in relevant])
    flat = np.concatenate(relevant) if relevant else np.empty(0, np.int64)
    popularity = {}
    for t, name in enumerate(POPULARITY_TERCILES):
        in_t = tercile == t
        rows, starts = np.unique(owner[in_t], return_index=True)  # owner is sorted
        rel = np.split(flat[in_t], starts[1:]) if len(rows) else []
        share = can[flat[in_t]].mean() if in_t.any() else None
        popularity[name] = _group_metrics(recommended[rows], rel, share, k)
        popularity[name]["max_readers"] = int(pair_counts[in_t].max()) if in_t.any() else None
    return {"readers": readers, "popularity": popularity}


def scorable_items(model, n_items: int) -> np.ndarray:
    """Bool mask of the books ``model`` can score at all.

    A model may say so itself (``scorable_items()``, e.g. the hybrid's CF catalogue);
    item-item models score their ``items_``; any other model scores every book.
    """
    own = getattr(model, "scorable_items", None)
    if callable(own):
        return np.asarray(own(), bool)
    mask = np.zeros(n_items, bool)
    items = getattr(model, "items_", None)
    if items is None:
        mask[:] = True
    else:
        mask[np.asarray(items)] = True
    return mask


def segment_metrics(model, split: Split, *, k: int = 20) -> dict[str, dict[str, dict[str, float]]]:
    """Segment report of a fitted model on a holdout (see ``segments_from_lists``).

    ``model`` is the hybrid (``recommend_indices``) or a base ``Recommender`` fitted on
    the binary training matrix of ``split``. Returns
    ``{"readers": {"cold"|"regular"|"heavy": m}, "popularity": {"low"|"mid"|"high": m}}``
    with ``m = {"users", "ndcg@k", "recall@k", "reachability"}`` (None where a group is
    empty; popularity groups also carry ``max_readers``, their upper cut).
    """
    if hasattr(model, "recommend_indices"):
        recommend = model.recommend_indices
    else:
        binary = split.train.astype(np.float32)
        binary.data[:] = 1.0
        recommend = model_recommend_fn(model, binary)
    users = split.segment_users
    ranked = rank_users(recommend, users, k)
    return segments_from_lists(ranked, users, split, scorable_items(model, split.train.shape[1]),
                               k=k)


def foldin_comparison(
    dataset,
    params=None,
    *,
    readers: int = 100,
    k: int = 20,
    min_interactions: int = 10,
    seed: int = 42,
) -> dict[str, float]:
    """How close folding readers in comes to training with them.

    Holds out 20% of the eligible users' interactions (``holdout_split``), picks
    ``readers`` of those users, and fits the hybrid twice on the training part: with
    them, and without any of their rows. The second model then scores each picked
    reader's training history as a fold-in (``recommend_histories``, ISBN -> rating, as
    serving does). Returns NDCG@k on their held-out items for both, the mean overlap of
    the two top-k lists, and how many lists are identical.
    """
    from bookrec.models.fit import fit_hybrid

    split = holdout_split(dataset.matrix, min_interactions=min_interactions, seed=seed)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(split.test_users, size=min(readers, split.n_test_users),
                                replace=False))
    keep_rows = np.ones(split.train.shape[0], np.float32)
    keep_rows[chosen] = 0.0
    without = sp.csr_matrix(sp.diags(keep_rows) @ split.train, dtype=split.train.dtype)
    without.eliminate_zeros()
    trained = fit_hybrid(dataset.with_matrix(split.train), params)
    folded = fit_hybrid(dataset.with_matrix(without), params)

    train = split.train
    histories = []
    for u in chosen:
        items = train.indices[train.indptr[u] : train.indptr[u + 1]]
        ratings = train.data[train.indptr[u] : train.indptr[u + 1]].astype(int) - 1
        histories.append({str(dataset.isbns[i]): int(r) for i, r in zip(items, ratings,
                                                                         strict=True)})
    lists_trained = trained.recommend_indices(chosen, k)
    lists_folded = folded.recommend_hist_indices(
        [folded.history_arrays(h) for h in histories], k
    )
    test = split.test
    relevant = [test.indices[test.indptr[u] : test.indptr[u + 1]] for u in chosen]
    overlap = [
        len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((a >= 0).sum()))
        for a, b in zip(lists_trained, lists_folded, strict=True)
    ]
    return {
        "readers": float(len(chosen)),
        f"ndcg@{k}_trained": ranking_metrics(lists_trained, relevant, k=k)[f"ndcg@{k}"],
        f"ndcg@{k}_folded": ranking_metrics(lists_folded, relevant, k=k)[f"ndcg@{k}"],
        f"overlap@{k}": float(np.mean(overlap)),
        "identical_lists": float(np.mean([
            np.array_equal(a, b) for a, b in zip(lists_trained, lists_folded, strict=True)
        ])),
    }
