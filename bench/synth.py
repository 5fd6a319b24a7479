"""Write a synthetic Book-Crossing at a scale factor, for the scale benchmarks.

    .venv/bin/python -m bench.synth --scale 10 --out /tmp/bx10
    .venv/bin/python -m bench.synth --scale 3 --layout kaggle --out /tmp/bx3k

The output is SCALE copies of the real files (from ``--source``, the full data by default),
each copy with its own readers and its own books, written in the same layout and encoding
as the input, gzip-compressed. What it keeps, and how:

- **Reader degrees**: every real reader appears once per copy with all of their ratings
  (a new User-ID: ``id + copy * 1,000,000``), so the distribution is the real one exactly.
- **Book degrees**: every real ISBN appears once per copy (new digits, same shape). A share
  ``--cross`` of each copy's ratings points to the same book in another copy (chosen by a
  seeded hash of reader and book), so the copies form one connected catalogue while each
  book's expected degree stays the real one.
- **Implicit zeros and rating values**: copied row by row, so the shares are exact.
- **Dirty rows**: rows are copied byte for byte and only the key is rewritten, keeping its
  shape: the case of a check digit ``x``, junk and separators around it, an invalid check
  digit (by the same offset), ASINs, wrong lengths, ISBN-13s, escaped quotes. Two raw keys
  that normalise to one ISBN still do so in every copy, so duplicates stay duplicates, and
  ratings of ISBNs without a book row stay without one. Text fields (mojibake, entities,
  bad years and ages, CRLF and ``;`` inside quoted fields) are copied as they are.

Seeded (``--seed``): the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from bookrec.sources import DIALECTS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "book-crossing"
USER_STRIDE = 1_000_000
BODY_SPACE = 10**9
# Step between copies in the 9-digit ISBN body space: large and odd, so copies spread out.
BODY_STEP = 387_420_489
# A leading ISBN-13 or ISBN-10 followed by junk that is not part of it (as the cleaner reads it).
_LEADING = re.compile(r"\s*[\"'\\]*(97[89]\d{10}|\d{9}[\dXx])(?![0-9A-Za-z])")

FILES = {
    "original": {
        "books": "BX-Books.csv.gz",
        "ratings": "BX-Book-Ratings.csv.gz",
        "users": "BX-Users.csv.gz",
    },
    "kaggle": {"books": "Books.csv.gz", "ratings": "Ratings.csv.gz", "users": "Users.csv.gz"},
}

def _isbn10_check(body: str) -> int:
    """The ISBN-10 check value (0..10) of nine digits."""
    total = sum((10 - i) * int(d) for i, d in enumerate(body))
    return (11 - total % 11) % 11


def _ean13_check(first12: str) -> int:
    """The EAN-13 check digit of twelve digits."""
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


class KeyMapper:
    """Rewrites a raw ISBN string for a copy, keeping its shape and its normal form's identity.

    Valid-looking ISBN-10 and 978/979 ISBN-13 keys get a new 9-digit body that no other key
    of any copy uses (so copies never merge two books) and their check digit moved by the
    same offset as in the input (a valid key stays valid, an invalid one stays invalid).
    Anything else has its digits rotated by the copy number, so malformed stays malformed.
    """

    def __init__(self, bodies: set[int], copies: int, seed: int):
        self.copies = copies
        used = set(bodies)
        self.body_map: list[dict[int, int]] = [{b: b for b in bodies}]
        ordered = sorted(bodies)
        for k in range(1, copies):
            mapping: dict[int, int] = {}
            offset = (k * BODY_STEP + seed * 7919) % BODY_SPACE
            for body in ordered:
                new = (body + offset) % BODY_SPACE
                while new in used:
                    new = (new + 1) % BODY_SPACE
                used.add(new)
                mapping[body] = new
            self.body_map.append(mapping)
        self._cache: dict[tuple[bytes, int], bytes] = {}

    @staticmethod
    def _key_span(text: str) -> tuple[list[int], str]:
        """Positions and upper-case text of the ISBN-like characters of a raw key: a leading
        ISBN before junk ("3518365479<90"), else every letter and digit."""
        match = _LEADING.match(text)
        if match:
            start = match.start(1)
            return list(range(start, match.end(1))), match.group(1).upper()
        alnum = [i for i, ch in enumerate(text) if ch.isascii() and ch.isalnum()]
        return alnum, "".join(text[i] for i in alnum).upper()

    @classmethod
    def body_of(cls, raw: bytes) -> int | None:
        """The 9-digit body of a raw key that looks like an ISBN-10 or 978/979 ISBN-13."""
        _, norm = cls._key_span(raw.decode("latin-1"))
        if len(norm) == 10 and norm[:9].isdigit() and (norm[9:].isdigit() or norm[9:] == "X"):
            return int(norm[:9])
        if len(norm) == 13 and norm.isdigit() and norm[:3] in ("978", "979"):
            return int(norm[3:12])
        return None

    def __call__(self, raw: bytes, copy: int) -> bytes:
        if copy == 0:
            return raw
        key = (raw, copy)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._rewrite(raw, copy)
        return found

    def _rewrite(self, raw: bytes, copy: int) -> bytes:
        text = raw.decode("latin-1")
        positions, norm = self._key_span(text)
        body = self.body_of(raw)
        chars = list(text)
        if body is None:
            # digits rotate, but an ASIN keeps its "B0" prefix so it is still an ASIN
            keep = 2 if text.strip().upper().startswith("B0") else 0
            for i in positions[keep:]:
                if chars[i].isdigit():
                    chars[i] = str((int(chars[i]) + copy) % 10)
            return "".join(chars).encode("latin-1")
        new_body = f"{self.body_map[copy][body]:09d}"
        if len(norm) == 10:
            old_check = 10 if norm[9] == "X" else int(norm[9])
            delta = (old_check - _isbn10_check(norm[:9])) % 11
            check = (_isbn10_check(new_body) + delta) % 11
            new_norm = new_body + ("X" if check == 10 else str(check))
        else:
            delta = (int(norm[12]) - _ean13_check(norm[:12])) % 10
            first12 = norm[:3] + new_body
            new_norm = first12 + str((_ean13_check(first12) + delta) % 10)
        for pos, ch in zip(positions, new_norm, strict=True):
            chars[pos] = ch.lower() if chars[pos].islower() else ch
        return "".join(chars).encode("latin-1")


def _records(path: Path) -> Iterator[bytes]:
    """The lines of a gzip file, line endings kept (a quoted CRLF continues a record)."""
    with gzip.open(path, "rb") as handle:
        yield from handle


def _separator(layout: str) -> bytes:
    """The layout's field separator."""
    return DIALECTS[layout]["delimiter"].encode()


