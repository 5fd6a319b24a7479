"""Cleaning Book-Crossing rows: one named function per rule, then one cleaner per file.

Each rule is a pure function of one value, so it can be tested on the real dirty
rows quoted in ``shared/data/book-crossing/DIRTY_PATTERNS.txt`` and applied to
whole columns through ``map_unique`` (which runs the rule once per distinct value).
The file cleaners (``clean_books``, ``clean_ratings``, ``clean_users``) apply the rules to
a parsed file (``bookrec.parse``): every record ends as a clean row, a merged duplicate,
or a quarantined row with its line number, raw text and reason.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import ftfy
import numpy as np
import pandas as pd

from bookrec import columns as C

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.parse import ParsedFile

# ---------------------------------------------------------------- ISBN

_ISBN_SEPARATORS = re.compile(r"[\s\-\.\"'\\_/]+")
_ISBN10 = re.compile(r"\d{9}[\dX]")
_ISBN13 = re.compile(r"97[89]\d{10}")
# A leading ISBN followed by junk that is not part of it ("3518365479<90", "3442248027  3").
_LEADING_ISBN10 = re.compile(r"\s*[\"'\\]*(\d{9}[\dXx])(?![0-9A-Za-z])")
_LEADING_ISBN13 = re.compile(r"\s*[\"'\\]*(97[89]\d{10})(?![0-9A-Za-z])")


def isbn10_is_valid(isbn: str) -> bool:
    """ISBN-10 checksum: sum of digit * weight (10..1) is divisible by 11; 'X' is 10 (last only)."""
    if not _ISBN10.fullmatch(isbn):
        return False
    total = sum((10 - i) * (10 if ch == "X" else int(ch)) for i, ch in enumerate(isbn))
    return total % 11 == 0


def isbn13_is_valid(isbn: str) -> bool:
    """ISBN-13 (EAN-13) checksum with alternating weights 1 and 3, prefix 978 or 979."""
    if not _ISBN13.fullmatch(isbn):
        return False
    total = sum((1 if i % 2 == 0 else 3) * int(ch) for i, ch in enumerate(isbn))
    return total % 10 == 0


def isbn13_to_isbn10(isbn13: str) -> str | None:
    """The ISBN-10 of a 978-prefixed ISBN-13 (979 has none)."""
    if not isbn13.startswith("978"):
        return None
    body = isbn13[3:12]
    check = (11 - sum((10 - i) * int(ch) for i, ch in enumerate(body)) % 11) % 11
    return body + ("X" if check == 10 else str(check))


def normalize_isbn(raw: object) -> str | None:
    """Canonical ISBN for a raw key, or None when it is not a valid ISBN.

    Canonical form: ISBN-10 with an uppercase check digit; a valid 978 ISBN-13 becomes
    its ISBN-10 (so ratings keyed by ISBN-13 meet the book rows keyed by ISBN-10); a
    979 ISBN-13 stays 13 digits. Separators (spaces, hyphens, dots, stray quotes and
    backslashes) are removed; a valid ISBN followed by junk keeps the ISBN; checksums
    must hold; ASINs ('B000...') and words are refused.
    """
    if not isinstance(raw, str):
        return None
    compact = _ISBN_SEPARATORS.sub("", raw).upper()
    candidates = [compact]
    for pattern in (_LEADING_ISBN13, _LEADING_ISBN10):
        match = pattern.match(raw)
        if match:
            candidates.append(match.group(1).upper())
    for candidate in candidates:
        if len(candidate) == 10 and isbn10_is_valid(candidate):
            return candidate
        if len(candidate) == 13 and isbn13_is_valid(candidate):
            return isbn13_to_isbn10(candidate) or candidate
    return None


def normalize_isbns(values: object) -> list[str | None]:
    """``normalize_isbn`` for many values at once, with a vectorised checksum fast path.

    Values that are already a compact 10-character key with a valid checksum are
    accepted in bulk; every other value goes through ``normalize_isbn``, so the result
    is identical to calling it one value at a time.
    """
    items = np.empty(len(values), dtype=object)  # type: ignore[arg-type]
    items[:] = list(values)  # type: ignore[call-overload]
    result = np.full(len(items), None, dtype=object)
    plain = list(map(type, items.tolist()))
    is_str = np.fromiter((t is str for t in plain), dtype=bool, count=len(items))
    lengths = np.zeros(len(items), dtype=np.int64)
    lengths[is_str] = np.fromiter(
        map(len, items[is_str].tolist()), dtype=np.int64, count=int(is_str.sum())
    )
    fast = np.flatnonzero(lengths == 10)
    accepted = np.zeros(len(items), dtype=bool)
    if len(fast):
        joined = "".join(items[fast].tolist()).encode("ascii", "replace")
        codes = np.frombuffer(joined, dtype=np.uint8).reshape(-1, 10).astype(np.int64)
        digits = codes - 48
        is_digit = (digits >= 0) & (digits <= 9)
        last_x = codes[:, 9] == ord("X")
        shaped = is_digit[:, :9].all(axis=1) & (is_digit[:, 9] | last_x)
        digits[:, 9] = np.where(last_x, 10, digits[:, 9])
        ok = shaped & ((digits @ np.arange(10, 0, -1)) % 11 == 0)
        accepted[fast[ok]] = True
        result[fast[ok]] = items[fast[ok]]
    rest = np.flatnonzero(~accepted)
    if len(rest):
        result[rest] = [normalize_isbn(value) for value in items[rest].tolist()]
    return result.tolist()


def isbn_rejection_reason(raw: object) -> str:
    """Why ``normalize_isbn`` refused ``raw``: a short reason code for the quarantine."""
    if not isinstance(raw, str) or not raw.strip():
        return "isbn_missing"
    compact = _ISBN_SEPARATORS.sub("", raw).upper()
    if re.fullmatch(r"B0[0-9A-Z]{8}", compact):
        return "isbn_is_asin"
    if len(compact) in (10, 13) and re.fullmatch(r"[\dX]+", compact):
        return "isbn_bad_checksum"
    return "isbn_malformed"


# ---------------------------------------------------------------- text

_NA_STRINGS = frozenset({"", "n/a", "na", "n.a.", "null", "none", "nan", "-", "--", "?", "unknown"})
_TAGS = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\s*/?>")
_SPACES = re.compile(r"\s+")
# UTF-8 -> latin-1 -> UTF-8 -> latin-1 with the 0x83 byte lost: 'Ã?Â¼' stood for 'ü'.
_TRIPLE_MOJIBAKE = re.compile("\u00c3\\?\u00c2([\u0080-\u00bf])")
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u20ac\u201a-\u2122\u0152-\u017e]")


def is_na(value: object) -> bool:
    """True for missing values and the strings people write for them ('n/a', 'NULL', 'None')."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    return isinstance(value, str) and value.strip().lower() in _NA_STRINGS


