"""Ingest: parse, clean and load the three Book-Crossing files into PostgreSQL.

Three steps that exchange small things so Prefect tasks can wrap them:

1. ``parse_file`` + ``clean_*``: every record of a file ends as a clean row, a merged
   duplicate, or a quarantined row with its line number, raw text and reason.
2. ``write_spool``: the clean rows as COPY-ready CSV, the quarantine as CSV, and the
   counts, in a spool folder.
3. ``pgload.stage_spool`` per file as soon as it is clean (COPY into a per-run stage
   schema, indexes built there for a first load), then ``pgload.commit_staged``: ONE
   transaction that swaps in or upserts every file (counting inserted / updated /
   unchanged) and stores the quarantine and an ``ingest_runs`` row. Until it commits,
   only the stage schema has changed, so a failure anywhere leaves the tables as they were.

Accounting: for each file rows_read = inserted + updated + unchanged + merged + quarantined.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from bookrec import cleaning, pgload, sources, textscan
from bookrec import columns as C
from bookrec.pgload import SpoolFile
from bookrec.sources import HEADERS, KINDS, IngestFileError, fetch, locate, read_source

DIALECTS = {
    "original": {"delimiter": ";", "quotechar": '"', "escapechar": "\\", "doublequote": False},
    "kaggle": {"delimiter": ",", "quotechar": '"', "doublequote": True},
}
TARGET_COLUMNS = pgload.TARGET_COLUMNS
_MAX_FIELD = 1 << 20
# At most one cleaning process per core, files cleaned in the order asked for. The books
# file lies on the critical path (longest to clean, then its trigram indexes), so the
# other files are cleaned at a lower CPU priority and never slow it down.
CRITICAL_KIND = "books"
BACKGROUND_NICENESS = 5
_CLEANING_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
_LONE_CR = re.compile(r"\r(?!\n)")


@dataclass
class ParsedFile:
    """The well-formed records of one CSV file, and the malformed ones with their reasons.

    ``frame`` has one object column per expected field; ``starts``/``ends`` give the
    physical line span (1-based) of each of its rows; ``bad`` holds (start, end, reason)
    for records that could not be parsed, had the wrong number of fields, lay on a faulty
    line or had a field over ``textscan.MAX_FIELD_BYTES``; ``escaped`` holds the raw
    bytes, escaped, of the bad records that contain bytes that are not text.
    """

    kind: str
    name: str
    text: str
    frame: pd.DataFrame
    starts: np.ndarray
    ends: np.ndarray
    bad: list[tuple[int, int, str]] = field(default_factory=list)
    escaped: dict[int, str] = field(default_factory=dict)  # start line -> escaped raw
    _lines: list[str] | None = None

    @property
    def rows_read(self) -> int:
        """Records seen in the file (well-formed or not), header excluded."""
        return len(self.frame) + len(self.bad)

    def raw(self, start: int, end: int) -> str:
        """The original text of lines start..end (1-based, inclusive)."""
        return self.raw_many([(start, end)])[0]

    def raw_many(self, spans: list[tuple[int, int]]) -> list[str]:
        """The original text of each (start, end) line span, in one forward scan of the text
        (a few quarantined rows must not cost a split of the whole file into lines)."""
        if self._lines is not None:
            return ["".join(self._lines[a - 1 : b]).rstrip("\r\n") for a, b in spans]
        wanted = sorted({line for a, b in spans for line in (a, b + 1)})
        text, offsets, line, position = self.text, {}, 1, 0
        for target in wanted:
            while line < target and position != -1:
                position = text.find("\n", position) + 1 or -1
                line += 1
            offsets[target] = len(text) if position == -1 else position
        return [text[offsets[a] : offsets[b + 1]].rstrip("\r\n") for a, b in spans]


@dataclass
class CleanFile:
    """A cleaned file: rows ready to load, the quarantine, and how many rows were merged."""

    kind: str
    name: str
    rows_read: int
    frame: pd.DataFrame
    quarantine: pd.DataFrame  # columns: line_number, raw, reason
    merged: int


def _norm_header(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _check_header(text: str, layout: str, kind: str, name: str) -> None:
    first = text[: text.find("\n") + 1 or len(text)]
    try:
        header = next(csv.reader([first], **DIALECTS[layout]))
    except (StopIteration, csv.Error) as exc:
        raise IngestFileError(name, f"cannot read the header ({exc})", line=1) from exc
    expected = HEADERS[kind]
    if [_norm_header(h) for h in header] != [_norm_header(h) for h in expected]:
        raise IngestFileError(
            name, f"wrong header for the {kind} file: expected {expected}, got {header}", line=1
        )


def parse_file(
    text: str, layout: str, kind: str, name: str, faults: textscan.LineFaults | None = None
) -> ParsedFile:
    """Split ``text`` into records with the layout's CSV dialect, checking the header.

    The usual case (every record on its own line) is parsed by pandas' C parser in one
    pass; otherwise (records spanning lines, blank lines, unparseable records) the csv
    module goes record by record, keeping exact line numbers and carrying on after
    errors. Records with the wrong number of fields go to ``bad``, and so do the records
    on the lines of ``faults`` and those with a field over the bound (``_apply_faults``).
    """
    _check_header(text, layout, kind, name)
    width = len(HEADERS[kind])
    parsed = _parse_fast(text, layout, kind, name, width) or _parse_slow(
        text, layout, kind, name, width
    )
    _apply_faults(parsed, faults or textscan.LineFaults(textscan.ENCODINGS[layout]))
    if parsed.rows_read == 0:
        raise IngestFileError(name, "has a header but no data rows")
    return parsed


def _physical_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _parse_fast(text: str, layout: str, kind: str, name: str, width: int) -> ParsedFile | None:
    """One C-level pass, or None when records do not map one-to-one onto lines."""
    names = [f"f{i}" for i in range(width + 1)]
    options = dict(DIALECTS[layout])
    if layout == "kaggle":
        options.pop("escapechar", None)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            header=None,
            skiprows=1,
            names=names,
            dtype=object,
            na_filter=False,
            keep_default_na=False,
            engine="c",
            skip_blank_lines=False,
            on_bad_lines="error",
            **options,
        )
    except (pd.errors.ParserError, csv.Error, ValueError):
        return None
    if _LONE_CR.search(text):  # a bare CR is a line break to pandas but not to us
        return None
    extra_lines = np.zeros(len(frame), dtype=np.int64)
    if len(frame) != _physical_lines(text) - 1:
        # Records with a quoted newline span several lines; count them from the fields.
        for col in frame.columns:
            values = frame[col]
            extra_lines += np.fromiter(
                (v.count("\n") if type(v) is str and "\n" in v else 0 for v in values.tolist()),
                dtype=np.int64,
                count=len(values),
            )
        if len(frame) + int(extra_lines.sum()) != _physical_lines(text) - 1:
            return None  # blank lines or something else pandas saw differently
    starts = 2 + np.concatenate(([0], np.cumsum(extra_lines)[:-1])) + np.arange(len(frame))
    ends = starts + extra_lines
    if extra_lines.any():
        widths = _widths_by_csv(text, width, layout)
        if widths is None or len(widths) != len(frame):
            return None
        frame["_width"] = widths
    else:
        frame["_width"] = _fast_widths(text, frame, width, layout)
    return _split_by_width(kind, name, text, frame, starts, ends, [], width, layout)


def _fast_widths(text: str, frame: pd.DataFrame, width: int, layout: str) -> np.ndarray:
    """Exact field counts for a one-record-per-line parse.

    pandas pads short records with '' and cannot tell 'a;b;c;' from 'a;b;c', so the
    rows that might be off (an empty last field, a surplus field, a line ending in the
    delimiter) are re-counted with the csv module; all others have ``width`` fields.
    """
    delimiter = DIALECTS[layout]["delimiter"]
    suspect = np.array((frame[f"f{width - 1}"] == "") | (frame[f"f{width}"] != ""), dtype=bool)
    newlines = 0
    position = 0
    for match in re.finditer(re.escape(delimiter) + r"\r?$", text, re.M):
        newlines += text.count("\n", position, match.start())
        position = match.start()
        if newlines >= 1:
            suspect[newlines - 1] = True
    widths = np.full(len(frame), width, dtype=np.int64)
    indices = np.flatnonzero(suspect)
    if len(indices):
        lines = io.StringIO(text, newline="\n").readlines()
        dialect = DIALECTS[layout]
        for i in indices.tolist():
            line = lines[i + 1]
            if len(line) >= csv.field_size_limit():  # an over-long line is counted, not an error
                csv.field_size_limit(len(line) + 1)
            widths[i] = len(next(csv.reader([line], **dialect), []))
    return widths


def _widths_by_csv(text: str, width: int, layout: str) -> np.ndarray | None:
    """Field counts of every record from the csv module (files with multi-line records)."""
    lines = io.StringIO(text, newline="\n").readlines()
    reader = csv.reader(iter(lines[1:]), **DIALECTS[layout])
    try:
        return np.fromiter((len(r) for r in reader if r), dtype=np.int64)
    except csv.Error:
        return None


def _parse_slow(text: str, layout: str, kind: str, name: str, width: int) -> ParsedFile:
    """Record by record with the csv module: exact line spans, errors kept with reasons."""
    csv.field_size_limit(max(_MAX_FIELD, len(text) + 1))  # over-long lines are faults, not errors
    lines = io.StringIO(text, newline="\n").readlines()
    reader = csv.reader(iter(lines), **DIALECTS[layout])
    next(reader)
    previous = reader.line_num
    records: list[list[str]] = []
    starts: list[int] = []
    ends: list[int] = []
    errors: list[tuple[int, int, str]] = []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append((previous + 1, max(reader.line_num, previous + 1), f"csv_error: {exc}"))
            previous = reader.line_num
            continue
        if record:
            records.append(record)
            starts.append(previous + 1)
            ends.append(reader.line_num)
        previous = reader.line_num
    widths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    padded = [
        r + [None] * (width + 1 - len(r)) if len(r) <= width else r[: width + 1] for r in records
    ]
    names = [f"f{i}" for i in range(width + 1)]
    frame = (
        pd.DataFrame(
            {
                n: pd.Series(list(map(itemgetter(j), padded)), dtype=object)
                for j, n in enumerate(names)
            }
        )
        if padded
        else pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    )
    # Remember true widths: a None in the extra column cannot tell 'width+1' from 'width+2'.
    frame["_width"] = widths
    parsed = _split_by_width(
        kind,
        name,
        text,
        frame,
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        errors,
        width,
        layout,
    )
    parsed._lines = lines
    return parsed


def _split_by_width(kind, name, text, frame, starts, ends, bad, width, layout) -> ParsedFile:
    """Keep records with exactly ``width`` fields (Kaggle's shifted books repaired first)."""
    cols = [f"f{i}" for i in range(width)]
    widths = frame.pop("_width").to_numpy()
    if kind == "books" and layout == "kaggle" and len(frame):
        candidates = np.flatnonzero((widths == width) & (frame[cols[-1]].to_numpy() == ""))
        for i in candidates.tolist():
            fixed = cleaning.unshift_kaggle_book(frame.iloc[i][cols].tolist())
            if fixed is not None:
                frame.iloc[i, : len(cols)] = fixed
    ok = widths == width
    blank = widths == 0  # an empty line is no record: skipped, not counted
    bad = list(bad) + [
        (int(starts[i]), int(ends[i]), f"wrong_field_count: expected {width}, got {widths[i]}")
        for i in np.flatnonzero(~ok & ~blank).tolist()
    ]
    good = frame.loc[ok, cols].reset_index(drop=True)
    return ParsedFile(kind, name, text, good, starts[ok], ends[ok], bad)


def _covering(starts: np.ndarray, ends: np.ndarray, lines: list[int]) -> list[tuple[int, int]]:
    """(line, record position) for each of the sorted ``lines`` that a record spans."""
    if not lines or not len(starts):
        return []
    wanted = np.asarray(lines, dtype=np.int64)
    index = np.searchsorted(starts, wanted, side="right") - 1
    hit = (index >= 0) & (ends[np.maximum(index, 0)] >= wanted)
    return list(zip(wanted[hit].tolist(), index[hit].tolist(), strict=True))


def _long_field(values: list, kind: str, encoding: str) -> str | None:
    """The reason when one of ``values`` is over ``textscan.MAX_FIELD_BYTES`` encoded."""
    limit = textscan.MAX_FIELD_BYTES
    for name, value in zip(HEADERS[kind], values, strict=False):
        if isinstance(value, str) and len(value) * 4 > limit:
            size = len(value.encode(encoding, "replace"))
            if size > limit:
                return f"field_too_long: {name} has {size:,} bytes (limit {limit:,})"
    return None


def _apply_faults(parsed: ParsedFile, faults: textscan.LineFaults) -> None:
    """Move to ``bad`` the records on a faulty line (NUL, invalid encoding, line too long)
    and those with a field over the bound; a malformed record on a faulty line takes the
    line's reason. Only records on long lines or spanning lines have their fields measured,
    so clean files cost two vector operations."""
    starts, ends = parsed.starts, parsed.ends
    bad_lines = sorted(faults.bad)
    reasons: dict[int, str] = {}
    for line, i in _covering(starts, ends, bad_lines):
        reasons.setdefault(i, faults.bad[line])
    measure = {i for _, i in _covering(starts, ends, sorted(faults.long))}
    measure.update(np.flatnonzero(ends > starts).tolist())
    for i in sorted(measure - reasons.keys()):
        reason = _long_field(parsed.frame.iloc[i].tolist(), parsed.kind, faults.encoding)
        if reason is not None:
            reasons[i] = reason
    bad = []
    for start, end, reason in parsed.bad:
        inside = bad_lines[bisect_left(bad_lines, start) : bisect_right(bad_lines, end)]
        bad.append((start, end, faults.bad[inside[0]] if inside else reason))
    if reasons:
        rows = sorted(reasons)
        bad += [(int(starts[i]), int(ends[i]), reasons[i]) for i in rows]
        keep = np.ones(len(starts), dtype=bool)
        keep[rows] = False
        parsed.frame = parsed.frame[keep].reset_index(drop=True)
        parsed.starts, parsed.ends = starts[keep], ends[keep]
    parsed.bad = sorted(bad)
    escaped_lines = sorted(faults.escaped)
    spans = [
        (start, end)
        for start, end, _ in parsed.bad
        if escaped_lines[bisect_left(escaped_lines, start) : bisect_right(escaped_lines, end)]
    ]
    for (start, _), text in zip(spans, parsed.raw_many(spans), strict=True):
        pieces = [
            faults.escaped.get(start + k) or textscan.escape_text(piece)
            for k, piece in enumerate(text.split("\n"))
        ]
        parsed.escaped[start] = "\n".join(pieces).rstrip("\r\n")


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


def _reason_code(reason: str) -> str:
    return reason.split(":", 1)[0]


def _dedupe(frame: pd.DataFrame, keys: list[str], priority: list[str]) -> tuple[pd.DataFrame, int]:
    """Keep one row per key: the one that sorts last by ``priority`` (documented per file)."""
    dup = frame.duplicated(keys, keep=False)
    if not dup.any():
        return frame, 0
    ordered = frame[dup].sort_values(keys + priority, kind="stable")
    losers = ordered.index[ordered.duplicated(keys, keep="last")]
    return frame.drop(index=losers), len(losers)


def _named(parsed: ParsedFile, names: list[str]) -> pd.DataFrame:
    """The parsed rows with their column names and their row position in ``parsed``."""
    df = parsed.frame.copy()
    df.columns = names
    df["_pos"] = np.arange(len(df))
    return df


def _reject(df: pd.DataFrame, reasons: pd.Series) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Split off the rows that have a reason; return (kept rows, rejected positions, reasons)."""
    rejected = reasons.notna().to_numpy()
    positions = df["_pos"].to_numpy()[rejected]
    return df[~rejected].copy(), positions, reasons[rejected].tolist()


def _finish(kind, parsed, df, positions, reasons, merged) -> CleanFile:
    return CleanFile(
        kind,
        parsed.name,
        parsed.rows_read,
        df[TARGET_COLUMNS[kind]].reset_index(drop=True),
        _quarantine_frame(parsed, positions, reasons),
        merged,
    )


def _urls(series: pd.Series) -> pd.Series:
    """Image URLs: stripped, empty or NA-like to None (no other text repair applies)."""
    values = [
        None if not isinstance(v, str) or (len(v) <= 7 and cleaning.is_na(v)) else v.strip() or None
        for v in series.tolist()
    ]
    return pd.Series(values, index=series.index, dtype=object)


def clean_books(parsed: ParsedFile, layout: str) -> CleanFile:
    """Books: ISBN normalised and checked, text repaired, implausible years to NULL.

    Duplicate ISBNs after normalisation ('042511774x' and '042511774X') are merged:
    the row whose raw key was already canonical wins, then the one with more fields
    filled, then the later line.
    """
    df = _named(parsed, C.BOOK_COLUMNS)
    raw_isbn = df[C.ISBN]
    df[C.ISBN] = cleaning.map_unique_isbns(raw_isbn)
    for col in (C.TITLE, C.AUTHOR, C.PUBLISHER):
        if layout == "kaggle":
            df[col] = cleaning.map_unique(df[col], cleaning.repair_kaggle_escapes)
        df[col] = cleaning.map_unique(df[col], cleaning.clean_text)
    for col in (C.IMAGE_S, C.IMAGE_M, C.IMAGE_L):
        df[col] = _urls(df[col])
    max_year = cleaning.max_plausible_year()
    df[C.YEAR] = cleaning.map_unique(
        df[C.YEAR], lambda v: cleaning.plausible_year(v, max_year)
    ).astype("Int16")

    reasons = pd.Series(None, index=df.index, dtype=object)
    reasons[df[C.TITLE].isna()] = "missing_title"
    bad_isbn = df[C.ISBN].isna()
    reasons[bad_isbn] = cleaning.map_unique(raw_isbn[bad_isbn], cleaning.isbn_rejection_reason)
    canonical = (raw_isbn.str.strip() == df[C.ISBN]).astype(np.int8)
    df, positions, why = _reject(df, reasons)
    df["_canonical"] = canonical[df.index]
    df["_filled"] = df[C.BOOK_COLUMNS].notna().sum(axis=1)
    df, merged = _dedupe(df, [C.ISBN], ["_canonical", "_filled", "_pos"])
    return _finish("books", parsed, df, positions, why, merged)


def clean_ratings(parsed: ParsedFile, layout: str) -> CleanFile:
    """Ratings: user id, ISBN and rating checked; ISBNs with no book row are kept (CF uses them).

    Duplicate (user, ISBN) pairs after normalisation are merged: an explicit rating
    (1-10) beats an implicit 0, then the row whose raw ISBN was already canonical wins,
    then the later line.
    """
    df = _named(parsed, C.RATING_COLUMNS)
    raw_isbn = df[C.ISBN]
    df[C.USER_ID] = cleaning.map_unique(df[C.USER_ID], cleaning.parse_user_id)
    df[C.ISBN] = cleaning.map_unique_isbns(raw_isbn)
    df[C.RATING] = cleaning.map_unique(df[C.RATING], cleaning.parse_rating)

    reasons = pd.Series(None, index=df.index, dtype=object)
    reasons[df[C.RATING].isna()] = "invalid_rating"
    bad_isbn = df[C.ISBN].isna()
    reasons[bad_isbn] = cleaning.map_unique(raw_isbn[bad_isbn], cleaning.isbn_rejection_reason)
    reasons[df[C.USER_ID].isna()] = "invalid_user_id"
    canonical = (raw_isbn == df[C.ISBN]).astype(np.int8)
    df, positions, why = _reject(df, reasons)
    df[C.USER_ID] = df[C.USER_ID].astype("int64")
    df[C.RATING] = df[C.RATING].astype("int16")
    df["_explicit"] = (df[C.RATING] > 0).astype(np.int8)
    df["_canonical"] = canonical[df.index]
    df, merged = _dedupe(df, [C.USER_ID, C.ISBN], ["_explicit", "_canonical", "_pos"])
    return _finish("ratings", parsed, df, positions, why, merged)


def clean_users(parsed: ParsedFile, layout: str) -> CleanFile:
    """Users: id checked, location cleaned and split into city/region/country, ages 5..100.

    A user id that appears twice keeps its later line.
    """
    df = _named(parsed, [C.USER_ID, C.LOCATION, C.AGE])
    df[C.USER_ID] = cleaning.map_unique(df[C.USER_ID], cleaning.parse_user_id)
    reasons = pd.Series(None, index=df.index, dtype=object)
    reasons[df[C.USER_ID].isna()] = "invalid_user_id"
    df, positions, why = _reject(df, reasons)
    df[C.USER_ID] = df[C.USER_ID].astype("int64")
    locations = df[C.LOCATION]
    df[C.LOCATION] = cleaning.map_unique(locations, cleaning.clean_text)
    parts = cleaning.map_unique(locations, cleaning.split_location)
    df[C.CITY] = parts.map(itemgetter(0))
    df[C.REGION] = parts.map(itemgetter(1))
    df[C.COUNTRY] = parts.map(itemgetter(2))
    df[C.AGE] = cleaning.map_unique(df[C.AGE], cleaning.plausible_age).astype("Int16")
    df, merged = _dedupe(df, [C.USER_ID], ["_pos"])
    return _finish("users", parsed, df, positions, why, merged)


CLEANERS = {"books": clean_books, "ratings": clean_ratings, "users": clean_users}


def clean_path(path: Path, kind: str, layout: str, display: str) -> CleanFile:
    """Read, parse and clean one local file (pure apart from reading it)."""
    text, faults = read_source(path, layout, display)
    return CLEANERS[kind](parse_file(text, layout, kind, display, faults), layout)


def clean_to_spool(path: Path, kind: str, layout: str, display: str, spool_dir: Path) -> SpoolFile:
    """Read, parse and clean one file and write its spool: the whole CPU-bound half of ingest.

    The spool records the file's modification time (``sources.fetch`` gives a downloaded
    S3 object its LastModified): it decides whether a rating in the file replaces one the
    API wrote (``pgload.commit_staged``)."""
    spool = write_spool(clean_path(path, kind, layout, display), spool_dir)
    spool.modified_at = sources.modified_at(path)
    return spool


def clean_to_spool_in_subprocess(
    path: Path, kind: str, layout: str, display: str, spool_dir: Path
) -> SpoolFile:
    """``clean_to_spool`` in a forked process, so that files are cleaned on several cores.

    Cleaning is GIL-bound Python and pandas; a fork shares the already imported modules,
    so the extra process costs milliseconds. Errors (an ``IngestFileError`` naming the
    file and line) are raised here as they were there.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    niceness = 0 if kind == CRITICAL_KIND else BACKGROUND_NICENESS
    with (
        _CLEANING_SLOTS,
        ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=os.nice, initargs=(niceness,)
        ) as pool,
    ):
        return pool.submit(clean_to_spool, path, kind, layout, display, spool_dir).result()


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as header-less CSV for COPY; missing values become empty fields (NULL)."""
    columns = []
    for name in frame.columns:
        col = frame[name]
        values = col.astype(object).where(col.notna(), None) if col.hasnans else col.astype(object)
        columns.append(values.tolist())
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(zip(*columns, strict=True))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_NULL = "\\N"


def _copy_text_column(col: pd.Series) -> list[str]:
    """One column as PostgreSQL COPY text fields: backslash, tab, newline and carriage
    return escaped, missing values as ``\\N``.

    Escaping is per column: one C-level join tells whether any value needs it at all
    (almost never), so the usual cost is a ``tolist``. Numbers need no escaping.
    """
    missing = col.isna().to_numpy()
    has_missing = bool(missing.any())
    if not pd.api.types.is_numeric_dtype(col.dtype):  # object or string dtypes
        values = col.tolist()
        if has_missing:  # placeholders until the escaping is done, then \N
            values = ["" if m else v for v, m in zip(values, missing.tolist(), strict=True)]
        values = [v if type(v) is str else str(v) for v in values]
        joined = "".join(values)
        if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
            values = [v.translate(_COPY_ESCAPES) for v in values]
    else:
        values = (
            col.astype(object).astype(str).tolist() if has_missing else col.astype(str).tolist()
        )
    if has_missing:
        values = [_COPY_NULL if m else v for v, m in zip(values, missing.tolist(), strict=True)]
    return values


def _write_copy_text(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` in PostgreSQL's COPY text format (tab-separated, ``\\N`` for NULL):
    lines are joined in C, twice as fast as the csv module's per-field quoting checks."""
    columns = [_copy_text_column(frame[name]) for name in frame.columns]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if len(frame):
            fh.write("\n".join(map("\t".join, zip(*columns, strict=True))))
            fh.write("\n")


