"""Valid ISBNs for test data, built on the project's own checksum rules
(``bookrec.cleaning``) rather than a second copy of the arithmetic."""

from __future__ import annotations

from bookrec.cleaning import isbn10_is_valid, isbn13_is_valid


def isbn10(body: int | str) -> str:
    """The valid ISBN-10 of a 9-digit body (a number is zero-padded)."""
    digits = f"{int(body):09d}" if isinstance(body, int) else body
    return next(digits + c for c in "0123456789X" if isbn10_is_valid(digits + c))


def isbn13(body: str) -> str:
    """The valid ISBN-13 of a 12-digit body with a 978 or 979 prefix."""
    return next(body + c for c in "0123456789" if isbn13_is_valid(body + c))


def isbn13_of(isbn10_value: str) -> str:
    """The 978 ISBN-13 of an ISBN-10 (``bookrec.cleaning`` normalises it back)."""
    return isbn13("978" + isbn10_value[:9])
