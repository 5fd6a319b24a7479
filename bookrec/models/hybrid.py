"""The served model: CF where the user has history, content for little-read books,
popularity for strangers. Every recommendation names its source and, where it can,
a reason.

A ``HybridRecommender`` is nothing but named arrays plus a small JSON of parameters,
so ``persist.save_model`` writes it without pickle and ``load_model`` memory-maps it
back (workers share the pages). Item ids are positions in the sorted ISBN array.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from bookrec.models.base import NO_ITEM, top_n
from bookrec.models.works import book_text, tokens, work_key

CF, CONTENT, POPULAR = "cf", "content", "popular"
STRING_FIELDS = ("title", "author", "publisher", "image_url_m")
History = tuple[np.ndarray, np.ndarray]  # a reader's (item ids, 0..10 ratings), sorted by item


@dataclass(frozen=True)
class Recommendation:
    """One recommended book, with where it came from and why."""

    isbn: str
    score: float
    source: str  # "cf" | "content" | "popular"
    reason: str | None
    title: str | None
    author: str | None
    image_url: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass
class HybridParams:
    """Hyperparameters of the served model (all JSON-serialisable)."""

    cf_algorithm: str = "ease"  # "ease" | "rp3beta"
    l2: float = 100.0
    dropout: float = 0.25  # DLAE: extra L2 of dropout/(1-dropout) x item frequency
    user_norm: float = 0.25  # users' rows weighted |u|^-user_norm in the Gram matrix
    max_items: int = 12_500
    author_weight: float = 5.0  # cEASE: weight of author rows stacked under X in the Gram
    # (5: NDCG@20 +10% on BX seed 42, every reader segment and popularity tercile up)
    publisher_weight: float = 1.0  # the same for publisher rows (1: +0.6% NDCG@20 over 3 seeds)
    popularity_exponent: float = 0.0  # CF column j scaled by readers_j^-exponent
    keep: int = 1000  # weights kept per row of the item-item matrix (largest magnitude)
    # Sparse item-kNN over a wider catalogue (issue 15: the knn_items most-read books with
    # two readers or more): cosine with shrinkage, knn_k neighbours per book, user rows
    # weighted |u|^-knn_user_norm. 0 = off. Scores are the history times its matrix, like
    # the dense core's; knn_weight adds them to the core books' scores, knn_tail_weight
    # scales them for books outside the core (which only this component can list), and
    # knn_tail_slots reserves that many of the last list positions (at most k // 4) for
    # such books when they have evidence. The defaults are the recipe of docs/models.md
    # ("Three seeds"): NDCG@20 1.226x plain EASE with coverage@20 0.112, against 1.200x and
    # 0.058 with the kNN off (knn_items=0).
    knn_items: int = 100_000
    knn_k: int = 200
    knn_shrink: float = 10.0
    knn_user_norm: float = 0.5
    knn_weight: float = 0.3
    knn_tail_weight: float = 0.5
    knn_tail_slots: int = 2
    explicit_weight: float = 0.0  # extra weight of an explicit rating (x rating/10)
    rp3_alpha: float = 1.0
    rp3_beta: float = 0.5
    cf_positive_only: bool = True  # a CF score <= 0 is "no evidence": leave it to content
    content_slots: int = 0  # list positions (at most k // 5) given to content picks of
    # little-read books (outside the CF catalogue), taken from the end of the CF list;
    # 2 gives NDCG@20 +1.5% on BX but halves batch throughput (per-user content scoring)
    content_min_similarity: float = 0.3  # for content_slots picks
    content_fill_min_similarity: float = 0.05  # for filling a short CF list
    require_metadata: bool = True  # only recommend ISBNs with a book row (title, cover)
    popularity_damping: float = 10.0
    popularity_rating_weight: float = 0.5
    popular_list_size: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HybridParams:
        """Build from a dict, refusing unknown names (typos must not pass silently)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hybrid parameter(s): {unknown}; known: {sorted(known)}")
        return cls(**values)


class StringTable:
    """Strings stored as one UTF-8 blob plus offsets (memory-mappable, no JSON parse)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob = blob
        self.offsets = offsets

    @classmethod
    def build(cls, values: Sequence[str | None]) -> StringTable:
        """Pack ``values`` (None and "" are both stored as empty)."""
        encoded = [(v or "").encode("utf-8") for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> str | None:
        """The i-th string, None when empty."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return bytes(self.blob[start:end]).decode("utf-8") if end > start else None


_NON_ALNUM = re.compile(r"[^0-9A-Za-z]")


def isbn_candidates(isbn: str) -> list[str]:
    """Forms an ISBN may be stored under: as given, cleaned and uppercased, and a
    978-prefixed ISBN-13 as its ISBN-10."""
    raw = str(isbn).strip()
    clean = _NON_ALNUM.sub("", raw).upper()
    out = [raw, clean]
    if len(clean) == 13 and clean.isdigit() and clean.startswith("978"):
        body = clean[3:12]
        check = (11 - sum((10 - i) * int(d) for i, d in enumerate(body)) % 11) % 11
        out.append(body + ("X" if check == 10 else str(check)))
    return list(dict.fromkeys(out))


