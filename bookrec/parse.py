"""Parsing: one Book-Crossing CSV file's text into records, with exact line spans.

The usual case (every record on its own line) is parsed by pandas' C parser in one pass;
otherwise the csv module goes record by record. Malformed records, records on faulty lines
(``textscan.LineFaults``) and records with an over-long field are set aside with their
line span and reason, for the quarantine.
"""

from __future__ import annotations

import csv
import io
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
import pandas as pd

from bookrec import cleaning, textscan
from bookrec.sources import DIALECTS, HEADERS, IngestFileError

_MAX_FIELD = 1 << 20
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
