"""The training snapshot as index spaces and a sparse matrix, shared by every model.

Users and ISBNs are numbered by sorting them, so the same snapshot always yields the
same numbering. Ratings of ISBNs without a book row are kept (collaborative filtering
uses them); only books with a row carry metadata. The matrix stores ``rating + 1``
so that an implicit 0 stays a stored interaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bookrec import columns as C
from bookrec.models.works import assign_works

META_COLUMNS = (C.TITLE, C.AUTHOR, C.PUBLISHER, C.IMAGE_M)


class DataError(ValueError):
    """The snapshot frames are missing columns or hold values that cannot be used."""


@dataclass
class Dataset:
    """Index spaces plus the user x item matrix of ``rating + 1`` (uint8)."""

    user_ids: np.ndarray  # int64, sorted
    isbns: np.ndarray  # str, sorted
    matrix: sp.csr_matrix  # users x items, data = rating + 1
    meta: dict[str, list[str | None]]  # title/author/publisher/image_url_m per item
    years: np.ndarray  # int16 per item, -1 unknown
    has_meta: np.ndarray  # bool per item
    work_of_item: np.ndarray  # int32 per item

    @property
    def n_users(self) -> int:
        """Number of users in the snapshot."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of ISBNs (rated or catalogued)."""
        return len(self.isbns)

    def with_matrix(self, matrix: sp.csr_matrix) -> Dataset:
        """The same index spaces and metadata around another matrix (a training split)."""
        return Dataset(
            self.user_ids, self.isbns, matrix, self.meta, self.years, self.has_meta,
            self.work_of_item,
        )


def interactions(matrix: sp.csr_matrix, *, explicit_weight: float = 0.0) -> sp.csr_matrix:
    """Float32 interaction weights: 1 per interaction, plus ``explicit_weight * rating/10``.

    With ``explicit_weight=0`` this is the plain binary matrix the baselines use; a
    positive weight lets an explicit 9 count more than an implicit 0.
    """
    out = matrix.astype(np.float32, copy=True)
    ratings = out.data - 1.0
    out.data = 1.0 + explicit_weight * ratings / 10.0
    return out


def _clean_text(values: pd.Series) -> list[str | None]:
    """Stripped strings with blanks and NA as None."""
    out: list[str | None] = []
    for value in values.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            out.append(None)
            continue
        text = str(value).strip()
        out.append(text or None)
    return out


def build_dataset(ratings: pd.DataFrame, books: pd.DataFrame) -> Dataset:
    """Number users and ISBNs and build the rating matrix and per-item metadata.

    ``ratings`` has user_id, isbn, rating (0..10); ``books`` has the book columns.
    Duplicate (user, isbn) pairs keep the highest rating.
    """
    for frame, needed, name in ((ratings, C.RATING_COLUMNS, "ratings"), (books, [C.ISBN], "books")):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DataError(f"{name} frame lacks column(s) {missing}")
    r = ratings[C.RATING_COLUMNS]
    if r[C.ISBN].isna().any() or r[C.USER_ID].isna().any():
        raise DataError("ratings frame has empty user_id or isbn values")
    rating_values = pd.to_numeric(r[C.RATING], errors="coerce")
    bad = rating_values.isna() | (rating_values < 0) | (rating_values > 10)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"ratings row {row}: rating {r[C.RATING].iloc[row]!r} is not in 0..10")
    books = books.drop_duplicates(subset=[C.ISBN], keep="first")
    books = books[books[C.ISBN].notna()]

    user_codes, user_ids = pd.factorize(r[C.USER_ID].astype("int64"), sort=True)
    isbns = np.union1d(r[C.ISBN].astype(str).unique(), books[C.ISBN].astype(str).unique())
    isbn_index = pd.Index(isbns)
    item_codes = isbn_index.get_indexer(r[C.ISBN].astype(str))
    matrix = sp.coo_matrix(
        (rating_values.to_numpy(np.int16) + 1, (user_codes, item_codes)),
        shape=(len(user_ids), len(isbns)),
    ).tocsr()
    # coo -> csr sums duplicates; rebuild keeping the maximum instead.
    if matrix.nnz != len(r):
        frame = pd.DataFrame({"u": user_codes, "i": item_codes, "v": rating_values + 1})
        frame = frame.groupby(["u", "i"], sort=False)["v"].max().reset_index()
        matrix = sp.csr_matrix(
            (frame["v"].to_numpy(np.int16), (frame["u"].to_numpy(), frame["i"].to_numpy())),
            shape=(len(user_ids), len(isbns)),
        )
    matrix.data = matrix.data.astype(np.uint8)
    matrix.sort_indices()

    n_items = len(isbns)
    pos = isbn_index.get_indexer(books[C.ISBN].astype(str))
    meta: dict[str, list[str | None]] = {}
    for col in META_COLUMNS:
        values: list[str | None] = [None] * n_items
        if col in books.columns:
            for p, v in zip(pos.tolist(), _clean_text(books[col]), strict=True):
                values[p] = v
        meta[col] = values
    years = np.full(n_items, -1, dtype=np.int16)
    if C.YEAR in books.columns:
        y = pd.to_numeric(books[C.YEAR], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        ok = np.isfinite(y) & (y > 0) & (y < 3000)
        years[pos[ok]] = y[ok].astype(np.int16)
    has_meta = np.array([t is not None for t in meta[C.TITLE]], dtype=bool)
    work_of_item = assign_works(meta[C.TITLE], meta[C.AUTHOR])
    return Dataset(
        user_ids=np.asarray(user_ids, dtype=np.int64),
        isbns=isbns.astype(str),
        matrix=matrix,
        meta=meta,
        years=years,
        has_meta=has_meta,
        work_of_item=work_of_item,
    )


def fingerprint(ratings: pd.DataFrame, books: pd.DataFrame) -> dict[str, object]:
    """Row counts and a sha256 of the rating snapshot (sorted, so order does not matter)."""
    r = ratings[C.RATING_COLUMNS].sort_values([C.USER_ID, C.ISBN], kind="stable")
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(r, index=False).to_numpy().tobytes())
    return {
        "ratings": len(ratings),
        "books": len(books),
        "users": int(ratings[C.USER_ID].nunique()),
        "isbns": int(ratings[C.ISBN].nunique()),
        "ratings_sha256": digest.hexdigest(),
    }
