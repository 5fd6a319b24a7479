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
    _line_starts: np.ndarray | None = None

    @property
    def rows_read(self) -> int:
        """Records seen in the file (well-formed or not), header excluded."""
        return len(self.frame) + len(self.bad)

    def raw(self, start: int, end: int) -> str:
        """The original text of lines start..end (1-based, inclusive)."""
        return self.raw_many([(start, end)])[0]

    def raw_many(self, spans: list[tuple[int, int]]) -> list[str]:
        """The original text of each (start, end) line span (1-based, inclusive)."""
        if not spans:
            return []
        if self._lines is not None:
            return ["".join(self._lines[a - 1 : b]).rstrip("\r\n") for a, b in spans]
        starts = self.line_starts()
        last = len(starts)
        text = self.text

        def offset(line: int) -> int:  # where line ``line`` starts; the end for lines past it
            return int(starts[line - 1]) if line <= last else len(text)

        return [text[offset(a) : offset(b + 1)].rstrip("\r\n") for a, b in spans]

    def line_starts(self) -> np.ndarray:
        """Where each physical line starts in ``text`` (entry 0: line 1), found by numpy in
        one pass: the text encoded one byte per character (latin-1, anything else as '?')."""
        if self._line_starts is None:
            data = np.frombuffer(self.text.encode("latin-1", "replace"), dtype=np.uint8)
            self._line_starts = np.concatenate(([0], np.flatnonzero(data == 10) + 1))
        return self._line_starts


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
        frame = pd.read_csv(  # bytes: the parser's own input, no copy into a StringIO
            io.BytesIO(text.encode("utf-8", "surrogatepass")),
            encoding="utf-8",
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
            extra_lines += _newlines_per_value(frame[col].tolist())
        if len(frame) + int(extra_lines.sum()) != _physical_lines(text) - 1:
            return None  # blank lines or something else pandas saw differently
    starts = 2 + np.concatenate(([0], np.cumsum(extra_lines)[:-1])) + np.arange(len(frame))
    ends = starts + extra_lines
    widths = _fast_widths(text, frame, width, layout, starts, ends)
    if widths is None:
        return None  # the csv module reads a multi-line record differently
    frame["_width"] = widths
    return _split_by_width(kind, name, text, frame, starts, ends, [], width, layout)


def _newlines_per_value(values: list) -> np.ndarray:
    """How many newlines each value holds: one C-level join and a search for the few
    newlines there are, instead of a Python step per value."""
    count = np.zeros(len(values), dtype=np.int64)
    joined = "\x00".join(values) if set(map(type, values)) <= {str} else None
    if joined is None or joined.count("\x00") != len(values) - 1:  # not text, or NULs
        for i, v in enumerate(values):
            if type(v) is str and "\n" in v:
                count[i] = v.count("\n")
        return count
    if "\n" not in joined:
        return count
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    positions = np.fromiter((m.start() for m in re.finditer("\n", joined)), dtype=np.int64)
    np.add.at(count, np.searchsorted(starts, positions, side="right") - 1, 1)
    return count


def _fast_widths(
    text: str, frame: pd.DataFrame, width: int, layout: str, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray | None:
    """Exact field counts for a parse whose records span the lines ``starts``..``ends``.

    pandas pads short records with '' and cannot tell 'a;b;c;' from 'a;b;c', so the
    records that might be off (an empty last field, a surplus field, a line ending in the
    delimiter) are re-counted with the csv module; all others have ``width`` fields.
    Records on several lines are re-read too, and must be one record of exactly those
    lines to the csv module as well: None when one is not (the caller then goes record by
    record).
    """
    delimiter = DIALECTS[layout]["delimiter"]
    suspect = np.array((frame[f"f{width - 1}"] == "") | (frame[f"f{width}"] != ""), dtype=bool)
    multi = ends > starts
    suspect |= multi
    newlines = 0
    position = 0
    for match in re.finditer(re.escape(delimiter) + r"\r?$", text, re.M):
        newlines += text.count("\n", position, match.start())
        position = match.start()
        line = newlines + 1  # 1-based; line 1 is the header
        record = int(np.searchsorted(starts, line, side="right")) - 1
        if record >= 0 and ends[record] >= line:
            suspect[record] = True
    widths = np.full(len(frame), width, dtype=np.int64)
    indices = np.flatnonzero(suspect)
    if len(indices):
        lines = io.StringIO(text, newline="\n").readlines()
        dialect = DIALECTS[layout]
        for i in indices.tolist():
            record_lines = lines[starts[i] - 1 : ends[i]]
            size = sum(map(len, record_lines))
            if size >= csv.field_size_limit():  # an over-long line is counted, not an error
                csv.field_size_limit(size + 1)
            reader = csv.reader(record_lines, **dialect)
            if not multi[i]:
                widths[i] = len(next(reader, []))
                continue
            try:
                fields = next(reader, [])
                if reader.line_num != len(record_lines) or next(reader, None) is not None:
                    return None
            except csv.Error:
                return None
            widths[i] = len(fields)
    return widths


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
