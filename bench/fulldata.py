"""Load the full Book-Crossing data for benchmarks, from PostgreSQL or the Kaggle CSVs.

The CSV path normalises ISBNs simply (strip non-alphanumerics, uppercase), which is
close to what ingest does; use ``--source db`` once the ingested data is there.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bookrec import columns as C

_DATA = Path("shared") / "data" / "book-crossing" / "kaggle"
# Next to the checkout (/work/main -> /work/shared), also from a worktree one level deeper
# (/work/wt/<name>); the first that exists.
KAGGLE = next((p / _DATA for p in Path(__file__).resolve().parents[1:4] if (p / _DATA).is_dir()),
              Path(__file__).resolve().parents[2] / _DATA)


def _norm_isbn(values: pd.Series) -> pd.Series:
    """Strip everything but letters and digits, uppercase."""
    return values.astype(str).str.replace(r"[^0-9A-Za-z]", "", regex=True).str.upper()


def load_csv(folder: Path = KAGGLE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, books) frames with the project's column names from the Kaggle files."""
    ratings = pd.read_csv(folder / "Ratings.csv.gz", dtype={"ISBN": str}, keep_default_na=False)
    ratings = ratings.rename(
        columns={"User-ID": C.USER_ID, "ISBN": C.ISBN, "Book-Rating": C.RATING}
    )
    ratings[C.ISBN] = _norm_isbn(ratings[C.ISBN])
    ratings = ratings[ratings[C.ISBN] != ""]
    ratings = ratings.groupby([C.USER_ID, C.ISBN], as_index=False)[C.RATING].max()
    ratings[C.RATING] = ratings[C.RATING].astype("int16")
    books = pd.read_csv(folder / "Books.csv.gz", dtype=str, keep_default_na=False)
    books.columns = C.BOOK_COLUMNS
    books[C.ISBN] = _norm_isbn(books[C.ISBN])
    books = books[books[C.ISBN] != ""].drop_duplicates(C.ISBN)
    return ratings, books


def load_db() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, books) snapshot from the configured PostgreSQL."""
    from bookrec import db
    from bookrec.settings import get_settings

    engine = db.get_engine(get_settings())
    return db.read_ratings(engine), db.read_books(engine)