def _overlay(base: History, new: History) -> History:
    """``base`` with ``new``'s items added or re-rated, sorted by item."""
    if not len(base[0]):
        return new
    if not len(new[0]):
        return base
    keep = ~np.isin(base[0], new[0], assume_unique=True)
    items = np.concatenate([base[0][keep], new[0]])
    ratings = np.concatenate([base[1][keep], new[1]])
    order = np.argsort(items, kind="stable")
    return items[order].astype(np.int32), ratings[order].astype(np.int8)


class HybridRecommender:
    """CF + content + popularity over one catalogue; see module docstring."""

    def __init__(self, arrays: dict[str, np.ndarray], params: dict[str, Any],
                 manifest: dict[str, Any] | None = None):
        # Plain ndarray views of the memory maps: same shared pages, no memmap overhead.
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        self.arrays = arrays
        self.params = HybridParams.from_dict(params)
        self.manifest = manifest or {}
        self.version: str = str(self.manifest.get("version", ""))
        a = arrays
        self.user_ids = a["user_ids"]
        self.isbns = a["isbns"]
        self.work_of_item = a["work_of_item"]
        self._n_works = int(self.work_of_item.max()) + 1 if len(self.work_of_item) else 0
        self.item_counts = a["item_counts"]
        self.strings = {
            name: StringTable(a[f"{name}_blob"], a[f"{name}_offsets"]) for name in STRING_FIELDS
        }
        self.has_meta = np.diff(a["title_offsets"]) > 0
        n_cf = len(a["cf_items"])
        self.cf_items = a["cf_items"]
        self.cf_pos = a["cf_pos"]
        self.cf_weights = sp.csr_matrix(
            (a["cf_data"], a["cf_indices"], a["cf_indptr"]), shape=(n_cf, n_cf)
        )
        self.cf_work = self.work_of_item[self.cf_items] if n_cf else np.empty(0, np.int32)
        self.cf_ok = self.has_meta[self.cf_items] if self.params.require_metadata else np.ones(
            n_cf, bool
        )
        n_rows = len(a["content_items"])
        n_terms = len(a["tfidf_t_indptr"]) - 1
        self.content_items = a["content_items"]
        self.content_row = a["content_row"]
        self.tfidf = sp.csr_matrix(
            (a["tfidf_data"], a["tfidf_indices"], a["tfidf_indptr"]), shape=(n_rows, n_terms)
        )
        self.tfidf_t = sp.csr_matrix(
            (a["tfidf_t_data"], a["tfidf_t_indices"], a["tfidf_t_indptr"]),
            shape=(n_terms, n_rows),
        )
        self.content_works = self.work_of_item[self.content_items]
        self.content_in_cf = (
            self.cf_pos[self.content_items] >= 0 if n_rows else np.empty(0, bool)
        )
        # The sparse item-kNN over the wider catalogue (absent from older artifacts).
        self.knn_items = a.get("knn_items", np.empty(0, np.int32))
        n_knn = len(self.knn_items)
        if n_knn:
            self.knn_pos = np.full(len(self.isbns), -1, np.int32)
            self.knn_pos[self.knn_items] = np.arange(n_knn, dtype=np.int32)
            self.knn_weights = sp.csr_matrix(
                (a["knn_data"], a["knn_indices"], a["knn_indptr"]), shape=(n_knn, n_knn))
            self.knn_core = self.cf_pos[self.knn_items]
            self.knn_work = self.work_of_item[self.knn_items]
            # books only the kNN can list: outside the core, with a book row if required
            self.knn_tail_ok = (self.knn_core < 0) & (
                self.has_meta[self.knn_items] if self.params.require_metadata else True)
        # The TF-IDF vocabulary and idf (models trained before they were stored lack them:
        # then a book the model does not know has no similar books, as before).
        self.vocabulary: StringTable | None = None
        self.idf: np.ndarray | None = None
        if "tfidf_terms_blob" in a and len(a["tfidf_idf"]) == n_terms and n_terms:
            self.vocabulary = StringTable(a["tfidf_terms_blob"], a["tfidf_terms_offsets"])
            self.idf = a["tfidf_idf"]
        self.popular_items = a["popular_items"]
        self.popular_scores = a["popular_scores"]
        self._isbn_width = self.isbns.dtype.itemsize

    # ---- lookups ---------------------------------------------------------------------

    def _user_index(self, user_id: int) -> int:
        """Row of ``user_id`` or -1."""
        pos = int(np.searchsorted(self.user_ids, user_id))
        return pos if pos < len(self.user_ids) and self.user_ids[pos] == user_id else -1

    def _item_index(self, isbn: str) -> int:
        """Position of ``isbn`` (tolerating hyphens, lowercase x, ISBN-13) or -1."""
        for cand in isbn_candidates(isbn):
            key = cand.encode("utf-8", "replace")
            if not key or len(key) > self._isbn_width:
                continue
            pos = int(np.searchsorted(self.isbns, np.bytes_(key)))
            if pos < len(self.isbns) and self.isbns[pos] == key:
                return pos
        return -1

    def scorable_items(self) -> np.ndarray:
        """Bool mask of the books the CF core can score and list (the evaluation's
        "reachability"); content and popular fill reach others only for short lists."""
        mask = np.zeros(len(self.isbns), bool)
        mask[self.cf_items[self.cf_ok]] = True
        if len(self.knn_items):
            mask[self.knn_items[self.knn_tail_ok]] = True
        return mask

    def knows_user(self, user_id: int) -> bool:
        """True when the user has a training history."""
        row = self._user_index(user_id)
        return row >= 0 and self.arrays["hist_indptr"][row + 1] > self.arrays["hist_indptr"][row]

    def knows_book(self, isbn: str) -> bool:
        """True when the ISBN is in the catalogue (rated or with a book row)."""
        return self._item_index(isbn) >= 0

    def isbn(self, item: int) -> str:
        """The ISBN string of an item id."""
        return self.isbns[item].decode("utf-8")

    def book(self, isbn: str) -> dict | None:
        """Catalogue entry for ``isbn`` (None if unknown)."""
        item = self._item_index(isbn)
        if item < 0:
            return None
        year = int(self.arrays["years"][item])
        entry = {name: self.strings[name].get(item) for name in STRING_FIELDS}
        return {
            "isbn": self.isbn(item),
            "title": entry["title"],
            "author": entry["author"],
            "year": year if year > 0 else None,
            "publisher": entry["publisher"],
            "image_url_m": entry["image_url_m"],
            "ratings": int(self.item_counts[item]),
        }

    def history(self, user_id: int) -> list[str]:
        """ISBNs the user has interacted with in the training snapshot."""
        row = self._user_index(user_id)
        if row < 0:
            return []
        return [self.isbn(i) for i in self._hist(row)[0]]

    def _hist(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, ratings) of one user row."""
        a = self.arrays
        start, end = a["hist_indptr"][row], a["hist_indptr"][row + 1]
        return a["hist_items"][start:end], a["hist_ratings"][start:end]

    def _make(self, item: int, score: float, source: str, reason: str | None) -> Recommendation:
        """A ``Recommendation`` with the catalogue fields filled in."""
        return Recommendation(
            isbn=self.isbn(item),
            score=round(float(score), 6),
            source=source,
            reason=reason,
            title=self.strings["title"].get(item),
            author=self.strings["author"].get(item),
            image_url=self.strings["image_url_m"].get(item),
        )

    def _label(self, item: int) -> str:
        """A title for reasons, the ISBN when there is no title."""
        return self.strings["title"].get(item) or f"ISBN {self.isbn(item)}"

    # ---- scoring cores -------------------------------------------------------------------

    def _cf_input(self, hists: Sequence[History], pos_of: np.ndarray | None = None,
                  n_cf: int | None = None) -> sp.csr_matrix:
        """Histories as CF input weights over the CF items (one row per history); with
        ``pos_of``/``n_cf``, over another item-item component's catalogue (the kNN's)."""
        if pos_of is None:
            pos_of, n_cf = self.cf_pos, len(self.cf_items)
        r_idx, c_idx, vals = [], [], []
        for r, (items, ratings) in enumerate(hists):
            if not len(items):
                continue
            pos = pos_of[items]
            ok = pos >= 0
            r_idx.append(np.full(int(ok.sum()), r))
            c_idx.append(pos[ok])
            vals.append(1.0 + self.params.explicit_weight * ratings[ok].astype(np.float32) / 10.0)
        if not r_idx:
            return sp.csr_matrix((len(hists), n_cf), dtype=np.float32)
        return sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32),
             (np.concatenate(r_idx), np.concatenate(c_idx))),
            shape=(len(hists), n_cf),
        )

    def _cf_ranked(self, hists: Sequence[History], n: int, exclude_works: list[np.ndarray]):
        """Per history, up to ``n`` CF items (global ids, best first, one per work) and
        scores: the dense core's, plus the kNN's when the model has a kNN component.

        The kNN's scores are put on the core's scale per reader: ``c = `` the reader's best
        core score / their best kNN score among core books (among all books when no core
        book has one). ``knn_weight * c * knn`` is added to the core books' scores and
        books outside the core rank by ``knn_tail_weight * c * knn``: with weight 1, a
        tail book as strongly linked to the history as the best core book ranks level
        with the best core pick."""
        x = self._cf_input(hists)
        p = self.params
        n_cf = len(self.cf_items)
        scores = np.asarray((x @ self.cf_weights).toarray(), dtype=np.float32) if n_cf \
            else np.zeros((len(hists), 0), np.float32)
        has_input = np.diff(x.indptr) > 0
        core_input = has_input.copy()
        knn = None
        if len(self.knn_items):
            xk = self._cf_input(hists, self.knn_pos, len(self.knn_items))
            knn = sp.csr_matrix(xk @ self.knn_weights)
            knn_input = np.diff(xk.indptr) > 0
            if p.knn_weight:
                core_input |= knn_input
            has_input |= knn_input
        # a reader's excluded works as a mask over works (set and cleared per reader: a
        # gather per catalogue, where np.isin sorted the catalogue for every reader)
        banned = np.zeros(self._n_works, bool)
        if n_cf:
            scores[~core_input] = -np.inf
            scores[:, ~self.cf_ok] = -np.inf
            for r in np.flatnonzero(core_input):
                if len(exclude_works[r]):
                    banned[exclude_works[r]] = True
                    scores[r, banned[self.cf_work]] = -np.inf
                    banned[exclude_works[r]] = False
        scale = np.ones(len(hists), np.float32)
        tails: list[tuple[np.ndarray, np.ndarray]] = []
        if knn is not None:
            best_core = scores.max(axis=1) if n_cf else np.full(len(hists), -np.inf)
            for r in range(len(hists)):
                lo, hi = knn.indptr[r], knn.indptr[r + 1]
                cols, vals = knn.indices[lo:hi], knn.data[lo:hi]
                if len(cols) and len(exclude_works[r]):
                    banned[exclude_works[r]] = True
                    ok = ~banned[self.knn_work[cols]]
                    banned[exclude_works[r]] = False
                    cols, vals = cols[ok], vals[ok]
                ok = vals > 0
                cols, vals = cols[ok], vals[ok]
                if len(cols) and best_core[r] > 0:
                    core = self.knn_core[cols] >= 0
                    ref = vals[core].max() if core.any() else vals.max()
                    scale[r] = best_core[r] / ref
                if p.knn_weight and n_cf and len(cols):
                    core = self.knn_core[cols]
                    on = core >= 0
                    scores[r, core[on]] += np.float32(p.knn_weight) * scale[r] * vals[on]
                tail = self.knn_tail_ok[cols]
                tails.append((cols[tail], vals[tail] * np.float32(p.knn_tail_weight) * scale[r]))
        if n_cf:
            if p.cf_positive_only:
                # Zero scores mean "no evidence": leave those to content and popularity.
                scores[scores <= 0] = -np.inf
            ids, best = top_n(scores, n + 10)
        out = []
        slots = min(p.knn_tail_slots, n // 4)
        for r in range(len(hists)):
            if n_cf:
                keep = ids[r] >= 0
                items, vals = self.cf_items[ids[r][keep]].astype(np.int64), best[r][keep]
            else:
                items, vals = np.empty(0, np.int64), np.empty(0, np.float32)
            tail_items = np.empty(0, np.int64)
            if tails and len(tails[r][0]):
                cols, tv = tails[r]
                if len(cols) > n + 10:
                    part = np.argpartition(-tv, n + 9)[: n + 10]
                    cols, tv = cols[part], tv[part]
                tail_items = self.knn_items[cols].astype(np.int64)
                items = np.concatenate([items, tail_items])
                vals = np.concatenate([vals, tv.astype(np.float32)])
            order = np.lexsort((items, -vals))
            items, vals = items[order], vals[order]
            _, first = np.unique(self.work_of_item[items], return_index=True)
            first.sort()
            items, vals = items[first], vals[first]
            if slots and len(tail_items) and len(items) > n:
                is_tail = np.isin(items, tail_items)
                want = min(slots, int(is_tail.sum()))
                if int(is_tail[:n].sum()) < want:
                    # the best tail books replace the last core ones (rank order kept)
                    head = np.flatnonzero(~is_tail)[: n - want]
                    tail = np.flatnonzero(is_tail)[:want]
                    pick = np.sort(np.concatenate([head, tail]))
                    items, vals = items[pick], vals[pick]
            out.append((items[:n], vals[:n]))
        return out, x

    def _content_scores(self, items: np.ndarray, weights: np.ndarray | None = None):
        """Cosine similarity to the (weighted) sum of ``items``' vectors, as sparse
        (content rows, scores): only rows sharing a term with the profile."""
        rows = self.content_row[items]
        ok = rows >= 0
        if not ok.any():
            return np.empty(0, np.int64), np.empty(0, np.float32)
        w = np.ones(int(ok.sum()), np.float32) if weights is None else weights[ok]
        profile = sp.csr_matrix(w[None, :]) @ self.tfidf[rows[ok]]
        norm = float(np.sqrt(profile.multiply(profile).sum())) or 1.0
        result = sp.csr_matrix(profile @ self.tfidf_t)
        return result.indices.astype(np.int64), (result.data / norm).astype(np.float32)

    def _top_content(self, idx, scores, n, banned_rows, *, min_score=0.0, tail_only=False):
        """Best ``n`` content rows from sparse (idx, scores), skipping ``banned_rows``."""
        keep = scores > min_score
        if len(banned_rows):
            keep &= ~np.isin(idx, banned_rows)
        if tail_only:
            keep &= ~self.content_in_cf[idx]
        idx, scores = idx[keep], scores[keep]
        if len(idx) > n:
            part = np.argpartition(-scores, n - 1)[:n]
            idx, scores = idx[part], scores[part]
        order = np.lexsort((idx, -scores))
        return idx[order], scores[order]

    def _popular(self, k: int, exclude_works: np.ndarray, taken: set[int]):
        """Up to ``k`` (item, score) from the precomputed popular list, skipping works."""
        out = []
        excluded = set(exclude_works.tolist())
        for item, score in zip(self.popular_items, self.popular_scores, strict=True):
            work = int(self.work_of_item[item])
            if work in excluded or work in taken:
                continue
            out.append((int(item), float(score)))
            taken.add(work)
            if len(out) >= k:
                break
        return out

    # ---- public API ----------------------------------------------------------------------

    def popular(self, k: int = 10, exclude: Iterable[str] = ()) -> list[Recommendation]:
        """The most popular books (one edition per work), skipping ``exclude`` and its editions."""
        works = self._works_of_isbns(exclude)
        return [
            self._make(i, s, POPULAR, "popular with readers")
            for i, s in self._popular(k, works, set())
        ]

    def _items_of_isbns(self, isbns: Iterable[str]) -> np.ndarray:
        """Item ids of the known ISBNs in ``isbns``."""
        return np.array([i for i in (self._item_index(x) for x in isbns) if i >= 0], np.int64)

    def _works_of_isbns(self, isbns: Iterable[str]) -> np.ndarray:
        """Works of the known ISBNs in ``isbns``."""
        return np.unique(self.work_of_item[self._items_of_isbns(isbns)])

    def recommend(
        self, user_id: int, k: int = 10, exclude: Iterable[str] = ()
    ) -> list[Recommendation]:
        """Top ``k`` books for one user from their training history (unknown users get
        popular books)."""
        return self.recommend_many([user_id], k, exclude=[list(exclude)])[0]

    def recommend_many(
        self,
        user_ids: Sequence[int],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[str]] | None = None,
        reasons: bool = True,
    ) -> list[list[Recommendation]]:
        """Top ``k`` for many users from their training histories, in one vectorised pass."""
        rows = [self._user_index(int(u)) for u in user_ids]
        return self._recommend_hists([self._row_history(r) for r in rows], k, exclude, reasons)

    def recommend_history(
        self,
        history: Mapping[str, int],
        k: int = 10,
        *,
        user_id: int | None = None,
        exclude: Iterable[str] = (),
        reasons: bool = True,
    ) -> list[Recommendation]:
        """Fold-in: top ``k`` for a reader whose ratings now are ``history`` (ISBN -> 0..10).

        CF scores are the history times the item-item matrix, exactly as for a trained
        reader, so a rating stored after the snapshot counts at once and a reader the model
        never saw is scored like any other. With ``user_id``, the model's training history of
        that reader is the base and ``history`` adds to it (its ratings win). ISBNs the model
        does not know are ignored; rated books and their other editions are never
        recommended. Serving and ``bookrec recommend`` call this with the reader's ratings
        in PostgreSQL.
        """
        return self.recommend_histories(
            [history], k, user_ids=None if user_id is None else [user_id], exclude=[exclude],
            reasons=reasons,
        )[0]

    def recommend_histories(
        self,
        histories: Sequence[Mapping[str, int]],
        k: int = 10,
        *,
        user_ids: Sequence[int] | None = None,
        exclude: Sequence[Iterable[str]] | None = None,
        reasons: bool = True,
    ) -> list[list[Recommendation]]:
        """``recommend_history`` for many readers in one vectorised pass."""
        hists = [self.history_arrays(h) for h in histories]
        if user_ids is not None:
            hists = [
                _overlay(self._row_history(self._user_index(int(u))), h)
                for u, h in zip(user_ids, hists, strict=True)
            ]
        return self._recommend_hists(hists, k, exclude, reasons)

    def history_arrays(self, history: Mapping[str, int]) -> History:
        """(items, ratings) of the ISBNs in ``history`` the model knows, sorted by item.

        ISBNs are looked up exactly (the stored, canonical form); an ISBN ingested after
        the model was trained is not an item and is left out.
        """
        width = self._isbn_width
        keys, values = [], []
        for isbn, rating in history.items():
            key = str(isbn).encode("utf-8", "replace")
            if key and len(key) <= width:
                keys.append(key)
                values.append(rating)
        if not keys:
            return np.empty(0, np.int32), np.empty(0, np.int8)
        wanted = np.array(keys, dtype=self.isbns.dtype)
        pos = np.searchsorted(self.isbns, wanted)
        pos = np.minimum(pos, len(self.isbns) - 1)
        ok = self.isbns[pos] == wanted
        items = pos[ok].astype(np.int32)
        ratings = np.clip(np.asarray(values, dtype=np.int16)[ok], 0, 10).astype(np.int8)
        order = np.argsort(items, kind="stable")
        items, ratings = items[order], ratings[order]
        first = np.r_[True, items[1:] != items[:-1]] if len(items) else np.empty(0, bool)
        return items[first], ratings[first]

    def _row_history(self, row: int) -> History:
        """A training row's (items, ratings); empty for -1 (a reader the model never saw)."""
        if row < 0:
            return np.empty(0, np.int32), np.empty(0, np.int8)
        return self._hist(row)

    def _recommend_hists(
        self,
        hists: list[History],
        k: int,
        exclude: Sequence[Iterable[str]] | None,
        reasons: bool,
    ) -> list[list[Recommendation]]:
        """Recommendations with reasons for (items, ratings) histories."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        extra = [self._items_of_isbns(e) for e in exclude] if exclude else None
        picks = self._rank(hists, k, extra)
        out = []
        for hist, user_picks in zip(hists, picks, strict=True):
            recs = []
            hist_items = hist[0]
            cf_reason = self._cf_reasons(hist, [i for i, _, s in user_picks if s == CF]) \
                if reasons else {}
            for item, score, source in user_picks:
                if source == CF:
                    why = cf_reason.get(item)
                    reason = f"because you rated {self._label(why)}" if why is not None else None
                elif source == CONTENT:
                    why = self._content_reason(hist_items, item) if reasons else None
                    reason = f"similar to {self._label(why)}, which you rated" \
                        if why is not None else None
                else:
                    reason = "popular with readers"
                recs.append(self._make(item, score, source, reason))
            out.append(recs)
        return out

    def recommend_indices(self, rows: np.ndarray, k: int) -> np.ndarray:
        """Item ids (n_users x k, -1 padded) for user rows: the evaluation entry point."""
        hists = [self._row_history(int(r)) for r in np.asarray(rows, dtype=np.int64)]
        return self.recommend_hist_indices(hists, k)

    def recommend_hist_indices(self, hists: Sequence[History], k: int) -> np.ndarray:
        """Item ids (n x k, -1 padded) for (items, ratings) histories (evaluation of fold-in)."""
        picks = self._rank(list(hists), k, None)
        out = np.full((len(picks), k), NO_ITEM, np.int64)
        for r, user_picks in enumerate(picks):
            for c, (item, _, _) in enumerate(user_picks[:k]):
                out[r, c] = item
        return out

    def _rank(self, hists: list[History], k: int, extra: list[np.ndarray] | None):
        """Per history, k (item, score, source) triples: CF, then content, then popular."""
        exclude_works, exclude_items = [], []
        for r, (items, _) in enumerate(hists):
            if extra is not None:
                items = np.union1d(items, extra[r])
            exclude_items.append(items)
            exclude_works.append(np.unique(self.work_of_item[items]))
        results: list[list[tuple[int, float, str]]] = [[] for _ in hists]
        for start in range(0, len(hists), 1024):
            chunk = hists[start : start + 1024]
            cf, _ = self._cf_ranked(chunk, k, exclude_works[start : start + 1024])
            for offset, (items, scores) in enumerate(cf):
                results[start + offset] = [
                    (int(i), float(s), CF) for i, s in zip(items, scores, strict=True)
                ]
        # Content slots for little-read books: at most one per five list positions, so
        # short lists stay CF.
        slots = min(self.params.content_slots, k // 5)
        for r, (items, ratings) in enumerate(hists):
            picks = results[r]
            taken = {int(self.work_of_item[i]) for i, _, _ in picks}
            want_content = k - len(picks) if len(picks) < k else min(slots, k)
            if len(items) and want_content > 0 and len(self.content_items):
                content = self._content_picks(
                    items, ratings, want_content,
                    np.concatenate([exclude_items[r], [i for i, _, _ in picks]]).astype(np.int64),
                    tail_only=len(picks) >= k,
                )
                picks = (picks[: k - len(content)] if len(picks) >= k else picks) + content
                taken |= {int(self.work_of_item[i]) for i, _, _ in content}
            if len(picks) < k:
                fill = self._popular(k - len(picks), exclude_works[r], taken)
                picks = picks + [(i, s, POPULAR) for i, s in fill]
            results[r] = picks[:k]
        return results

    def _content_picks(self, items, ratings, n, banned_items, *, tail_only):
        """Up to ``n`` content picks for a history (only little-read books if ``tail_only``).

        ``banned_items``: items whose works must not come back (every edition of a work
        shares its content row, so banning the row bans the work).
        """
        weights = 1.0 + ratings.astype(np.float32) / 10.0
        idx, scores = self._content_scores(items, weights)
        banned = self.content_row[np.asarray(banned_items, dtype=np.int64)]
        p = self.params
        ids, best = self._top_content(
            idx, scores, n, banned[banned >= 0],
            min_score=p.content_min_similarity if tail_only else p.content_fill_min_similarity,
            tail_only=tail_only,
        )
        return [(int(self.content_items[i]), float(s), CONTENT) for i, s in zip(ids, best,
                                                                                 strict=True)]

    def _cf_reasons(self, hist: History, picked: list[int]) -> dict[int, int]:
        """For each CF pick, the history item that contributed most to its score: through
        the dense core for core books, through the kNN for the others (and for core books
        whose score came from the kNN blend alone)."""
        out = self._reasons_from(hist, picked, self.cf_weights, self.cf_pos, len(self.cf_items))
        if len(self.knn_items):
            rest = [i for i in picked if i not in out]
            if rest:
                out.update(self._reasons_from(hist, rest, self.knn_weights, self.knn_pos,
                                              len(self.knn_items)))
        return out

    def _reasons_from(self, hist: History, picked: list[int], w: sp.csr_matrix,
                      pos_of: np.ndarray, n_pos: int) -> dict[int, int]:
        """``_cf_reasons`` through one item-item matrix ``w`` over the catalogue ``pos_of``."""
        items, ratings = hist
        picked = [i for i in picked if pos_of[i] >= 0]
        if not len(items) or not picked:
            return {}
        pos = pos_of[items]
        ok = pos >= 0
        if not ok.any():
            return {}
        hist_items, hist_pos = items[ok], pos[ok]
        weights = 1.0 + self.params.explicit_weight * ratings[ok].astype(np.float32) / 10.0
        starts, ends = w.indptr[hist_pos], w.indptr[hist_pos + 1]
        lengths = ends - starts
        flat = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(
            lengths.sum()
        )
        owner = np.repeat(np.arange(len(hist_pos)), lengths)
        slot = np.full(n_pos, -1, np.int64)
        slot[pos_of[np.asarray(picked)]] = np.arange(len(picked))
        pick_of = slot[w.indices[flat]]
        hit = pick_of >= 0
        contrib = w.data[flat][hit] * weights[owner[hit]]
        pick_of, owner = pick_of[hit], owner[hit]
        order = np.lexsort((-contrib, pick_of))
        first = np.r_[True, pick_of[order][1:] != pick_of[order][:-1]] if len(order) else order
        best = order[first]
        return {
            picked[int(pick_of[b])]: int(hist_items[owner[b]]) for b in best if contrib[b] > 0
        }

    def _content_reason(self, hist_items: np.ndarray, item: int) -> int | None:
        """The history book most similar in content to ``item``."""
        target = self.content_row[item]
        if target < 0 or len(hist_items) == 0:
            return None
        rows = self.content_row[hist_items]
        ok = rows >= 0
        if not ok.any():
            return None
        t = self.tfidf
        t_idx = t.indices[t.indptr[target] : t.indptr[target + 1]]
        t_val = t.data[t.indptr[target] : t.indptr[target + 1]]
        sims = []
        for r in rows[ok][-500:]:
            r_idx = t.indices[t.indptr[r] : t.indptr[r + 1]]
            _, a, b = np.intersect1d(t_idx, r_idx, assume_unique=True, return_indices=True)
            sims.append(float(t_val[a] @ t.data[t.indptr[r] + b]))
        sims = np.array(sims)
        hist_items = hist_items[ok][-500:]
        best = int(sims.argmax())
        return int(hist_items[best]) if sims[best] > 0 else None

    # ---- books the model was not trained with --------------------------------------------

    @property
    def transforms_text(self) -> bool:
        """True when the artifact holds the TF-IDF vocabulary (new books get content)."""
        return self.vocabulary is not None

    def _term_column(self, term: bytes) -> int:
        """Column of ``term`` in the stored vocabulary (sorted, binary search) or -1."""
        vocab = self.vocabulary
        blob, offsets = vocab.blob, vocab.offsets
        lo, hi = 0, len(vocab)
        while lo < hi:
            mid = (lo + hi) // 2
            if bytes(blob[offsets[mid] : offsets[mid + 1]]) < term:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(vocab) and bytes(blob[offsets[lo] : offsets[lo + 1]]) == term:
            return lo
        return -1

    def text_vector(self, title: str | None, author: str | None,
                    publisher: str | None) -> sp.csr_matrix | None:
        """A book's L2-normalised TF-IDF row (1 x terms) from its text, as the fitted
        vectorizer gives it (sublinear tf x stored idf; terms outside the vocabulary
        dropped). None without a stored vocabulary or when no term is known."""
        if self.vocabulary is None:
            return None
        counts: dict[int, int] = {}
        for term in tokens(book_text(title, author, publisher)):
            col = self._term_column(term.encode("utf-8"))
            if col >= 0:
                counts[col] = counts.get(col, 0) + 1
        if not counts:
            return None
        cols = np.array(sorted(counts), dtype=np.int32)
        values = (1.0 + np.log(np.array([counts[c] for c in cols], np.float64))) \
            * self.idf[cols].astype(np.float64)
        values /= np.sqrt((values * values).sum())
        return sp.csr_matrix((values.astype(np.float32), cols, np.array([0, len(cols)])),
                             shape=(1, self.tfidf.shape[1]))

    def needs_book_row(self, isbn: str) -> bool:
        """True when ``similar(isbn)`` would use the book's catalogue row (``book=``): the
        model has a vocabulary and either does not know the ISBN (ingested after training)
        or knows it without a title (rated, but its book row arrived later)."""
        if self.vocabulary is None:
            return False
        item = self._item_index(isbn)
        return item < 0 or self.content_row[item] < 0

    def _content_of_vector(self, vector: sp.csr_matrix):
        """Sparse (content rows, cosine scores) for one normalised TF-IDF row."""
        result = sp.csr_matrix(vector @ self.tfidf_t)
        return result.indices.astype(np.int64), result.data.astype(np.float32)

    def _content_by_vector(self, vector: sp.csr_matrix, n: int, banned_rows: np.ndarray,
                           key: str, taken: set[int], label: str) -> list[Recommendation]:
        """Up to ``n`` content neighbours of a text vector, skipping ``banned_rows``, works
        in ``taken`` and editions of the work ``key`` (those are added to ``taken`` so the
        popular fill skips them too)."""
        if not len(self.content_items):
            return []
        idx, scores = self._content_of_vector(vector)
        ids, best = self._top_content(idx, scores, n + 10, banned_rows)
        out = []
        for p, s in zip(ids, best, strict=True):
            cand = int(self.content_items[p])
            work = int(self.work_of_item[cand])
            if work in taken:
                continue
            if key and work_key(self.strings["title"].get(cand),
                                self.strings["author"].get(cand)) == key:
                taken.add(work)  # another edition of the asked book
                continue
            if len(out) < n:
                taken.add(work)
                out.append(self._make(cand, s, CONTENT, f"similar to {label}"))
        return out

    def _similar_new(self, isbn: str, book: Mapping[str, Any], k: int) -> list[Recommendation]:
        """``similar`` for a book the model does not know, from its catalogue row's text:
        content neighbours (never an edition of the same work), then popular."""
        title, author = book.get("title"), book.get("author")
        label = title or f"ISBN {isbn}"
        key = work_key(title, author)
        out: list[Recommendation] = []
        taken: set[int] = set()
        vector = self.text_vector(title, author, book.get("publisher"))
        if vector is not None:
            out += self._content_by_vector(vector, k, np.empty(0, np.int64), key, taken, label)
        if len(out) < k:
            fill = self._popular(k - len(out) + 5, np.array(sorted(taken), np.int64), set(taken))
            for cand, s in fill:
                if len(out) < k and not (key and work_key(
                        self.strings["title"].get(cand), self.strings["author"].get(cand)) == key):
                    out.append(self._make(cand, s, POPULAR, "popular with readers"))
        return out

    def similar(self, isbn: str, k: int = 10, *,
                book: Mapping[str, Any] | None = None) -> list[Recommendation]:
        """Books like ``isbn`` (never its other editions): CF neighbours, then content,
        then popular.

        ``book`` is the ISBN's catalogue row (title, author, publisher) for a book the
        model was not trained with: its text is transformed with the stored vocabulary and
        scored against the stored TF-IDF rows (``needs_book_row`` says when it is used).
        Raises ``KeyError`` for an ISBN the model does not know when no usable ``book``
        is given or the artifact has no vocabulary."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        item = self._item_index(isbn)
        if item < 0:
            if book is None or self.vocabulary is None or not book.get("title"):
                raise KeyError(isbn)
            return self._similar_new(isbn, book, k)
        work = int(self.work_of_item[item])
        label = self._label(item)
        if book is not None and book.get("title") and not self.strings["title"].get(item):
            label = str(book["title"])
        taken = {work}
        out: list[Recommendation] = []
        editions = np.flatnonzero(self.cf_work == work) if len(self.cf_items) else []
        if len(editions):
            best_edition = editions[np.argmax(self.item_counts[self.cf_items[editions]])]
            row = self.cf_weights[best_edition].toarray().ravel()
            row[~self.cf_ok] = -np.inf
            row[editions] = -np.inf
            row[row <= 0] = -np.inf
            ids, best = top_n(row[None, :], k + 10)
            for p, s in zip(ids[0], best[0], strict=True):
                if p < 0 or len(out) >= k:
                    continue
                cand = int(self.cf_items[p])
                w = int(self.work_of_item[cand])
                if w in taken:
                    continue
                taken.add(w)
                out.append(self._make(cand, s, CF, f"readers of {label} also read this"))
        if len(out) < k and len(self.knn_items):
            # The wider kNN catalogue: neighbours for books outside the dense core too.
            k_editions = np.flatnonzero(self.knn_work == work)
            if len(k_editions):
                best_k = k_editions[np.argmax(self.item_counts[self.knn_items[k_editions]])]
                lo, hi = self.knn_weights.indptr[best_k], self.knn_weights.indptr[best_k + 1]
                cols, vals = self.knn_weights.indices[lo:hi], self.knn_weights.data[lo:hi]
                listable = self.knn_tail_ok[cols] | (
                    (self.knn_core[cols] >= 0) & self.cf_ok[np.maximum(self.knn_core[cols], 0)])
                cols, vals = cols[listable & (vals > 0)], vals[listable & (vals > 0)]
                order = np.lexsort((cols, -vals))
                for c in order:
                    if len(out) >= k:
                        break
                    cand = int(self.knn_items[cols[c]])
                    w = int(self.work_of_item[cand])
                    if w in taken:
                        continue
                    taken.add(w)
                    out.append(self._make(cand, vals[c], CF, f"readers of {label} also read this"))
        vector = None
        if len(out) < k and self.content_row[item] < 0 and book is not None:
            vector = self.text_vector(book.get("title"), book.get("author"),
                                      book.get("publisher"))
        if len(out) < k and (self.content_row[item] >= 0 or vector is not None):
            banned = self.content_row[np.array([item] + [self._item_index(r.isbn) for r in out])]
            if vector is None:
                idx, scores = self._content_scores(np.array([item]))
                ids, best = self._top_content(idx, scores, k - len(out), banned[banned >= 0])
                for p, s in zip(ids, best, strict=True):
                    cand = int(self.content_items[p])
                    taken.add(int(self.work_of_item[cand]))
                    out.append(self._make(cand, s, CONTENT, f"similar to {label}"))
            else:  # text from the catalogue row: its editions are known by their work key
                out += self._content_by_vector(vector, k - len(out), banned[banned >= 0],
                                               work_key(book["title"], book.get("author")),
                                               taken, label)
        if len(out) < k:
            for cand, s in self._popular(k - len(out), np.array([work]), taken):
                out.append(self._make(cand, s, POPULAR, "popular with readers"))
        return out