def _field_pattern(layout: str) -> bytes:
    """One field as written in the layout's dialect (``bookrec.sources.DIALECTS``). With an
    escape character (the original files) every field is quoted and the group is its inner
    text; with doubled quotes (Kaggle's) a field is quoted only where needed and the group
    is the field as written."""
    dialect = DIALECTS[layout]
    quote = re.escape(dialect["quotechar"].encode())
    if dialect.get("escapechar"):
        escape = re.escape(dialect["escapechar"].encode())
        return quote + rb"((?:[^" + quote + escape + rb"]|" + escape + rb".)*)" + quote
    sep = re.escape(_separator(layout))
    return (rb"(" + quote + rb"(?:[^" + quote + rb"]|" + quote + quote + rb")*" + quote
            + rb"|[^" + sep + quote + rb"\r\n]*)")


def _first_field(layout: str, n: int) -> re.Pattern[bytes]:
    """A pattern for the first ``n`` fields at the start of a record."""
    sep = re.escape(_separator(layout))
    return re.compile(rb"^" + sep.join([_field_pattern(layout)] * n) + sep)


def _unquote(layout: str, value: bytes) -> tuple[bytes, bytes, bytes]:
    """(before, inner, after) of a field as matched, so the inner text can be rewritten."""
    if not DIALECTS[layout].get("escapechar") and value.startswith(b'"') and value.endswith(b'"'):
        return b'"', value[1:-1], b'"'
    return b"", value, b""


def _field(layout: str, pre: bytes, inner: bytes, post: bytes) -> bytes:
    """A field written back: quoted in the original layout, as it was in Kaggle's."""
    quote = DIALECTS[layout]["quotechar"].encode() if DIALECTS[layout].get("escapechar") else b""
    return quote + pre + inner + post + quote


def _rewrite_file(
    source: Path, out: Path, layout: str, kind: str, scale: int, fields: int,
    rewrite: Callable[[int, re.Match[bytes], bytes], bytes | None],
) -> int:
    """Write ``kind``'s header, then ``scale`` copies of its records; returns the rows written.

    ``rewrite(copy, match, line)`` gets each record whose first ``fields`` fields match and
    returns the new line, or None to copy the line as it is (like a line that does not
    match: a continuation line of a quoted CRLF, a malformed record).
    """
    pattern = _first_field(layout, fields)
    rows = 0
    # mtime=0 so the same arguments write the same bytes.
    with gzip.GzipFile(out / FILES[layout][kind], "wb", compresslevel=1, mtime=0) as dst:
        lines = list(_records(source / FILES[layout][kind]))
        dst.write(lines[0])
        for copy in range(scale):
            for line in lines[1:]:
                match = pattern.match(line)
                new = rewrite(copy, match, line) if match else None
                if new is None:
                    dst.write(line)
                else:
                    dst.write(new)
                    rows += 1
    return rows


