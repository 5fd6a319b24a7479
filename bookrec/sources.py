"""Finding and reading the three Book-Crossing files in a local folder or an S3 prefix.

The two layouts: ``original`` (BX-Books.csv..., ``;``, latin-1, backslash escapes)
and ``kaggle`` (Books.csv..., ``,``, UTF-8). Either may be gzipped. Every failure
names the file (and the line where there is one).
"""

from __future__ import annotations

import gzip
import os
import shutil
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from bookrec import textscan
from bookrec.settings import Settings

KINDS = ("books", "ratings", "users")
LAYOUTS = ("original", "kaggle")
# Each layout's CSV dialect (``csv`` module keywords): the original files quote with '"'
# and escape with a backslash; Kaggle's re-export doubles quotes instead.
DIALECTS = {
    "original": {"delimiter": ";", "quotechar": '"', "escapechar": "\\", "doublequote": False},
    "kaggle": {"delimiter": ",", "quotechar": '"', "doublequote": True},
}

FILE_NAMES = {
    "original": {
        "books": "bx-books.csv",
        "ratings": "bx-book-ratings.csv",
        "users": "bx-users.csv",
    },
    "kaggle": {"books": "books.csv", "ratings": "ratings.csv", "users": "users.csv"},
}

HEADERS = {
    "books": [
        "ISBN",
        "Book-Title",
        "Book-Author",
        "Year-Of-Publication",
        "Publisher",
        "Image-URL-S",
        "Image-URL-M",
        "Image-URL-L",
    ],
    "ratings": ["User-ID", "ISBN", "Book-Rating"],
    "users": ["User-ID", "Location", "Age"],
}


class IngestFileError(ValueError):
    """A source file is missing, empty, corrupt or of the wrong shape."""

    def __init__(self, file: str, message: str, line: int | None = None):
        self.file = file
        self.message = message
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        """Pickle by the constructor's arguments (it crosses process boundaries)."""
        return (type(self), (self.file, self.message, self.line))


@dataclass(frozen=True)
class SourceFile:
    """One located input file: its kind, where it lives, and its display name."""

    kind: str
    uri: str

    @property
    def name(self) -> str:
        """The file's base name."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def _s3_client(settings: Settings):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.aws_region,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5),
    )


def _list_names(source: str, settings: Settings) -> dict[str, str]:
    """Map lower-cased base name -> full URI of every file directly under ``source``."""
    if source.startswith("s3://"):
        parsed = urlparse(source)
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        client = _s3_client(settings)
        names: dict[str, str] = {}
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=parsed.netloc, Prefix=prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    base = obj["Key"][len(prefix) :]
                    names[base.lower()] = f"s3://{parsed.netloc}/{obj['Key']}"
        except Exception as exc:  # botocore raises many types; all mean "cannot list"
            raise IngestFileError(source, f"cannot list the S3 prefix ({exc})") from exc
        return names
    folder = Path(source)
    if not folder.is_dir():
        raise IngestFileError(source, "not a folder (nor an s3:// prefix)")
    return {p.name.lower(): str(p) for p in folder.iterdir() if p.is_file()}


def locate(source: str, layout: str, settings: Settings) -> tuple[str, dict[str, SourceFile]]:
    """Find the three files under ``source``; returns (layout, {kind: SourceFile}).

    ``layout`` is 'auto', 'original' or 'kaggle'. With 'auto' the file names decide.
    With a forced layout, files named for either layout are accepted and parsed as
    the forced one.
    """
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be auto, original or kaggle, not {layout!r}")
    names = _list_names(source, settings)

    def find(name_layout: str) -> dict[str, SourceFile]:
        found = {}
        for kind, base in FILE_NAMES[name_layout].items():
            for candidate in (base, base + ".gz"):
                if candidate in names:
                    found[kind] = SourceFile(kind, names[candidate])
                    break
        return found

    by_layout = {name_layout: find(name_layout) for name_layout in LAYOUTS}
    if layout == "auto":
        complete = [lay for lay, found in by_layout.items() if len(found) == len(KINDS)]
        if len(complete) == 2:
            raise IngestFileError(source, "holds files of both layouts; pass --layout")
        if complete:
            return complete[0], by_layout[complete[0]]
        best = max(LAYOUTS, key=lambda lay: len(by_layout[lay]))
        missing = [FILE_NAMES[best][k] for k in KINDS if k not in by_layout[best]]
        raise IngestFileError(source, f"missing {', '.join(missing)} (plain or .gz)")
    found = dict(by_layout[layout])
    other = by_layout["kaggle" if layout == "original" else "original"]
    for kind in KINDS:
        found.setdefault(kind, other.get(kind))  # type: ignore[arg-type]
    missing = [FILE_NAMES[layout][k] for k in KINDS if found.get(k) is None]
    if missing:
        raise IngestFileError(source, f"missing {', '.join(missing)} (plain or .gz)")
    return layout, found


def fetch(file: SourceFile, dest_dir: Path, settings: Settings) -> Path:
    """A local path for ``file``: itself if local, else downloaded into ``dest_dir``."""
    if not file.uri.startswith("s3://"):
        return Path(file.uri)
    parsed = urlparse(file.uri)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / file.name
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    try:  # one GET: the bytes and their LastModified belong to the same object version
        answer = _s3_client(settings).get_object(Bucket=bucket, Key=key)
        with open(target, "wb") as fh:
            shutil.copyfileobj(answer["Body"], fh, 1 << 20)
    except Exception as exc:
        raise IngestFileError(file.uri, f"cannot read the S3 object ({exc})") from exc
    stamp = answer["LastModified"].timestamp()
    os.utime(target, (stamp, stamp))  # the object's time, as a local file's mtime would be
    return target


def modified_at(path: Path) -> str:
    """A file's modification time as ISO 8601 UTC (for a fetched S3 object, its LastModified)."""
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()


def read_text(path: Path, layout: str, display: str | None = None) -> str:
    """The file's text (see ``read_source``; faulty lines are left to the caller)."""
    return read_source(path, layout, display)[0]


def read_source(
    path: Path, layout: str, display: str | None = None
) -> tuple[str, textscan.LineFaults]:
    """The file's text and its faulty lines: gunzipped when named ``.gz``, decoded for its
    layout, refused when it is not text as a whole or its header line is faulty."""
    display = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestFileError(display, f"cannot read ({exc.strerror or exc})") from exc
    if data[:2] == b"\x1f\x8b" and path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise IngestFileError(display, f"truncated or corrupt gzip ({exc})") from exc
    if not data or data.isspace():
        raise IngestFileError(display, "is empty")
    kind = textscan.binary_kind(data, textscan.ENCODINGS[layout])
    if kind is not None:
        raise IngestFileError(display, f"is not a text file ({kind})")
    text, faults = textscan.decode_and_scan(data, layout)
    del data
    if 1 in faults.bad:
        raise IngestFileError(display, f"bad header ({faults.bad[1]})", line=1)
    return text, faults
