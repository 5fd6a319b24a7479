"""Row-level byte faults: a bad line is quarantined losslessly, the rest of the file loads;
only content that is not text as a whole refuses the file."""

from __future__ import annotations

import gzip
import io
import random
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bookrec import textscan
from bookrec.ingest import clean_path
from bookrec.sources import HEADERS, IngestFileError

LAYOUTS = {
    # layout: (file name, delimiter, line end, encoding)
    "original": ("BX-Books.csv", b";", b"\r\n", "latin-1"),
    "kaggle": ("Books.csv", b",", b"\n", "utf-8"),
}


def isbn(n: int) -> str:
    """A valid ISBN-10 made from ``n``."""
    body = f"{n:09d}"
    check = (11 - sum((10 - i) * int(d) for i, d in enumerate(body)) % 11) % 11
    return body + ("X" if check == 10 else str(check))


def book_line(layout: str, n: int, title: bytes = b"") -> bytes:
    """One books record of the layout, every field quoted, title given as raw bytes."""
    _, delimiter, _, _ = LAYOUTS[layout]
    fields = [
        isbn(n).encode(),
        title or f"Title {n}".encode(),
        b"Some Author",
        b"1999",
        b"Publisher",
        b"http://s.jpg",
        b"http://m.jpg",
        b"http://l.jpg",
    ]
    return delimiter.join(b'"' + f + b'"' for f in fields)


def books_file(layout: str, lines: list[bytes], *, final_newline: bool = True) -> bytes:
    """Header and ``lines`` joined with the layout's line end."""
    _, delimiter, end, _ = LAYOUTS[layout]
    header = delimiter.join(b'"' + h.encode() + b'"' for h in HEADERS["books"])
    return end.join([header, *lines]) + (end if final_newline else b"")


def write(tmp_path: Path, layout: str, data: bytes, gz: bool) -> Path:
    name = LAYOUTS[layout][0] + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def clean(path: Path, layout: str):
    return clean_path(path, "books", layout, path.name)


def assert_accounted(cleaned) -> None:
    assert len(cleaned.frame) + cleaned.merged + len(cleaned.quarantine) == cleaned.rows_read


def raw_bytes(row, encoding: str) -> bytes:
    """The file bytes a quarantine row keeps, whatever its format."""
    if row.raw_format == "escaped":
        return textscan.unescape(row.raw, encoding)
    return row.raw.encode(encoding)


BIG = 1024 * 1024
CASES = {
    # case: (title bytes, expected reason code per layout)
    "nul": (b"Bad\x00Title", {"original": "nul_byte", "kaggle": "nul_byte"}),
    "invalid": (b"Caf\xe9 \xff\xfe", {"original": None, "kaggle": "invalid_encoding"}),
    "field": (b"x" * 70_000, {"original": "field_too_long", "kaggle": "field_too_long"}),
    "line": (b"y" * BIG, {"original": "line_too_long", "kaggle": "line_too_long"}),
    "multiline": (b"two\nlines\x00 here", {"original": "nul_byte", "kaggle": "nul_byte"}),
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_a_faulty_line_is_quarantined_and_every_other_row_loads(
    tmp_path, layout, gz, case, position
):
    title, reasons = CASES[case]
    reason = reasons[layout]
    encoding = LAYOUTS[layout][3]
    at = {"first": 0, "middle": 3, "last": 6}[position]
    lines = [book_line(layout, n) for n in range(1, 8)]
    lines[at] = book_line(layout, 100, title)
    # the last line without its line end: a giant last line never meets a newline
    data = books_file(layout, lines, final_newline=position != "last")
    cleaned = clean(write(tmp_path, layout, data, gz), layout)

    assert cleaned.rows_read == 7
    assert_accounted(cleaned)
    if reason is None:  # latin-1 assigns every byte: the row loads as text
        assert len(cleaned.frame) == 7 and cleaned.quarantine.empty
        assert title.decode("latin-1") in cleaned.frame["title"].tolist()
        return
    assert sorted(cleaned.frame["isbn"]) == sorted(isbn(n) for n in range(1, 8) if n - 1 != at)
    (row,) = cleaned.quarantine.itertuples()
    assert row.reason.split(":")[0] == reason
    assert row.line_number == at + 2  # header is line 1
    assert raw_bytes(row, encoding) == lines[at]
    assert row.raw_format == ("escaped" if case in ("nul", "invalid", "multiline") else "text")
    assert "\x00" not in row.raw


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("filler", [b"x", b"\x00", b'"'])
def test_a_giant_line_that_is_no_record_at_all(tmp_path, layout, gz, final_newline, filler):
    """1 MB of one byte, no delimiter: quarantined by itself, the rows before it load."""
    lines = [book_line(layout, n) for n in range(1, 4)] + [filler * BIG]
    data = books_file(layout, lines, final_newline=final_newline)
    cleaned = clean(write(tmp_path, layout, data, gz), layout)
    assert len(cleaned.frame) == 3 and cleaned.rows_read == 4
    (row,) = cleaned.quarantine.itertuples()
    assert row.line_number == 5
    assert row.reason.split(":")[0] == ("nul_byte" if filler == b"\x00" else "line_too_long")
    assert raw_bytes(row, LAYOUTS[layout][3]) == filler * BIG


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bom_crlf_and_several_gzip_members(tmp_path, layout):
    """A BOM, CRLF line ends in either layout and a fault in the second gzip member."""
    lines = [book_line(layout, n) for n in range(1, 5)]
    first = b"\xef\xbb\xbf" + books_file(layout, lines[:2]).replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n"
    )
    bad = book_line(layout, 9, b"NUL\x00")
    second = b"\r\n".join([lines[2], bad, lines[3]]) + b"\r\n"
    path = tmp_path / (LAYOUTS[layout][0] + ".gz")
    path.write_bytes(gzip.compress(first) + gzip.compress(second))
    cleaned = clean(path, layout)
    assert len(cleaned.frame) == 4 and cleaned.rows_read == 5
    (row,) = cleaned.quarantine.itertuples()
    assert row.line_number == 5 and row.reason.startswith("nul_byte")
    assert textscan.unescape(row.raw, LAYOUTS[layout][3]) == bad


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    ("header_fault", "reason"),
    [(b"\x00", "nul_byte"), (b"\xff", "invalid_encoding"), (b"z" * BIG, "line_too_long")],
)
def test_a_bad_header_refuses_the_file_naming_line_1(tmp_path, layout, gz, header_fault, reason):
    data = books_file(layout, [book_line(layout, 1)]).replace(b"ISBN", b"IS" + header_fault, 1)
    path = write(tmp_path, layout, data, gz)
    if layout == "original" and header_fault == b"\xff":
        reason = "wrong header"  # a valid latin-1 character in a header that is wrong
    with pytest.raises(IngestFileError) as info:
        clean(path, layout)
    assert f"{path.name}:1:" in str(info.value)
    assert reason in str(info.value)