def collect_bodies(source: Path, layout: str) -> set[int]:
    """Every ISBN body in the books and ratings files."""
    bodies: set[int] = set()
    books = _first_field(layout, 1)
    ratings = _first_field(layout, 2)
    for kind, pattern, group in (("books", books, 1), ("ratings", ratings, 2)):
        for line in _records(source / FILES[layout][kind]):
            match = pattern.match(line)
            if match:
                body = KeyMapper.body_of(match.group(group))
                if body is not None:
                    bodies.add(body)
    return bodies


def _copy_of_rating(
    user: int, body_key: bytes, copy: int, copies: int, cross: float, seed: int
) -> int:
    """The copy whose book a rating points to: its own, or for a seeded share another one."""
    if copies == 1 or cross <= 0:
        return copy
    h = zlib.crc32(body_key, (user * 2654435761 + seed) & 0xFFFFFFFF)
    if (h % 10_000) >= cross * 10_000:
        return copy
    other = (h >> 14) % (copies - 1)
    return other if other < copy else other + 1


def write(source: Path, out: Path, layout: str, scale: int, cross: float, seed: int) -> dict:
    """Write the three scaled files into ``out``; return row counts per file."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mapper = KeyMapper(collect_bodies(source, layout), scale, seed)
    sep = _separator(layout)

    def book(copy: int, match: re.Match[bytes], line: bytes) -> bytes:
        """The key is the first field; image URLs carry the canonical key too."""
        pre, inner, post = _unquote(layout, match.group(1))
        new = mapper(inner, copy)
        rest = line[match.end() :]
        if copy and new != inner:
            old_norm = re.sub(rb"[^0-9A-Za-z]", b"", inner).upper()
            new_norm = re.sub(rb"[^0-9A-Za-z]", b"", new).upper()
            if len(old_norm) == 10:
                rest = rest.replace(b"/P/" + old_norm + b".", b"/P/" + new_norm + b".")
        return _field(layout, pre, new, post) + sep + rest

    def user(copy: int, match: re.Match[bytes], line: bytes) -> bytes | None:
        """A new id per copy."""
        pre, inner, post = _unquote(layout, match.group(1))
        if not inner.isdigit():
            return None
        new_id = str(int(inner) + copy * USER_STRIDE).encode()
        return _field(layout, pre, new_id, post) + sep + line[match.end() :]

    def rating(copy: int, match: re.Match[bytes], line: bytes) -> bytes | None:
        """A new reader id per copy; the book from this copy or, for a share, another one."""
        if not match.group(1).strip(b'"').isdigit():
            return None
        reader = int(match.group(1).strip(b'"'))
        pre, inner, post = _unquote(layout, match.group(2))
        # the ISBN body as the cleaner reads it: duplicates of one ISBN (ISBN-13 and -10,
        # junk after the key) go to one copy together
        body = KeyMapper.body_of(inner)
        norm = (
            str(body).encode()
            if body is not None
            else KeyMapper._key_span(inner.decode("latin-1"))[1].encode()
        )
        target = _copy_of_rating(reader, norm, copy, scale, cross, seed)
        new_user = str(reader + copy * USER_STRIDE).encode()
        return (_field(layout, b"", new_user, b"") + sep
                + _field(layout, pre, mapper(inner, target), post) + sep + line[match.end() :])

    counts = {
        "books": _rewrite_file(source, out, layout, "books", scale, 1, book),
        "users": _rewrite_file(source, out, layout, "users", scale, 1, user),
        "ratings": _rewrite_file(source, out, layout, "ratings", scale, 2, rating),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return counts


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the files, print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, required=True, help="number of copies (>= 1)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--layout", choices=sorted(FILES), default="original")
    parser.add_argument(
        "--source", type=Path, help="folder of the real files (default: shared data)"
    )
    parser.add_argument("--cross", type=float, default=0.3, help="share of ratings to another copy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be >= 1")
    source = args.source or SHARED / args.layout
    counts = write(source, args.out, args.layout, args.scale, args.cross, args.seed)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
