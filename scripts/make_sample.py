"""Cut the bundled sample deterministically from the full Book-Crossing files.

Keeps every user whose id is divisible by ``--modulus`` plus the users and books that
DIRTY_PATTERNS.txt quotes, with all their ratings and the books those ratings name,
copying the raw records byte for byte (dirty rows included) in both layouts.

    python scripts/make_sample.py ../shared/data/book-crossing data/sample
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from bookrec import cleaning
from bookrec.parse import parse_file
from bookrec.sources import FILE_NAMES, read_text

DIRTY_USERS = {
    11676,
    276929,
    5091,
    276959,
    276762,
    187517,
    85250,
    4377,
    277928,
    276745,
    276856,
    277074,
    275081,
    67531,
    8196,
    10662,
    159653,
    2210,
    43,
    19,
    134377,
    436,
    562,
    220,
    1579,
    1,
    2,
}
DIRTY_BOOKS = {
    "0735201994",
    "0330482750",
    "0807735132",
    "078946697X",
    "0789466953",
    "2070426769",
    "0140292918",
    "0449003787",
    "0446310786",
    "0393045218",
    "0785268030",
    "0156528207",
    "3462021095",
    "8472224260",
    "3404921038",
    "3257207522",
    "3518365479",
    "3150000335",
    "0671746103",
    "0140301690",
    "964442011X",
    "042511774X",
    "096788330X",
    "0486404242",
    "3442248027",
    "193169656X",
    "1931696993",
    "9627982032",
    "0751352497",
}
DIRTY_RAW_BOOKS = {"B00009ANY9", "B0000A2U93"}


def _records(path: Path, layout: str, kind: str):
    text = read_text(path, layout)
    parsed = parse_file(text, layout, kind, path.name)
    header = text[: text.find("\n") + 1]
    values = parsed.frame.to_numpy().tolist()
    starts, ends = parsed.starts.tolist(), parsed.ends.tolist()
    rows = [(values[i], (starts[i], ends[i])) for i in range(len(values))]
    bad = [(None, (start, end)) for start, end, _ in parsed.bad]
    return header, rows, bad, parsed


def _write(path: Path, header: str, spans: list, parsed, layout: str) -> None:
    raws = [parsed.raw(start, end) for start, end in sorted(spans)]
    newline = "\r\n" if layout == "original" else "\n"
    encoding = "latin-1" if layout == "original" else "utf-8"
    body = header + "".join(raw + newline for raw in raws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:  # mtime=0: byte-identical reruns
        fh.write(body.encode(encoding))


def cut(full: Path, out: Path, modulus: int) -> None:
    """Write the sample of both layouts under ``out``."""
    for layout in ("original", "kaggle"):
        names = FILE_NAMES[layout]
        folder = full / layout
        src = {
            k: folder / [p.name for p in folder.iterdir() if p.name.lower() == n + ".gz"][0]
            for k, n in names.items()
        }
        r_header, ratings, r_bad, r_parsed = _records(src["ratings"], layout, "ratings")
        keep_users = set(DIRTY_USERS)
        kept_ratings, isbns = [], set()
        for fields, raw in ratings:
            uid = cleaning.parse_user_id(fields[0])
            if uid is not None and (uid % modulus == 0 or uid in keep_users):
                kept_ratings.append(raw)
                isbns.add(cleaning.normalize_isbn(fields[1]) or fields[1])
        kept_ratings += [raw for _, raw in r_bad]
        isbns |= DIRTY_BOOKS
        b_header, books, b_bad, b_parsed = _records(src["books"], layout, "books")
        kept_books = [
            raw
            for fields, raw in books
            if (cleaning.normalize_isbn(fields[0]) or fields[0]) in isbns
            or fields[0].strip().upper()[:10] in DIRTY_BOOKS
            or fields[0] in DIRTY_RAW_BOOKS
        ] + [raw for _, raw in b_bad]
        u_header, users, u_bad, u_parsed = _records(src["users"], layout, "users")
        kept_users = [
            raw
            for fields, raw in users
            if (uid := cleaning.parse_user_id(fields[0])) is not None
            and (uid % modulus == 0 or uid in keep_users)
        ] + [raw for _, raw in u_bad]
        target = out / layout
        _write(target / src["books"].name, b_header, kept_books, b_parsed, layout)
        _write(target / src["ratings"].name, r_header, kept_ratings, r_parsed, layout)
        _write(target / src["users"].name, u_header, kept_users, u_parsed, layout)
        print(
            f"{layout}: books {len(kept_books)}, ratings {len(kept_ratings)}, users {len(kept_users)}"
        )


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--modulus", type=int, default=50)
    args = parser.parse_args()
    cut(args.full, args.out, args.modulus)


if __name__ == "__main__":
    main()