def decode_html_entities(text: str) -> str:
    """Decode '&amp;', '&#22235;' and '&lt;i>' and drop the markup tags the decoding reveals."""
    if "&" not in text and "<" not in text:
        return text
    return _TAGS.sub("", html.unescape(text))


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as latin-1 (or cp1252) once or twice.

    The triple-encoded form with a lost byte ('LÃ?Â¼bbe') is fixed by the rule in
    DIRTY_PATTERNS.txt (U+00C0 + (x - 0x80)); the reversible double encoding
    ('ExupÃ©ry') by ftfy, which also knows the cp1252 variants ('â€™').
    Correct latin-1 text ('méxico') is left alone.
    """
    if "\u00c3?\u00c2" in text:
        text = _TRIPLE_MOJIBAKE.sub(lambda m: chr(0xC0 + ord(m.group(1)) - 0x80), text)
    if _MOJIBAKE_HINT.search(text):
        text = ftfy.fix_encoding(text)
    return text


def repair_kaggle_escapes(text: str) -> str:
    """Undo what a doublequote CSV parser left of backslash-escaped quotes (Kaggle layout).

    'Of Mice and Men (Steinbeck \\Essentials\\")"' becomes
    'Of Mice and Men (Steinbeck "Essentials")': an escaped quote is a quote, a lone
    backslash stood for a quote whose character was eaten, and a trailing unbalanced
    quote is dropped.
    """
    if "\\" not in text:
        return text
    text = text.replace('\\"', '"').replace("\\", '"')
    if text.count('"') % 2 == 1 and text.endswith('"'):
        text = text[:-1]
    return text


def _needs_work(text: str) -> bool:
    """False for the common case of plain ASCII text with single spaces and no entities."""
    return (
        not text.isascii()
        or "&" in text
        or "<" in text
        or "  " in text
        or text != text.strip()
        or "\t" in text
        or "\n" in text
        or "\r" in text
        or len(text) <= 7  # short enough to be an NA spelling
    )


def clean_text(value: object) -> str | None:
    """Entities, mojibake, stray whitespace and NA-like strings: the text rule for every field."""
    if isinstance(value, str) and not _needs_work(value):
        return value
    if is_na(value):
        return None
    text = repair_mojibake(decode_html_entities(str(value)))
    text = _SPACES.sub(" ", text).strip()
    return None if is_na(text) else text


# ---------------------------------------------------------------- numbers

MIN_YEAR = 1450  # printing press; earlier "years" in BX are Hijri or typos
MIN_AGE, MAX_AGE = 5, 100


def max_plausible_year() -> int:
    """Latest publication year accepted: next year (pre-announced editions)."""
    return datetime.now(UTC).year + 1


def parse_int(value: object) -> int | None:
    """An integer from '1999', ' 18.0 ' or 18; None for anything else."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if number != number or number != int(number) or abs(number) > 2**31:
        return None
    return int(number)


