"""Byte-level checks of an input file: is it text at all, and which lines are not.

A file that is not text as a whole (a binary signature, or mostly non-text bytes in its
first block) is refused. Otherwise each physical line with a NUL byte, a byte sequence
invalid in the file's encoding or a length over ``MAX_LINE_BYTES`` is a fault of that
line only: its record is quarantined and the rest of the file loads. Lines over
``MAX_FIELD_BYTES`` are remembered so that the parser can check their fields.

Checks cost one pass in C on clean data (``bytes.find`` for NUL, the strict decode that
reading needs anyway, and one ``find`` per 32 KB block for long lines); the per-line work
runs only when something was found.

Quarantined raw bytes are kept losslessly with ``escape_bytes``: text as it decodes,
``\\\\`` for a backslash, ``\\xNN`` for NUL, other control bytes except TAB/LF/CR, and
bytes invalid in the encoding; ``unescape`` gives the bytes back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

MAX_FIELD_BYTES = 64 * 1024
MAX_LINE_BYTES = 256 * 1024
FIRST_BLOCK = 64 * 1024
# A first block is binary, not a text file with a few bad rows, when more than half of its
# lines hold a byte that is not text (random bytes: every line). Lines are only looked at
# when more than NON_TEXT_SHARE of its bytes are not text.
NON_TEXT_SHARE = 0.01

ENCODINGS = {"original": "latin-1", "kaggle": "utf-8"}

# Formats that are never text, by their first bytes.
SIGNATURES = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "a zip archive"),
    (b"PK\x07\x08", "a zip archive"),
    (b"%PDF-", "a PDF document"),
    (b"\x7fELF", "an ELF executable"),
    (b"PAR1", "a Parquet file"),
    (b"\x1f\x8b", "gzip data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 document (old Excel?)"),
    (b"ARROW1", "an Arrow file"),
    (b"Obj\x01", "an Avro file"),
    (b"ORC", "an ORC file"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")

_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[[*range(0, 9), 11, 12, *range(14, 32), 127]] = True
_C1 = np.zeros(256, dtype=bool)
_C1[0x80:0xA0] = True
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0, 9), 11, 12, *range(14, 32)]}
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATES = re.compile("[\udc80-\udcff]+")
_UNESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})|[^\\]+|\\")


def binary_kind(data: bytes, encoding: str) -> str | None:
    """What the content is when it is not text as a whole, else None.

    A known binary signature, or a first block (``FIRST_BLOCK`` bytes) more than half of
    whose lines hold bytes that are not text: control bytes other than TAB, LF and CR, or
    bytes invalid in the encoding.
    """
    for signature, kind in SIGNATURES:
        if data.startswith(signature):
            return kind
    if _BZIP2.match(data):
        return "bzip2 data"
    block = data[:FIRST_BLOCK]
    if not block:
        return None
    counts = np.bincount(np.frombuffer(block, dtype=np.uint8), minlength=256)
    non_text = int(counts[_CONTROL].sum())
    # a multi-byte character cut at the block's end is not a fault
    invalid = len(_SURROGATES.findall(block[:-3].decode("utf-8", "surrogateescape")))
    if encoding == "utf-8":
        non_text += invalid
    elif invalid:
        non_text += int(counts[_C1].sum())
    if non_text <= NON_TEXT_SHARE * len(block):
        return None
    lines = block.split(b"\n")
    if len(block) == FIRST_BLOCK and len(lines) > 1:
        lines.pop()  # cut by the block's end
    lines = [line for line in lines if line.strip()]
    bad = sum(1 for line in lines if _not_text(line, encoding))
    if bad * 2 > len(lines):
        return f"mostly non-text: {bad:,} of its first {len(lines):,} lines hold binary bytes"
    return None


def _not_text(line: bytes, encoding: str) -> bool:
    if _CONTROL_BYTES.search(line):
        return True
    try:
        line.decode(encoding)
    except UnicodeDecodeError:
        return True
    return False


def escape_bytes(raw: bytes, encoding: str) -> str:
    """``raw`` as text, losslessly: see the module docstring; ``unescape`` inverts it."""
    parts = [p.decode(encoding, "backslashreplace") for p in raw.split(b"\\")]
    return "\\\\".join(parts).translate(_ESCAPES)


def escape_text(text: str) -> str:
    """``escape_bytes`` of text that decoded cleanly (the same result, from the text)."""
    return text.replace("\\", "\\\\").translate(_ESCAPES)


def unescape(escaped: str, encoding: str) -> bytes:
    """The bytes that ``escape_bytes`` turned into ``escaped``."""
    out = bytearray()
    for match in _UNESCAPE.finditer(escaped):
        piece = match.group()
        if piece == "\\\\":
            out += b"\\"
        elif piece.startswith("\\x") and len(piece) == 4:
            out.append(int(piece[2:], 16))
        elif piece == "\\":
            raise ValueError("a lone backslash is not an escape")
        else:
            out += piece.encode(encoding)
    return bytes(out)


@dataclass
class LineFaults:
    """What is wrong with single physical lines (1-based numbers) of a readable file.

    ``bad``: line -> reason (``nul_byte``, ``invalid_encoding``, ``line_too_long``, with a
    detail after the colon); ``escaped``: line -> its raw bytes escaped (lines with bad
    bytes only; the others are valid text); ``long``: lines over ``MAX_FIELD_BYTES``
    whose fields the parser must measure.
    """

    encoding: str
    bad: dict[int, str] = field(default_factory=dict)
    escaped: dict[int, str] = field(default_factory=dict)
    long: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.bad or self.long)


class _LineCounter:
    """Line numbers of increasing offsets, counting newlines only once overall."""

    def __init__(self, buffer):
        self.buffer, self.position, self.line = buffer, 0, 1

    def __call__(self, offset: int) -> int:
        if offset < self.position:  # offsets come sorted; a restart is rare
            self.position, self.line = 0, 1
        self.line += self.buffer.count(
            b"\n" if isinstance(self.buffer, bytes) else "\n", self.position, offset
        )
        self.position = offset
        return self.line


def _line_bounds(buffer, offset: int) -> tuple[int, int]:
    newline = b"\n" if isinstance(buffer, bytes) else "\n"
    start = buffer.rfind(newline, 0, offset) + 1
    end = buffer.find(newline, offset)
    return start, len(buffer) if end == -1 else end


def _add(faults: LineFaults, line: int, reason: str) -> None:
    faults.bad.setdefault(line, reason)  # the first found stays: NUL, encoding, length


def decode_and_scan(data: bytes, layout: str) -> tuple[str, LineFaults]:
    """Decode ``data`` for ``layout`` and find the faulty lines (see the module docstring).

    The text returned has every bad byte replaced by U+FFFD (line breaks, delimiters and
    quotes are untouched, so records keep their shape); the records on faulty lines are
    for the quarantine only.
    """
    encoding = ENCODINGS[layout]
    faults = LineFaults(encoding)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nul = offset = data.find(b"\x00")
    count = _LineCounter(data)
    while offset >= 0:  # one step per faulty line, however many NULs it holds
        line = count(offset)
        start, end = _line_bounds(data, offset)
        _add(faults, line, f"nul_byte: line {line}, byte {offset - start + 1}")
        faults.escaped[line] = escape_bytes(data[start:end], encoding)
        offset = data.find(b"\x00", end)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = data.decode(encoding, "surrogateescape")
        count = _LineCounter(text)
        match = _SURROGATES.search(text)
        while match:  # one step per faulty line
            line = count(match.start())
            start, end = _line_bounds(text, match.start())
            if line not in faults.escaped:
                column = len(text[start : match.start()].encode(encoding, "surrogateescape")) + 1
                _add(
                    faults, line, f"invalid_encoding: line {line}, byte {column} is not {encoding}"
                )
                faults.escaped[line] = escape_bytes(
                    text[start:end].encode(encoding, "surrogateescape"), encoding
                )
            match = _SURROGATES.search(text, end)
        text = _SURROGATES.sub(lambda m: "\ufffd" * len(m.group()), text)
    if nul >= 0:
        text = text.replace("\x00", "\ufffd")
    _scan_long_lines(data, faults)
    return text, faults


def _scan_long_lines(data: bytes, faults: LineFaults) -> None:
    """Lines over ``MAX_FIELD_BYTES``: every such line holds an aligned block of half that
    size with no newline, so one ``find`` per block finds them all."""
    step = MAX_FIELD_BYTES // 2
    count = _LineCounter(data)
    position = 0
    while position < len(data):
        if data.find(b"\n", position, position + step) >= 0:
            position += step
            continue
        start, end = _line_bounds(data, position)
        length = end - start
        if length > MAX_FIELD_BYTES:
            line = count(start)
            if length > MAX_LINE_BYTES:
                _add(
                    faults,
                    line,
                    f"line_too_long: line {line} has {length:,} bytes (limit {MAX_LINE_BYTES:,})",
                )
            else:
                faults.long.add(line)
        position = max(end, position + step)
