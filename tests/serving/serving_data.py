"""Test data for the serving tests: a small catalogue in three genres and readers of each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bookrec import columns as C
from bookrec.settings import Settings

REPO = Path(__file__).resolve().parents[2]

ADMIN_TOKEN = "serving-tests-admin-token-0123456789"
GENRES = {
    "dragon": ("Dragon Saga", "Ann Archer"),
    "manor": ("Murder at the Manor", "Bob Baker"),
    "herbs": ("Cooking with Herbs", "Cy Chef"),
}
BOOKS_PER_GENRE = 12


def isbn10(base: int) -> str:
    """A valid ISBN-10 from a 9-digit number."""
    digits = f"{base:09d}"
    total = sum((10 - i) * int(d) for i, d in enumerate(digits))
    check = (11 - total % 11) % 11
    return digits + ("X" if check == 10 else str(check))


def book_frame() -> pd.DataFrame:
    """36 books in three genres, plus titles to search for."""
    rows = []
    for g, (genre, (title, author)) in enumerate(GENRES.items()):
        for i in range(BOOKS_PER_GENRE):
            isbn = isbn10(100_000_000 + g * 1000 + i)
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


def genre_isbns(genre: str) -> list[str]:
    """The ISBNs of one genre, in series order."""
    g = list(GENRES).index(genre)
    return [isbn10(100_000_000 + g * 1000 + i) for i in range(BOOKS_PER_GENRE)]


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


def isbn13_of(isbn10_value: str) -> str:
    """The 978 ISBN-13 of an ISBN-10."""
    body = "978" + isbn10_value[:9]
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``BOOKREC_*`` environment that reproduces ``settings`` in a child process."""
    env = {
        "BOOKREC_HOME": str(settings.home),
        "BOOKREC_ARTIFACTS_URI": settings.resolved_artifacts_uri,
        "BOOKREC_RATE_LIMIT": settings.rate_limit,
        "BOOKREC_MODEL_POLL_INTERVAL_S": str(settings.model_poll_interval_s),
        "BOOKREC_API_LOG_FLUSH_INTERVAL_S": str(settings.api_log_flush_interval_s),
        "BOOKREC_RELOAD_CHANNEL": settings.reload_channel,
        "BOOKREC_REDIS_SOCKET_TIMEOUT_S": str(settings.redis_socket_timeout_s),
    }
    if settings.database_url:
        env["BOOKREC_DATABASE_URL"] = settings.database_url
    if settings.redis_url:
        env["BOOKREC_REDIS_URL"] = settings.redis_url
    if settings.admin_token:
        env["BOOKREC_ADMIN_TOKEN"] = settings.admin_token.get_secret_value()
    return env


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