def write_spool(clean: CleanFile, spool_dir: Path) -> SpoolFile:
    """Write the clean rows and the quarantine of one file as CSV into ``spool_dir``."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    data_path = spool_dir / f"{clean.kind}.copy"
    quarantine_path = spool_dir / f"{clean.kind}.quarantine.csv"
    _write_copy_text(data_path, clean.frame)
    _write_csv(quarantine_path, clean.quarantine)
    reasons = Counter(_reason_code(r) for r in clean.quarantine["reason"])
    return SpoolFile(
        kind=clean.kind,
        name=clean.name,
        rows_read=clean.rows_read,
        rows_clean=len(clean.frame),
        merged=clean.merged,
        quarantined=len(clean.quarantine),
        reasons=dict(sorted(reasons.items())),
        data_path=str(data_path),
        quarantine_path=str(quarantine_path),
    )


def public_report(report: dict) -> dict:
    """The report as ``bookrec ingest --json`` prints it: files and duration only."""
    return {"files": report["files"], "duration_s": report["duration_s"]}


def report_markdown(report: dict) -> str:
    """A markdown summary of an ingest report (for the Prefect UI)."""
    lines = [
        f"# Ingest of `{report.get('source', '?')}` ({report.get('layout', '?')} layout)",
        "",
        f"Duration: {report['duration_s']:.1f} s",
        "",
        "| file | read | inserted | updated | unchanged | merged | quarantined |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, c in report["files"].items():
        lines.append(
            f"| {kind} | {c['rows_read']:,} | {c['inserted']:,} | {c['updated']:,} | "
            f"{c['unchanged']:,} | {c['merged']:,} | {c['quarantined']:,} |"
        )
    reasons = [(k, r, n) for k, c in report["files"].items() for r, n in c["reasons"].items()]
    if reasons:
        lines += ["", "| file | quarantine reason | rows |", "|---|---|---:|"]
        lines += [f"| {k} | {r} | {n:,} |" for k, r, n in reasons]
    return "\n".join(lines)


def report_table(report: dict) -> list[dict]:
    """One row per file, for a Prefect table artifact."""
    return [
        {
            "file": kind,
            **{k: v for k, v in counts.items() if k != "reasons"},
            "reasons": ", ".join(f"{r}={n}" for r, n in counts["reasons"].items()),
        }
        for kind, counts in report["files"].items()
    ]


def run_ingest(
    engine: Engine, settings, source: str, layout: str = "auto", spool_dir: Path | None = None
) -> dict:
    """The whole ingest without Prefect (benchmarks and scripts): locate, then per file
    clean and stage as soon as it is clean, then the one commit."""
    import tempfile

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    resolved, files = locate(source, layout, settings)
    schema = pgload.create_stage(engine)
    try:
        with tempfile.TemporaryDirectory(dir=spool_dir) as tmp:
            paths = {kind: fetch(files[kind], Path(tmp) / "raw", settings) for kind in KINDS}

            def clean_and_stage(kind: str) -> tuple[SpoolFile, pgload.StagedFile]:
                spool = clean_to_spool_in_subprocess(
                    paths[kind], kind, resolved, files[kind].uri, Path(tmp)
                )
                return spool, pgload.stage_spool(engine, kind, spool.data_path, schema)

            with ThreadPoolExecutor(max_workers=len(KINDS)) as threads:
                futures = [threads.submit(clean_and_stage, kind) for kind in KINDS]
                done = [f.result() for f in futures]
            report = pgload.commit_staged(
                engine,
                [staged for _, staged in done],
                [spool for spool, _ in done],
                source=source,
                layout=resolved,
                started_at=started,
            )
    finally:
        pgload.drop_stage(engine, schema)
    report["duration_s"] = round(time.perf_counter() - t0, 3)
    return report


def spool_to_dict(spool: SpoolFile) -> dict:
    """JSON-able form of a SpoolFile (what tasks hand each other)."""
    return asdict(spool)
