"""Edition awareness: the same work under several ISBNs is one work.

Two ISBNs are editions of one work when their normalised title and author agree.
Normalising drops case, accents, punctuation, a trailing parenthesised series or
format note ("(Puffin Classics)", "(Mass Market)") and a leading article, so
"The Hobbit (Lord of the Rings)" by "J.R.R. Tolkien" and "HOBBIT" by "J. R. R. TOLKIEN"
meet. Books without a title row are works of their own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_TRAILING_NOTE = re.compile(r"\s*[(\[][^()\[\]]*[)\]]\s*$")
_NON_WORD = re.compile(r"[^0-9a-z]+")
_ARTICLE = re.compile(r"^(the|a|an|der|die|das|le|la|les|el|il)\s+")


def _fold(text: str) -> str:
    """Lowercase ASCII fold of ``text`` (accents stripped, HTML ampersands spelled out)."""
    text = text.replace("&amp;", "&").replace("&", " and ")
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch)).lower()


def normalize_title(title: str | None) -> str:
    """The comparable form of a title: folded, series notes and punctuation dropped."""
    if not title:
        return ""
    text = title
    for _ in range(3):  # "Title (Series) (Format)" has stacked notes
        stripped = _TRAILING_NOTE.sub("", text)
        if stripped == text or not stripped.strip():
            break
        text = stripped
    text = _NON_WORD.sub(" ", _fold(text)).strip()
    return _ARTICLE.sub("", text)


def normalize_author(author: str | None) -> str:
    """The comparable form of an author: folded letters and digits only ("J. R. R." = "JRR")."""
    if not author:
        return ""
    return _NON_WORD.sub("", _fold(author))


def work_key(title: str | None, author: str | None) -> str:
    """The key two editions of one work share ("" when the title is unknown)."""
    norm = normalize_title(title)
    if not norm:
        return ""
    return f"{norm}\x1f{normalize_author(author)}"


def book_text(title: str | None, author: str | None, publisher: str | None) -> str:
    """The document TF-IDF sees for one book ("" when the title is unknown): the
    normalised title, then one author token and one publisher token."""
    norm = normalize_title(title)
    if not norm:
        return ""
    parts = [norm]
    if a := normalize_author(author):
        parts.append(f"a_{a}")
    if p := normalize_author(publisher):
        parts.append(f"p_{p}")
    return " ".join(parts)


# What the TF-IDF vectorizer calls a term (``ContentRecommender``); the stored vocabulary
# is matched with the same pattern when a new book's text is transformed at serving time.
TOKEN_PATTERN = r"(?u)\b\w+\b"  # noqa: S105 (a regex, not a password)
_TOKEN = re.compile(TOKEN_PATTERN)


def tokens(text: str) -> list[str]:
    """The terms of a document as the vectorizer sees them (lowercased, ``TOKEN_PATTERN``)."""
    return _TOKEN.findall(text.lower())


def assign_works(titles: Sequence[str | None], authors: Sequence[str | None]) -> np.ndarray:
    """A work id per item (int32): equal for editions, unique for items without a title."""
    ids = np.empty(len(titles), dtype=np.int32)
    seen: dict[str, int] = {}
    for i, (title, author) in enumerate(zip(titles, authors, strict=True)):
        key = work_key(title, author)
        if not key:
            ids[i] = len(seen)
            seen[f"\x00{i}"] = ids[i]
            continue
        work = seen.get(key)
        if work is None:
            work = len(seen)
            seen[key] = work
        ids[i] = work
    return ids