def plausible_year(value: object, max_year: int | None = None) -> int | None:
    """Publication year, or None when it is 0, in the future, or before printing."""
    year = parse_int(value)
    upper = max_year if max_year is not None else max_plausible_year()
    if year is None or year < MIN_YEAR or year > upper:
        return None
    return year


def plausible_age(value: object) -> int | None:
    """Age in years, or None outside 5..100 (0, 1-4 and 244 are data-entry noise)."""
    age = parse_int(value)
    if age is None or age < MIN_AGE or age > MAX_AGE:
        return None
    return age


def parse_user_id(value: object) -> int | None:
    """A user id: a positive 32-bit integer written as digits."""
    text = str(value).strip() if value is not None else ""
    if not text.isdigit():
        return None
    number = int(text)
    return number if 0 < number < 2**31 else None


def parse_rating(value: object) -> int | None:
    """A rating 0..10 (0 is an implicit interaction, 1..10 explicit)."""
    text = str(value).strip() if value is not None else ""
    if not text.isdigit():
        return None
    number = int(text)
    return number if 0 <= number <= 10 else None


# ---------------------------------------------------------------- locations


def split_location(value: object) -> tuple[str | None, str | None, str | None]:
    """(city, region, country) from 'city, region, country'.

    Parts are cleaned and NA-like parts dropped to None. The last part is the country,
    the first the city, anything between is the region (joined with ', '); a single
    part is taken as the city, two parts as city and country.
    """
    text = clean_text(value)
    if text is None:
        return None, None, None
    return _split_parts([clean_text(p) for p in text.split(",")])


def _split_parts(parts: list[str | None]) -> tuple[str | None, str | None, str | None]:
    """(city, region, country) of a location's cleaned parts (none: all None)."""
    if not parts:
        return None, None, None
    if len(parts) == 1:
        return parts[0], None, None
    if len(parts) == 2:
        return parts[0], None, parts[1]
    middle = [p for p in parts[1:-1] if p]
    return parts[0], (", ".join(middle) or None), parts[-1]


