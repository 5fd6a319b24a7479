"""An in-memory title/author search index: what ``GET /v1/books?q=`` asks, without a query
plan per request.

A query is its casefolded words (``[^\\W_]+``, the tokenizer the full-text path uses on
the query): every word must be a word of the book's title or author, the last one as a
prefix. The index holds, in NumPy arrays (no Python object per book or word):

* the vocabulary: every casefolded word of title + author, sorted by UTF-8 bytes, in one
  byte string with offsets, so a word is found by bisection and the words with a prefix
  are one contiguous range of word ids;
* postings (CSR): per word id, the sorted ids of the books that hold it. The words with a
  prefix being a range, their postings are one contiguous slice;
* each book's tokens in order (CSR; a token's place is its position), for the
  "title starts with" test and the rank;
* titles (UTF-8 bytes with offsets), their length in characters, and ISBNs.

Books are numbered in the order they were read (the caller reads them in the table's
physical order, the order PostgreSQL's bitmap scan visits them), and like the SQL it
replaces, a query ranks at most ``candidates`` matches: the first ones in that order.

Order (as the SQL of ``serving.catalog`` orders): titles that start with the text first,
then match quality (``ts_rank`` of the ``simple`` vector of title || ' ' || author, with
its default weights: occurrences for a one-word query, closeness of the words' positions
for several), then shorter titles, then title, then ISBN.

Where the two differ: this index splits words the way the query is split (letters and
digits; ``spider-man`` is ``spider`` and ``man``, ``j.r.r.`` is ``j``, ``r``, ``r``) and
casefolds (``Straße`` matches ``strasse``), while PostgreSQL's parser keeps hyphenated
compounds, dotted initials and decimals as tokens of their own and lowercases; such books
are found here and were not found by the SQL. Ranks are computed in double precision, so
two books whose ranks differ only in float4 rounding may come in the other order.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[^\W_]+")
CANDIDATES = 200
_BUILD_CHUNK = 2_000  # rows per C-level pass: each holds the GIL for a few ms at most
LIMIT = 20
_W = 0.1  # ts_rank's default weight of an unlabelled position (D)
_PI2_6 = 1.64493406685  # ts_rank's normaliser for repeated occurrences


def words(text: str) -> list[str]:
    """The casefolded words of ``text``: what a query and a book are matched on."""
    return WORD.findall(text.casefold())


class _Vocabulary:
    """Sorted words as one byte string with offsets; a sequence for ``bisect``.

    Lookups bisect a plain list of every ``SAMPLE_STEP``-th word first, then only that
    stretch of the blob: each probe of the blob is a Python-level ``__getitem__`` (a slice
    and two array reads), so a full bisection of ~18 probes was 15% of a search's CPU."""

    __slots__ = ("blob", "offsets", "_sample")
    SAMPLE_STEP = 32

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self.blob = blob
        self.offsets = offsets
        self._sample = [self[i] for i in range(0, len(self), self.SAMPLE_STEP)]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.blob[self.offsets[i] : self.offsets[i + 1]]

    def bisect_left(self, word: bytes) -> int:
        """``bisect.bisect_left(self, word)``, with fewer probes of the blob."""
        j = bisect.bisect_left(self._sample, word)  # sample[j - 1] < word <= sample[j]
        step = self.SAMPLE_STEP
        return bisect.bisect_left(self, word, max(0, (j - 1) * step), min(len(self), j * step))

    def find(self, word: bytes) -> int:
        """The id of ``word``, or -1."""
        i = self.bisect_left(word)
        return i if i < len(self) and self[i] == word else -1

    def prefix_range(self, prefix: bytes) -> tuple[int, int]:
        """Ids ``[lo, hi)`` of the words starting with ``prefix`` (UTF-8 has no 0xff byte)."""
        return self.bisect_left(prefix), self.bisect_left(prefix + b"\xff")


@dataclass(frozen=True)
class Hit:
    """One ranked book: its place in the index, for tests and diagnostics."""

    isbn: str
    title: str
    starts: bool
    rank: float