def _zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Books.csv", data)
    return buffer.getvalue()


BINARY = {
    "zip": lambda csv: _zip(csv),
    "pdf": lambda csv: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + csv,
    "elf": lambda csv: b"\x7fELF\x02\x01\x01" + csv,
    "parquet": lambda csv: b"PAR1\x15\x04" + csv,
    "gzip_in_gzip": lambda csv: gzip.compress(gzip.compress(csv)),
    "random": lambda csv: random.Random(7).randbytes(200_000),
    "utf16": lambda csv: csv.decode("latin-1").encode("utf-16"),
    "utf16_no_bom": lambda csv: csv.decode("latin-1").encode("utf-16-le"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", list(BINARY))
def test_content_that_is_not_text_refuses_the_file(tmp_path, layout, kind):
    csv = books_file(layout, [book_line(layout, n) for n in range(1, 50)])
    path = tmp_path / (LAYOUTS[layout][0] + ".gz")
    payload = BINARY[kind](csv)
    path.write_bytes(payload if kind == "gzip_in_gzip" else gzip.compress(payload))
    with pytest.raises(IngestFileError, match="is not a text file") as info:
        clean(path, layout)
    assert path.name in str(info.value)


def test_gzip_data_in_a_file_not_named_gz_is_not_text(tmp_path):
    path = tmp_path / "Books.csv"
    path.write_bytes(gzip.compress(books_file("kaggle", [book_line("kaggle", 1)])))
    with pytest.raises(IngestFileError, match=r"Books\.csv: is not a text file \(gzip data\)"):
        clean(path, "kaggle")


def test_a_few_nul_rows_in_the_first_block_are_rows_not_binary(tmp_path):
    lines = [book_line("kaggle", n, b"\x00" * 40 if n % 10 == 0 else b"") for n in range(1, 200)]
    cleaned = clean(write(tmp_path, "kaggle", books_file("kaggle", lines), False), "kaggle")
    assert len(cleaned.quarantine) == 19 and len(cleaned.frame) == 180


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_small_file_with_a_run_of_nul_bytes_keeps_its_other_rows(tmp_path, layout):
    lines = [book_line(layout, 1), book_line(layout, 2, b"\x00" * 200), book_line(layout, 3)]
    cleaned = clean(write(tmp_path, layout, books_file(layout, lines), True), layout)
    assert len(cleaned.frame) == 2
    assert cleaned.quarantine["reason"].str.startswith("nul_byte").tolist() == [True]


@given(st.binary(max_size=300), st.sampled_from(["latin-1", "utf-8"]))
def test_escaping_is_lossless(raw, encoding):
    escaped = textscan.escape_bytes(raw, encoding)
    assert "\x00" not in escaped
    assert textscan.unescape(escaped, encoding) == raw


@given(st.text(max_size=200))
def test_escaping_clean_text_from_the_text_or_its_bytes_agrees(text):
    assert textscan.escape_text(text) == textscan.escape_bytes(text.encode("utf-8"), "utf-8")