# ---------------------------------------------------------------- Kaggle shifted rows

_YEARISH = re.compile(r"\d{1,4}")


def unshift_kaggle_book(fields: list[str]) -> list[str] | None:
    """Repair a Kaggle book row shifted one column left, or None if it is not one.

    In 3 Kaggle rows the author is glued into the title ('...\\";Michael Teitelbaum"'),
    the year sits in the author column, the publisher in the year column, the URLs
    moved left and Image-URL-L is empty. Shift them back and split title from author.
    """
    if len(fields) != 8:
        return None
    isbn, title, author, year, publisher, url_s, url_m, url_l = fields
    if not (
        _YEARISH.fullmatch(author.strip())
        and not _YEARISH.fullmatch(year.strip())
        and publisher.startswith("http")
        and not url_l.strip()
    ):
        return None
    head, sep, tail = title.rpartition('";')
    if not sep:
        head, sep, tail = title.rpartition(";")
    if not sep:
        return None
    new_title = repair_kaggle_escapes(head)
    new_author = tail.strip().strip('"')
    return [isbn, new_title, new_author, author, year, publisher, url_s, url_m]


# ---------------------------------------------------------------- helpers


def map_unique(series: pd.Series, rule: Callable[[object], object]) -> pd.Series:
    """Apply a one-value rule to a column, computing it once per distinct value."""
    codes, uniques = pd.factorize(series, use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    mapped[:] = [rule(value) for value in np.asarray(uniques, dtype=object).tolist()]
    return pd.Series(mapped[codes], index=series.index, dtype=object)


# Bytes of text that no rule touches: printable ASCII except '&' and '<' (entities, tags).
_PLAIN_BYTES = np.zeros(256, dtype=bool)
_PLAIN_BYTES[0x20:0x7F] = True
_PLAIN_BYTES[[ord("&"), ord("<")]] = False
_SPACE = ord(" ")


@dataclass
class _Joined:
    """Many strings as one UTF-8 buffer (NUL between them): where each one's bytes are."""

    data: np.ndarray  # uint8
    starts: np.ndarray
    ends: np.ndarray
    lengths: np.ndarray  # in characters

    def marked(self, mask: np.ndarray) -> np.ndarray:
        """Whether ``mask`` (one flag per byte of ``data``, separators unmarked) marks a
        byte of each string."""
        hits = np.zeros(len(self.starts), dtype=bool)
        positions = np.flatnonzero(mask)
        hits[np.searchsorted(self.starts, positions, side="right") - 1] = True
        return hits

    def edge_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last byte of each string (0 for an empty one)."""
        filled = self.ends > self.starts
        first = np.where(filled, self.data[np.minimum(self.starts, len(self.data) - 1)], 0)
        last = np.where(filled, self.data[np.maximum(self.ends - 1, 0)], 0)
        return first, last


def _join_strings(values: list) -> _Joined | None:
    """``values`` joined for byte-level checks, or None when one is not a str or holds a
    NUL (callers then go value by value)."""
    if not values or not set(map(type, values)) <= {str}:
        return None
    data = np.frombuffer("\x00".join(values).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    separators = np.flatnonzero(data == 0)
    if len(separators) != len(values) - 1:
        return None
    starts = np.concatenate(([0], separators + 1))
    ends = np.concatenate((separators, [len(data)]))
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return _Joined(data, starts, ends, lengths)


def text_needs_work(values: list) -> np.ndarray:
    """For each value, whether ``clean_text`` might change it: True wherever ``_needs_work``
    is (and for a few more, which ``clean_text`` then returns as they are), in a handful of
    numpy passes over the joined bytes instead of one Python call per value."""
    joined = _join_strings(values)
    if joined is None:
        return np.fromiter(
            (not isinstance(v, str) or _needs_work(v) for v in values),
            dtype=bool,
            count=len(values),
        )
    data = joined.data
    odd = ~_PLAIN_BYTES[data]  # non-ASCII, control (tab, newlines), '&', '<'
    odd[joined.ends[:-1]] = False  # the separators
    odd[:-1] |= (data[:-1] == _SPACE) & (data[1:] == _SPACE)  # two spaces in a row
    first, last = joined.edge_bytes()
    return joined.marked(odd) | (first == _SPACE) | (last == _SPACE) | (joined.lengths <= 7)


def clean_texts(values: list) -> list[str | None]:
    """``clean_text`` of each value; values it would return unchanged are found in bulk
    (``text_needs_work``) and kept as they are."""
    mapped = np.empty(len(values), dtype=object)
    mapped[:] = values
    work = np.flatnonzero(text_needs_work(values))
    if len(work):
        mapped[work] = [clean_text(value) for value in mapped[work].tolist()]
    return mapped.tolist()


def map_unique_text(series: pd.Series) -> pd.Series:
    """``clean_text`` over a column, once per distinct value (``clean_texts``)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    mapped[:] = clean_texts(np.asarray(uniques, dtype=object).tolist())
    return pd.Series(mapped[codes], index=series.index, dtype=object)


_ISBN10_WEIGHTS = np.arange(10, 0, -1)
_KEY_BASE = 11 ** np.arange(9, -1, -1, dtype=np.int64)  # an ISBN-10 as a base-11 number
_ISBN13_KEYS = 11**10  # 979 ISBN-13 keys start past every ISBN-10 key


def _isbn10_rows(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """For 10-character strings: which are a canonical ISBN-10 (nine digits, then a digit
    or 'X', checksum holds), and a number for each (equal strings, equal numbers)."""
    codes = np.frombuffer("".join(values).encode("ascii", "replace"), dtype=np.uint8)
    digits = codes.reshape(-1, 10).astype(np.int64) - 48
    is_digit = (digits >= 0) & (digits <= 9)
    last_x = digits[:, 9] == ord("X") - 48
    digits[:, 9] = np.where(last_x, 10, digits[:, 9])
    valid = is_digit[:, :9].all(axis=1) & (is_digit[:, 9] | last_x)
    valid &= (digits @ _ISBN10_WEIGHTS) % 11 == 0
    return valid, np.where(valid, digits @ _KEY_BASE, -1)


def _isbn_key(isbn: str | None) -> int:
    """``_isbn10_rows``' number of a canonical ISBN (a 979 ISBN-13 past them all); -1 for None."""
    if isbn is None:
        return -1
    if len(isbn) == 13:
        return _ISBN13_KEYS + int(isbn)
    return int(_isbn10_rows([isbn])[1][0])


def map_isbns(series: pd.Series, strip: bool = False) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """``normalize_isbn`` over a column. Returns the canonical ISBNs (None where invalid);
    per row, 1 where the raw key (stripped first with ``strip``) already was the canonical
    ISBN, else 0 (the dedupe rules prefer such rows); and per row a number standing for the
    canonical ISBN (equal ISBNs, equal numbers; -1 where invalid), for deduplicating
    without hashing strings.

    Nearly every raw key already is a canonical ISBN-10: those rows are recognised in bulk
    (numpy over the joined keys) and keep their string; the others go through
    ``normalize_isbn`` once per distinct value."""
    values = series.tolist()
    n = len(values)
    isbns = np.empty(n, dtype=object)
    isbns[:] = values
    canonical = np.zeros(n, dtype=np.int8)
    keys = np.full(n, -1, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    if n and set(map(type, values)) <= {str}:
        ten = np.flatnonzero(np.fromiter(map(len, values), dtype=np.int64, count=n) == 10)
        if len(ten):
            valid, numbers = _isbn10_rows(isbns[ten].tolist())
            rows = ten[valid]
            done[rows] = True
            canonical[rows] = 1
            keys[rows] = numbers[valid]
    rest = np.flatnonzero(~done)
    if len(rest):
        codes, uniques = pd.factorize(isbns[rest], use_na_sentinel=False)
        raw = np.asarray(uniques, dtype=object).tolist()
        mapped = [normalize_isbn(v) for v in raw]
        stripped = [v.strip() if isinstance(v, str) else None for v in raw] if strip else raw
        same = [int(m is not None and k == m) for k, m in zip(stripped, mapped, strict=True)]
        unique_isbns = np.empty(len(raw), dtype=object)
        unique_isbns[:] = mapped
        isbns[rest] = unique_isbns[codes]
        canonical[rest] = np.asarray(same, dtype=np.int8)[codes]
        keys[rest] = np.asarray([_isbn_key(m) for m in mapped], dtype=np.int64)[codes]
    return pd.Series(isbns, index=series.index, dtype=object), canonical, keys


def map_unique_ints(series: pd.Series, rule: Callable[[object], int | None]) -> np.ndarray:
    """A rule giving a non-negative integer or None over a column, once per distinct value:
    an int64 array, -1 where the rule gave None."""
    codes, uniques = pd.factorize(series, use_na_sentinel=False)
    mapped = np.fromiter(
        (-1 if v is None else v for v in map(rule, np.asarray(uniques, dtype=object).tolist())),
        dtype=np.int64,
        count=len(uniques),
    )
    return mapped[codes]


def clean_urls(values: list) -> list[str | None]:
    """Image URLs: stripped, empty or NA-like to None (no other text repair applies). The
    values that are long enough and start and end with a visible ASCII character, nearly
    all, are found in bulk and kept as they are."""

    def one(v: object) -> str | None:
        return None if not isinstance(v, str) or (len(v) <= 7 and is_na(v)) else v.strip() or None

    joined = _join_strings(values)
    if joined is None:
        return [one(v) for v in values]
    first, last = joined.edge_bytes()
    visible = (first > _SPACE) & (first < 0x7F) & (last > _SPACE) & (last < 0x7F)
    mapped = np.empty(len(values), dtype=object)
    mapped[:] = values
    work = np.flatnonzero(~visible | (joined.lengths <= 7))
    if len(work):
        mapped[work] = [one(v) for v in mapped[work].tolist()]
    return mapped.tolist()


def split_locations(values: list) -> tuple[list, list, list]:
    """``split_location`` of each value as three lists (city, region, country): the texts
    and their comma-separated parts are cleaned once per distinct string (``clean_texts``)."""
    texts = clean_texts(values)
    pieces = [text.split(",") if text is not None else [] for text in texts]
    distinct = list({part: None for parts in pieces for part in parts})
    cleaned = dict(zip(distinct, clean_texts(distinct), strict=True))
    cities, regions, countries = [], [], []
    for parts in pieces:
        city, region, country = _split_parts([cleaned[p] for p in parts])
        cities.append(city)
        regions.append(region)
        countries.append(country)
    return cities, regions, countries


# ---------------------------------------------------------------- files


@dataclass
class CleanFile:
    """A cleaned file: rows ready to load, the quarantine, and how many rows were merged."""

    kind: str
    name: str
    rows_read: int
    frame: pd.DataFrame
    quarantine: pd.DataFrame  # columns: line_number, raw, reason
    merged: int


def _quarantine_frame(parsed: ParsedFile, rejected: np.ndarray, reasons: list[str]) -> pd.DataFrame:
    """Quarantine rows: the malformed records plus the rows that cleaning rejected.

    ``raw_format`` is ``text`` (the record as it decoded) or ``escaped`` (its bytes held
    bytes that are not text: ``textscan.escape_bytes`` form, ``textscan.unescape`` inverts).
    """
    spans = [(start, end) for start, end, _ in parsed.bad]
    spans += [(int(parsed.starts[i]), int(parsed.ends[i])) for i in rejected.tolist()]
    why = [reason for _, _, reason in parsed.bad] + list(reasons)
    plain = [span for span in spans if span[0] not in parsed.escaped]
    texts = dict(zip(plain, parsed.raw_many(plain), strict=True))
    rows = [
        (start, parsed.escaped[start], reason, "escaped")
        if start in parsed.escaped
        else (start, texts[(start, end)], reason, "text")
        for (start, end), reason in zip(spans, why, strict=True)
    ]
    rows.sort(key=lambda row: row[0])
    return pd.DataFrame(rows, columns=["line_number", "raw", "reason", "raw_format"])


def _dedupe(
    rows: np.ndarray,
    key: np.ndarray,
    priority: Callable[[np.ndarray], list[np.ndarray]] = lambda _rows: [],
) -> tuple[np.ndarray, int]:
    """Keep one row per key: the one that sorts last by ``priority`` (documented per file),
    then by position. ``rows``: the candidate rows' positions, ascending; ``key``: one
    integer each, equal where the keys are; ``priority(rows)``: for the rows that share a
    key (few), the arrays to sort them by, most significant first. Returns the rows kept
    and how many were merged away."""
    dup = pd.Series(key).duplicated(keep=False).to_numpy()
    if not dup.any():
        return rows, 0
    shared, shared_key = rows[dup], key[dup]
    order = np.lexsort((shared, *reversed(priority(shared)), shared_key))
    ordered = shared_key[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ordered[:-1] != ordered[1:]
    losers = shared[order[~last]]
    keep = np.ones(len(rows), dtype=bool)
    keep[np.searchsorted(rows, losers)] = False
    return rows[keep], len(losers)


def _reasons_given(reasons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the rows with a reason, positions of the others)."""
    rejected = ~pd.isna(reasons)
    return np.flatnonzero(rejected), np.flatnonzero(~rejected)


def _finish(kind, parsed, columns: dict, rows, positions, reasons, merged) -> CleanFile:
    """The clean rows ``rows`` of ``columns`` (name -> array or pandas array, one value per
    parsed row) in file order, and the quarantine."""
    frame = pd.DataFrame({name: columns[name][rows] for name in C.TARGET_COLUMNS[kind]})
    return CleanFile(
        kind,
        parsed.name,
        parsed.rows_read,
        frame,
        _quarantine_frame(parsed, positions, reasons[positions].tolist()),
        merged,
    )


def _objects(values: list | pd.Series) -> np.ndarray:
    """A one-dimensional object array of ``values``."""
    out = np.empty(len(values), dtype=object)
    out[:] = values.tolist() if isinstance(values, pd.Series) else values
    return out


def clean_books(parsed: ParsedFile, layout: str) -> CleanFile:
    """Books: ISBN normalised and checked, text repaired, implausible years to NULL.

    Duplicate ISBNs after normalisation ('042511774x' and '042511774X') are merged:
    the row whose raw key was already canonical wins, then the one with more fields
    filled, then the later line.
    """
    frame = parsed.frame
    fields = dict(zip(C.BOOK_COLUMNS, frame.columns, strict=True))
    raw_isbn = frame[fields[C.ISBN]]
    isbns, canonical, isbn_key = map_isbns(raw_isbn, strip=True)
    columns: dict = {C.ISBN: isbns.to_numpy()}
    for col in (C.TITLE, C.AUTHOR, C.PUBLISHER):
        values = frame[fields[col]]
        if layout == "kaggle":
            values = map_unique(values, repair_kaggle_escapes)
        columns[col] = map_unique_text(values).to_numpy()
    for col in (C.IMAGE_S, C.IMAGE_M, C.IMAGE_L):
        columns[col] = _objects(clean_urls(frame[fields[col]].tolist()))
    max_year = max_plausible_year()
    columns[C.YEAR] = (
        map_unique(frame[fields[C.YEAR]], lambda v: plausible_year(v, max_year))
        .astype("Int16")
        .array
    )

    reasons = np.full(len(frame), None, dtype=object)
    reasons[pd.isna(columns[C.TITLE])] = "missing_title"
    bad_isbn = isbn_key < 0
    if bad_isbn.any():
        reasons[bad_isbn] = map_unique(raw_isbn[bad_isbn], isbn_rejection_reason).to_numpy()
    positions, kept = _reasons_given(reasons)

    def priority(rows: np.ndarray) -> list[np.ndarray]:
        filled = sum(~pd.isna(columns[col][rows]) for col in C.BOOK_COLUMNS)
        return [canonical[rows], np.asarray(filled)]

    rows, merged = _dedupe(kept, isbn_key[kept], priority)
    return _finish("books", parsed, columns, rows, positions, reasons, merged)


def clean_ratings(parsed: ParsedFile, layout: str) -> CleanFile:
    """Ratings: user id, ISBN and rating checked; ISBNs with no book row are kept (CF uses them).

    Duplicate (user, ISBN) pairs after normalisation are merged: an explicit rating
    (1-10) beats an implicit 0, then the row whose raw ISBN was already canonical wins,
    then the later line.
    """
    frame = parsed.frame
    raw_isbn = frame.iloc[:, 1]
    user_ids = map_unique_ints(frame.iloc[:, 0], parse_user_id)
    isbns, canonical, isbn_key = map_isbns(raw_isbn)
    ratings = map_unique_ints(frame.iloc[:, 2], parse_rating)

    reasons = np.full(len(frame), None, dtype=object)
    reasons[ratings < 0] = "invalid_rating"
    bad_isbn = isbn_key < 0
    if bad_isbn.any():
        reasons[bad_isbn] = map_unique(raw_isbn[bad_isbn], isbn_rejection_reason).to_numpy()
    reasons[user_ids < 0] = "invalid_user_id"
    positions, kept = _reasons_given(reasons)

    def priority(rows: np.ndarray) -> list[np.ndarray]:
        return [(ratings[rows] > 0).astype(np.int8), canonical[rows]]

    isbn_codes, isbn_numbers = pd.factorize(isbn_key[kept])
    key = user_ids[kept] * len(isbn_numbers) + isbn_codes
    rows, merged = _dedupe(kept, key, priority)
    columns = {
        C.USER_ID: user_ids,
        C.ISBN: isbns.to_numpy(),
        C.RATING: ratings.astype(np.int16),
    }
    return _finish("ratings", parsed, columns, rows, positions, reasons, merged)


def clean_users(parsed: ParsedFile, layout: str) -> CleanFile:
    """Users: id checked, location cleaned and split into city/region/country, ages 5..100.

    A user id that appears twice keeps its later line.
    """
    frame = parsed.frame
    user_ids = map_unique_ints(frame.iloc[:, 0], parse_user_id)
    reasons = np.full(len(frame), None, dtype=object)
    reasons[user_ids < 0] = "invalid_user_id"
    positions, kept = _reasons_given(reasons)
    codes, uniques = pd.factorize(frame.iloc[:, 1], use_na_sentinel=False)
    locations = np.asarray(uniques, dtype=object).tolist()
    columns: dict = {C.USER_ID: user_ids}
    for name, values in zip(
        (C.LOCATION, C.CITY, C.REGION, C.COUNTRY),
        (clean_texts(locations), *split_locations(locations)),
        strict=True,
    ):
        columns[name] = _objects(values)[codes]
    columns[C.AGE] = map_unique(frame.iloc[:, 2], plausible_age).astype("Int16").array
    rows, merged = _dedupe(kept, user_ids[kept])
    return _finish("users", parsed, columns, rows, positions, reasons, merged)


CLEANERS = {"books": clean_books, "ratings": clean_ratings, "users": clean_users}