class SearchIndex:
    """The arrays of one catalogue snapshot; immutable, shared by a worker's threads."""

    def __init__(
        self,
        vocab_blob: bytes,
        vocab_offsets: np.ndarray,
        post_ptr: np.ndarray,
        postings: np.ndarray,
        tok_ptr: np.ndarray,
        tokens: np.ndarray,
        title_blob: bytes,
        title_offsets: np.ndarray,
        title_len: np.ndarray,
        isbns: np.ndarray,
        stamp: str = "",
    ):
        self.vocab = _Vocabulary(vocab_blob, vocab_offsets)
        self.post_ptr = post_ptr
        self.postings = postings
        self.tok_ptr = tok_ptr
        self.tokens = tokens
        self.title_blob = title_blob
        self.title_offsets = title_offsets
        self.title_len = title_len
        self.isbns = isbns
        self.stamp = stamp
        self.n_books = len(isbns)
        self._avg_tokens = len(tokens) / max(1, self.n_books)

    # -- size ------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays and strings."""
        arrays = (
            self.vocab.offsets,
            self.post_ptr,
            self.postings,
            self.tok_ptr,
            self.tokens,
            self.title_offsets,
            self.title_len,
            self.isbns,
        )
        return sum(a.nbytes for a in arrays) + len(self.vocab.blob) + len(self.title_blob)

    def describe(self) -> dict[str, int]:
        """Sizes for logs and the admin view."""
        return {
            "books": self.n_books,
            "words": len(self.vocab),
            "tokens": len(self.tokens),
            "bytes": self.nbytes,
        }

    # -- pieces ----------------------------------------------------------------------------
    def title(self, doc: int) -> str:
        """The title of book ``doc``."""
        o = self.title_offsets
        return self.title_blob[o[doc] : o[doc + 1]].decode()

    def _posting(self, lo: int, hi: int) -> np.ndarray:
        """Sorted ids of the books holding any word in ``[lo, hi)``."""
        part = self.postings[self.post_ptr[lo] : self.post_ptr[hi]]
        if hi - lo <= 1 or len(part) <= 1:
            return part
        if len(part) < 4096:
            return _sorted_unique(part)
        mask = np.zeros(self.n_books, dtype=bool)
        mask[part] = True
        return np.flatnonzero(mask).astype(np.int32, copy=False)

    def _gather(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tokens of ``docs``: (index into ``docs``, position from 0, word id)."""
        starts = self.tok_ptr[docs]
        lengths = self.tok_ptr[docs + 1] - starts
        total = int(lengths.sum())
        owner = np.repeat(np.arange(len(docs)), lengths)
        first = np.cumsum(lengths) - lengths
        pos = np.arange(total) - first[owner]
        return owner, pos, self.tokens[starts[owner] + pos]

    # -- matching --------------------------------------------------------------------------
    def matches(self, text: str) -> tuple[np.ndarray, list[tuple[bytes, int, int]]]:
        """Ids of every book matching ``text`` (sorted), and the query's items as
        (word, lo, hi) word-id ranges (an exact word is a range of one)."""
        qwords = words(text)
        empty = np.zeros(0, dtype=np.int32)
        if not qwords:
            return empty, []
        items: dict[bytes, tuple[int, int]] = {}
        lists = []
        for w in dict.fromkeys(qwords[:-1]):
            b = w.encode()
            i = self.vocab.find(b)
            if i < 0:
                return empty, []
            items[b] = (i, i + 1)
            lists.append((int(self.post_ptr[i + 1] - self.post_ptr[i]), i))
        last = qwords[-1].encode()
        lo, hi = self.vocab.prefix_range(last)
        if lo >= hi:
            return empty, []
        items[last] = (lo, hi)  # ts_rank keeps one of two equal words: the prefix
        prefix_size = int(self.post_ptr[hi] - self.post_ptr[lo])
        lists.sort()
        if not lists or prefix_size <= lists[0][0]:
            found = self._posting(lo, hi)
            rest, check_prefix = lists, False
        else:
            found = self._posting(lists[0][1], lists[0][1] + 1)
            rest, check_prefix = lists[1:], True
        for _, i in rest:
            if not len(found):
                break
            found = _intersect(found, self.postings[self.post_ptr[i] : self.post_ptr[i + 1]])
        if check_prefix and len(found):
            if len(found) * self._avg_tokens < prefix_size:
                owner, _, wid = self._gather(found)
                has = np.zeros(len(found), dtype=bool)
                has[owner[(wid >= lo) & (wid < hi)]] = True
            else:
                mask = np.zeros(self.n_books, dtype=bool)
                mask[self.postings[self.post_ptr[lo] : self.post_ptr[hi]]] = True
                has = mask[found]
            found = found[has]
        ordered = sorted(items.items())  # ts_rank visits the query's words in byte order
        return found, [(b, r[0], r[1]) for b, r in ordered]

    def search(self, text: str, limit: int = LIMIT, candidates: int = CANDIDATES) -> list[str]:
        """ISBNs of the best ``limit`` of the first ``candidates`` matches of ``text``."""
        return [h.isbn for h in self.hits(text, limit, candidates)]

    def hits(self, text: str, limit: int = LIMIT, candidates: int = CANDIDATES) -> list[Hit]:
        """The ranked matches (see the module's docstring for the order)."""
        found, items = self.matches(text)
        found = found[:candidates]
        if not len(found):
            return []
        owner, pos, wid = self._gather(found)
        rank = _rank(len(found), owner, pos, wid, items)
        starts = self._starts_with(found, owner, pos, wid, text, items)
        order = np.lexsort((self.title_len[found], -rank, ~starts))
        out: list[Hit] = []
        keys = list(
            zip(
                (~starts)[order].tolist(),
                (-rank)[order].tolist(),
                self.title_len[found][order].tolist(),
                strict=True,
            )
        )
        i = 0
        while i < len(order) and len(out) < limit:
            j = i + 1
            while j < len(order) and keys[j] == keys[i]:
                j += 1
            group = [int(found[k]) for k in order[i:j]]
            if len(group) > 1:  # equal so far: title (code point order), then ISBN
                group.sort(key=lambda d: (self.title(d), self.isbns[d]))
            starts_here, rank_here = not keys[i][0], -keys[i][1]
            out.extend(
                Hit(self.isbns[d].decode(), self.title(d), starts_here, rank_here) for d in group
            )
            i = j
        return out[:limit]

    def _starts_with(self, found, owner, pos, wid, text: str, items) -> np.ndarray:
        """Per book of ``found``: does its title start with ``text`` (casefolded)? Only books
        whose first token can begin the text are decoded and compared."""
        starts = np.zeros(len(found), dtype=bool)
        qwords = words(text)
        first = qwords[0].encode()
        if len(qwords) == 1:
            lo, hi = self.vocab.prefix_range(first)
        else:
            lo = self.vocab.find(first)
            hi = lo + 1
        head = (pos == 0) & (wid >= lo) & (wid < hi)
        folded = text.casefold()
        for k in np.flatnonzero(head).tolist():
            d = owner[k]
            if self.title(int(found[d])).casefold().startswith(folded):
                starts[d] = True
        return starts


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (numpy 2's ``np.unique`` hashes first: seconds on millions)."""
    out = np.sort(values)
    if len(out) > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


def _intersect(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """The elements of sorted ``small`` that are in sorted ``large``."""
    if not len(small) or not len(large):
        return small[:0]
    if len(small) > len(large):
        small, large = large, small
    idx = np.searchsorted(large, small)
    idx[idx == len(large)] = len(large) - 1
    return small[large[idx] == small]


def _word_distance(dist: np.ndarray) -> np.ndarray:
    """PostgreSQL's ``word_distance`` (tsrank.c), float4 like its result."""
    wd = 1.0 / (1.005 + 0.05 * np.exp(dist.astype(np.float32).astype(np.float64) / 1.5 - 2))
    wd[dist > 100] = 1e-30
    return wd.astype(np.float32)


def _occurrence_table(n: int = 257) -> np.ndarray:
    """``calc_rank_or``'s contribution of a word occurring 1..n-1 times (float4 steps)."""
    table = np.zeros(n, dtype=np.float64)
    resj = np.float32(0)
    w = np.float32(_W)
    for k in range(1, n):
        resj = np.float32(resj + w / np.float32(k * k))
        table[k] = float(np.float32(w + resj - w)) / _PI2_6
    return table


_OCCURRENCES = _occurrence_table()


def _rank(n: int, owner, pos, wid, items) -> np.ndarray:
    """``ts_rank`` of each of ``n`` books for the query's ``items`` (see tsrank.c)."""
    if len(items) == 1:  # calc_rank_or: per matching word, its occurrences
        _, lo, hi = items[0]
        sel = (wid >= lo) & (wid < hi)
        key = owner[sel].astype(np.int64) * (1 << 32) + wid[sel]
        uniq = _sorted_unique(key)
        counts = np.diff(np.searchsorted(np.sort(key), uniq, side="left"), append=len(key))
        rank = np.zeros(n, dtype=np.float64)
        np.add.at(rank, uniq >> 32, _OCCURRENCES[np.minimum(counts, 256)])
        return rank.astype(np.float32).astype(np.float64)
    # calc_rank_and: every pair of positions of two different items, item k < item i, where
    # item i counts every word it matches and item k only the last (largest) one.
    log_keep = np.zeros(n, dtype=np.float64)
    paired = np.zeros(n, dtype=bool)
    all_pos = []
    last_pos = []
    for _, lo, hi in items:
        sel = (wid >= lo) & (wid < hi)
        o, p, w = owner[sel], pos[sel], wid[sel]
        all_pos.append((o, p))
        if hi - lo > 1 and len(w):
            top = np.full(n, -1, dtype=np.int64)
            np.maximum.at(top, o, w)
            keep = w == top[o]
            last_pos.append((o[keep], p[keep]))
        else:
            last_pos.append((o, p))
    w2 = np.float32(_W) * np.float32(_W)
    for i in range(1, len(items)):
        oi, pi = all_pos[i]
        for k in range(i):
            ok, pk = last_pos[k]
            a, b = _pairs(oi, ok, n)
            if not len(a):
                continue
            dist = np.abs(pi[a] - pk[b])
            nz = dist != 0
            a, dist = a[nz], dist[nz]
            curw = np.sqrt((w2 * _word_distance(dist)).astype(np.float64)).astype(np.float32)
            np.add.at(log_keep, oi[a], np.log1p(-curw.astype(np.float64)))
            paired[oi[a]] = True
    rank = np.where(paired, -np.expm1(log_keep), 1e-20)
    return rank.astype(np.float32).astype(np.float64)


def _pairs(oa: np.ndarray, ob: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (into ``oa``, into ``ob``) of every two entries of the same book."""
    order_b = np.argsort(ob, kind="stable")
    counts_b = np.bincount(ob, minlength=n)
    start_b = np.cumsum(counts_b) - counts_b
    reps = counts_b[oa]
    a = np.repeat(np.arange(len(oa)), reps)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(reps) - reps, reps)
    b = order_b[start_b[oa[a]] + offset]
    return a, b


def build(rows: Iterable[tuple[str, str | None, str | None]], stamp: str = "") -> SearchIndex:
    """The index of ``rows`` (isbn, title, author), numbered in the order given."""
    ids: dict[str, int] = {}
    tok_chunks: list[np.ndarray] = []
    # Per chunk: arrays and one joined byte string, not a Python object per book.
    length_chunks: list[np.ndarray] = []
    title_chunks: list[bytes] = []
    title_size_chunks: list[np.ndarray] = []
    title_len_chunks: list[np.ndarray] = []
    isbn_chunks: list[np.ndarray] = []
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, _BUILD_CHUNK)):
        # C-level loops (map) over a chunk: per-row Python code would cost several seconds
        # of a worker's GIL on the full catalogue.
        isbn_col, title_col, author_col = zip(*chunk, strict=True)
        del chunk
        titles = [t or "" for t in title_col]
        texts = map("{} {}".format, titles, (a or "" for a in author_col))
        per_book = list(map(WORD.findall, map(str.casefold, texts)))
        length_chunks.append(np.fromiter(map(len, per_book), np.int64, len(per_book)))
        flat = list(itertools.chain.from_iterable(per_book))
        del per_book
        for word in set(flat).difference(ids):
            ids[word] = len(ids)
        tok_chunks.append(np.fromiter(map(ids.__getitem__, flat), np.int32, len(flat)))
        del flat
        encoded = list(map(str.encode, titles))
        title_chunks.append(b"".join(encoded))
        title_size_chunks.append(np.fromiter(map(len, encoded), np.int64, len(encoded)))
        del encoded
        title_len_chunks.append(np.fromiter(map(len, titles), np.int64, len(titles)))
        isbn_chunks.append(np.array(list(map(str.encode, isbn_col)), dtype=bytes))

    def joined(chunks: list[np.ndarray], dtype: type | str = np.int64) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)

    lengths = joined(length_chunks)
    n_books = len(lengths)
    raw = np.concatenate(tok_chunks) if tok_chunks else np.zeros(0, np.int32)
    del tok_chunks
    # Renumber word ids in byte order of the words.
    vocab = sorted((w.encode(), i) for w, i in ids.items())
    del ids
    remap = np.empty(len(vocab), dtype=np.int32)
    remap[[i for _, i in vocab]] = np.arange(len(vocab), dtype=np.int32)
    tokens = remap[raw] if len(raw) else raw
    del raw, remap
    vocab_bytes = [w for w, _ in vocab]
    del vocab
    vocab_offsets = np.zeros(len(vocab_bytes) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in vocab_bytes], out=vocab_offsets[1:])
    vocab_blob = b"".join(vocab_bytes)
    del vocab_bytes
    tok_ptr = np.zeros(n_books + 1, dtype=np.int64)
    np.cumsum(lengths, out=tok_ptr[1:])
    owners = np.repeat(np.arange(n_books, dtype=np.int32), lengths)
    del lengths
    # Postings: each (word, book) once, books ascending within a word.
    pair = _sorted_unique(tokens.astype(np.int64) * (1 << 32) + owners)
    del owners
    post_word = (pair >> 32).astype(np.int32)
    postings = (pair & 0xFFFFFFFF).astype(np.int32)
    del pair
    post_ptr = np.zeros(len(vocab_offsets), dtype=np.int64)
    np.cumsum(np.bincount(post_word, minlength=len(vocab_offsets) - 1), out=post_ptr[1:])
    del post_word
    title_offsets = np.zeros(n_books + 1, dtype=np.int64)
    np.cumsum(joined(title_size_chunks), out=title_offsets[1:])
    title_blob = b"".join(title_chunks)
    del title_chunks, title_size_chunks
    isbns = joined(isbn_chunks, "S1")  # the widest chunk's width
    del isbn_chunks
    title_lens = joined(title_len_chunks)
    small = np.int32 if max(len(title_blob), len(vocab_blob), len(tokens)) < 2**31 else np.int64
    return SearchIndex(
        vocab_blob,
        vocab_offsets.astype(small),
        post_ptr.astype(small),
        postings,
        tok_ptr.astype(small),
        tokens,
        title_blob,
        title_offsets.astype(small),
        np.minimum(title_lens, 65535).astype(np.uint16),
        isbns,
        stamp,
    )


__all__ = ["CANDIDATES", "LIMIT", "Hit", "SearchIndex", "build", "words"]
