"""Memory and time of cleaning one books file with over-long lines, against a clean file of
the same size in the same run (the baseline).

Each case runs ``bookrec.ingest.clean_path`` (read, byte checks, parse, clean) in its own
process, which reports its peak RSS growth over what it had after writing the file:

- clean: ~100 MB of ordinary rows;
- lines: 100 lines of 1 MB among 2,000 ordinary rows (quarantined as ``line_too_long``);
- giant: one 100 MB line with no newline at the end.

    python bench/bench_ingest_faults.py [--layouts original,kaggle]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _books(layout: str, titles: list[bytes], final_newline: bool = True) -> bytes:
    """A books file of the layout with the given raw titles (valid ISBNs, other fields set)."""
    delimiter, end = (b";", b"\r\n") if layout == "original" else (b",", b"\n")
    header = [
        b"ISBN",
        b"Book-Title",
        b"Book-Author",
        b"Year-Of-Publication",
        b"Publisher",
        b"Image-URL-S",
        b"Image-URL-M",
        b"Image-URL-L",
    ]
    lines = [delimiter.join(b'"' + h + b'"' for h in header)]
    for n, title in enumerate(titles, 1):
        body = f"{n:09d}"
        check = (11 - sum((10 - i) * int(d) for i, d in enumerate(body)) % 11) % 11
        isbn = (body + ("X" if check == 10 else str(check))).encode()
        fields = [
            isbn,
            title,
            b"Author",
            b"1999",
            b"Publisher",
            b"http://s",
            b"http://m",
            b"http://l",
        ]
        lines.append(delimiter.join(b'"' + f + b'"' for f in fields))
    return end.join(lines) + (end if final_newline else b"")


def _data(layout: str, case: str) -> bytes:
    if case == "clean":
        return _books(layout, [b"t" * 200] * 400_000)
    if case == "lines":
        return _books(layout, [b"y" * MB if n % 20 == 0 else b"Title" for n in range(1, 2001)])
    return _books(layout, [b"Title", b"z" * (100 * MB)], final_newline=False)


def _child(layout: str, case: str, folder: str) -> None:
    from bookrec.ingest import clean_path

    path = Path(folder) / ("BX-Books.csv" if layout == "original" else "Books.csv")
    path.write_bytes(_data(layout, case))
    size = path.stat().st_size
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    cleaned = clean_path(path, "books", layout, path.name)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "size_mb": size / MB,
                "seconds": seconds,
                "growth_mb": (peak - base) / 1024,
                "rows": cleaned.rows_read,
                "quarantined": len(cleaned.quarantine),
            }
        )
    )


def main() -> None:
    """Run every case in a fresh process and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", default="original,kaggle")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    for layout in args.layouts.split(","):
        for case in ("clean", "lines", "giant"):
            with tempfile.TemporaryDirectory() as folder:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", layout, case, folder],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{layout:9} {case:6} file {r['size_mb']:6.1f} MB  clean_path {r['seconds']:5.1f} s  "
                f"peak RSS growth {r['growth_mb']:6.0f} MB ({r['growth_mb'] / r['size_mb']:.1f}x file)  "
                f"rows {r['rows']:,} quarantined {r['quarantined']:,}"
            )


if __name__ == "__main__":
    main()
