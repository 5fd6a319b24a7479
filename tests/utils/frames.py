"""Small rating and book frames with known structure, in the project's column names.

- The genre catalogue (``book_frame``, ``rating_frame``): 36 books in three genres, readers
  who mostly read one genre; the serving tests' data.
- ``tiny_frames``: a snapshot that holds the smoke test's default golden users and ISBNs;
  the registry tests' data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bookrec import columns as C
from tests.utils.isbn import isbn10

# ---------------------------------------------------------------- the genre catalogue
GENRES = {
    "dragon": ("Dragon Saga", "Ann Archer"),
    "manor": ("Murder at the Manor", "Bob Baker"),
    "herbs": ("Cooking with Herbs", "Cy Chef"),
}
BOOKS_PER_GENRE = 12


def genre_isbns(genre: str) -> list[str]:
    """The ISBNs of one genre, in series order."""
    g = list(GENRES).index(genre)
    return [isbn10(100_000_000 + g * 1000 + i) for i in range(BOOKS_PER_GENRE)]


def book_frame() -> pd.DataFrame:
    """36 books in three genres, plus titles to search for."""
    rows = []
    for genre, (title, author) in GENRES.items():
        for i, isbn in enumerate(genre_isbns(genre)):
            rows.append(
                {
                    C.ISBN: isbn,
                    C.TITLE: f"{title} {i + 1}",
                    C.AUTHOR: author,
                    C.YEAR: 1990 + i,
                    C.PUBLISHER: f"{genre.title()} Press",
                    C.IMAGE_S: f"http://images.example.invalid/{isbn}.S.jpg",
                    C.IMAGE_M: f"http://images.example.invalid/{isbn}.M.jpg",
                    C.IMAGE_L: f"http://images.example.invalid/{isbn}.L.jpg",
                }
            )
    return pd.DataFrame(rows)


def rating_frame(seed: int, n_users: int = 90) -> pd.DataFrame:
    """Users 1..n each read mostly one genre (user id modulo 3), with a little noise."""
    rng = np.random.default_rng(seed)
    genres = list(GENRES)
    rows = []
    for user in range(1, n_users + 1):
        own = genre_isbns(genres[user % 3])
        for isbn in rng.choice(own, size=int(rng.integers(5, 9)), replace=False):
            rows.append((user, str(isbn), int(rng.integers(6, 11))))
        other = genre_isbns(genres[(user + 1) % 3])
        rows.append((user, str(rng.choice(other)), int(rng.integers(0, 6))))
    frame = pd.DataFrame(rows, columns=C.RATING_COLUMNS)
    return frame.drop_duplicates([C.USER_ID, C.ISBN]).reset_index(drop=True)


# ---------------------------------------------------------------- the golden snapshot
GOLDEN_USERS = [11676, 198711, 153662, 98391, 35859]
GOLDEN_ISBNS = ["0971880107", "0316666343", "0385504209", "0060928336", "0312195516"]


def tiny_frames(seed: int = 0, n_users: int = 60, n_books: int = 40):
    """A small (ratings, books) snapshot that contains the default golden users and ISBNs."""
    rng = np.random.default_rng(seed)
    isbns = GOLDEN_ISBNS + [f"{i:09d}X" for i in range(n_books - len(GOLDEN_ISBNS))]
    topics = ["cats", "dogs", "space", "war"]
    books = pd.DataFrame({
        C.ISBN: isbns,
        C.TITLE: [f"Book {i} about {topics[i % 4]}" for i in range(n_books)],
        C.AUTHOR: [f"Author {i % 7}" for i in range(n_books)],
        C.YEAR: [1990 + i for i in range(n_books)],
        C.PUBLISHER: ["Pub"] * n_books,
        C.IMAGE_S: [""] * n_books,
        C.IMAGE_M: [f"http://img.example/{i}.jpg" for i in range(n_books)],
        C.IMAGE_L: [""] * n_books,
    })
    users = GOLDEN_USERS + list(range(1, n_users - len(GOLDEN_USERS) + 1))
    weights = np.linspace(2, 1, n_books)
    weights /= weights.sum()
    rows = [
        (u, isbns[i], int(rng.integers(0, 11)))
        for u in users
        for i in rng.choice(n_books, size=12, replace=False, p=weights)
    ]
    return pd.DataFrame(rows, columns=C.RATING_COLUMNS), books
