"""Small snapshots with known answers for the model tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bookrec import columns as C


def checkerboard(block: int = 10, blocks: int = 2) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users of block b read every item of block b except one (their held-out item).

    Returns the user x item matrix and, per user, the item it lacks: every good
    recommender ranks that item first.
    """
    n = block * blocks
    rows, cols, held = [], [], np.empty(n, np.int64)
    for user in range(n):
        b = user // block
        missing = b * block + (user % block)
        held[user] = missing
        for item in range(b * block, (b + 1) * block):
            if item != missing:
                rows.append(user)
                cols.append(item)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
    return matrix, held


def checkerboard_texts(block: int = 10, blocks: int = 2) -> list[str]:
    """Item texts that mirror the checkerboard: each block shares its vocabulary."""
    topics = ["dragon wizard quest", "kitchen recipe baking", "space rocket orbit"]
    return [f"{topics[i // block]} item{i}" for i in range(block * blocks)]


FANTASY = [
    ("0000000011", "The Dragon Saga", "Ann Dragon"),
    ("0000000022", "Wizard Quest", "Ann Dragon"),
    ("0000000033", "Elven Kingdom", "Bo Elf"),
    ("0000000044", "Sword of Fire", "Bo Elf"),
    ("0000000055", "Dragon Riders", "Cy Rider"),
    ("0000000066", "Goblin Wars", "Cy Rider"),
]
COOKING = [
    ("1000000011", "Baking Bread", "Di Baker"),
    ("1000000022", "Italian Kitchen", "Di Baker"),
    ("1000000033", "Soups and Stews", "Ed Cook"),
    ("1000000044", "Vegan Recipes", "Ed Cook"),
    ("1000000055", "Grill Master", "Fi Grill"),
    ("1000000066", "Pastry Basics", "Fi Grill"),
]
# Another edition of "The Dragon Saga" (same work), a little-read fantasy companion,
# and a rated ISBN that has no book row.
EDITION = ("0000000077", "THE DRAGON SAGA (Paperback)", "ANN DRAGON")
TAIL = ("0000000088", "Dragon Saga Companion: Wizard Quest Maps", "Ann Dragon")
NO_ROW = "0000000099"


def world_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """30 fantasy readers and 30 cooks; a few read the other edition or the companion."""
    rng = np.random.default_rng(seed)
    books = pd.DataFrame(
        [(i, t, a, 2000, "Pub House", "", f"http://img.example/{i}.jpg", "")
         for i, t, a in FANTASY + COOKING + [EDITION, TAIL]],
        columns=C.BOOK_COLUMNS,
    )
    rows = []
    for user in range(1, 61):
        shelf = FANTASY if user <= 30 else COOKING
        for idx in rng.choice(len(shelf), size=4, replace=False):
            rows.append((user, shelf[idx][0], int(rng.integers(0, 11))))
    rows.append((5, EDITION[0], 9))
    rows.append((7, TAIL[0], 8))
    rows.append((8, NO_ROW, 0))
    # User 100 read only the little-read companion: no CF evidence, content applies.
    rows.append((100, TAIL[0], 10))
    # User 200 owns only the other edition of "The Dragon Saga" (plus two more).
    rows += [(200, EDITION[0], 7), (200, FANTASY[1][0], 8), (200, FANTASY[2][0], 0)]
    ratings = pd.DataFrame(rows, columns=C.RATING_COLUMNS).drop_duplicates([C.USER_ID, C.ISBN])
    return ratings.reset_index(drop=True), books


@pytest.fixture(scope="session")
def world():
    """(ratings, books) of the small world."""
    return world_frames()


@pytest.fixture(scope="session")
def world_model(world):
    """A hybrid fitted on the small world; the CF catalogue is the 12 main books (the
    dense core alone: the kNN stage, which would list the little-read books by CF, is
    off, explicitly, so they exercise the content path; tests/models/test_knn_hybrid.py has
    the kNN).
    Publisher rows are off too: every book of this world has the same publisher, which
    they would turn into a link between every pair of books."""
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid

    return fit_hybrid(build_dataset(*world), {"l2": 1.0, "max_items": 12, "keep": 12,
                                              "knn_items": 0, "publisher_weight": 0.0})


def clustered_frames(seed: int = 0, n_users: int = 240, per_topic: int = 15, topics: int = 4):
    """Readers with one favourite topic (12-20 ratings each, mostly in it): enough
    history for the holdout evaluation, with structure CF can find."""
    rng = np.random.default_rng(seed)
    names = ["dragons", "baking", "rockets", "gardens", "pirates", "murder"][:topics]
    books = []
    for t, topic in enumerate(names):
        for j in range(per_topic):
            isbn = f"{t + 1}{j:08d}X"
            books.append((isbn, f"{topic.title()} volume {j}", f"Writer {t}-{j % 3}", 1995 + j,
                          f"{topic} press", "", f"http://img.example/{isbn}.jpg", ""))
    books = pd.DataFrame(books, columns=C.BOOK_COLUMNS)
    by_topic = [books[C.ISBN].iloc[t * per_topic:(t + 1) * per_topic].tolist()
                for t in range(topics)]
    # Within a topic, a few books are far more read (a realistic long tail).
    weights = 1.0 / np.arange(1, per_topic + 1)
    weights /= weights.sum()
    rows = []
    for user in range(1, n_users + 1):
        topic = user % topics
        n = int(rng.integers(12, 21))
        own = rng.choice(by_topic[topic], size=min(n - 2, per_topic), replace=False, p=weights)
        other = rng.choice(books[C.ISBN].tolist(), size=2, replace=False)
        for isbn in list(own) + list(other):
            rows.append((user, isbn, int(rng.choice([0, 0, 5, 7, 8, 9, 10]))))
    ratings = pd.DataFrame(rows, columns=C.RATING_COLUMNS).drop_duplicates([C.USER_ID, C.ISBN])
    return ratings.reset_index(drop=True), books


def insert_frames(engine, ratings: pd.DataFrame, books: pd.DataFrame) -> None:
    """Put a snapshot into the books and ratings tables (what ingest would leave)."""
    books = books.copy()
    books[C.YEAR] = pd.to_numeric(books[C.YEAR], errors="coerce").astype("Int16")
    with engine.begin() as conn:
        books.to_sql("books", conn, if_exists="append", index=False)
        ratings[C.RATING_COLUMNS].to_sql("ratings", conn, if_exists="append", index=False)
