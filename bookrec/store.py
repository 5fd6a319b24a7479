"""The one module that reads and writes the artifact store: a local folder or S3.

Both implementations offer the same small API over ``/``-separated keys, including
the two conditional writes the model registry is built on:

- ``put(key, data, if_none_match=True)`` creates an object only if it does not exist
  (S3 ``If-None-Match: *``; locally an atomic ``link`` of a fully written temp file);
- ``put(key, data, if_match=etag)`` replaces an object only if it still has that ETag
  (S3 ``If-Match``; locally a compare-and-swap under an ``fcntl`` lock, then an atomic
  rename).

A failed condition raises ``PreconditionFailed``; nothing is half-written either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bookrec.artifacts import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.settings import Settings

_CHUNK = 1 << 20


class StoreError(RuntimeError):
    """The artifact store refused or failed an operation."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    key: str
    size: int
    etag: str
    sha256: str | None


def check_key(key: str) -> str:
    """Refuse keys that could escape the store root or are ambiguous (``..``, ``//``, ``\\``)."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise StoreError(f"invalid store key {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", ".."):
        raise StoreError(f"invalid store key {key!r}")
    return key


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore(ABC):
    """Keys to bytes, with conditional writes; subclasses are the local folder and S3."""

    uri: str

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ``ObjectNotFound`` if it is missing."""

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and the ETag to use for a later ``if_match`` write."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, ETag and (when known) sha256 of an object, or None if it is missing."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write ``data`` (optionally conditional) and return the new ETag."""

    @abstractmethod
    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> str:
        """Upload a local file (optionally only if the key is new) and return its ETag."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download an object to ``path`` (written to a temp name, then renamed)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursively), sorted."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-"folders" of ``prefix`` (which ends with ``/``)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; a missing key is not an error."""

    def exists(self, key: str) -> bool:
        """True if the object exists."""
        return self.stat(key) is not None

    def upload_folder(
        self,
        local_dir: Path,
        prefix: str,
        names: Iterable[str],
        *,
        if_none_match: bool = True,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Upload ``local_dir/<name>`` to ``<prefix><name>`` for each name, in the given order."""
        for name in names:
            self.put_file(f"{prefix}{name}", Path(local_dir) / name, if_none_match=if_none_match)
            if progress is not None:
                progress(name)

    def download_folder(self, prefix: str, dest: Path, names: Iterable[str]) -> None:
        """Download ``<prefix><name>`` to ``dest/<name>`` for each name."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            self.get_file(f"{prefix}{name}", dest / name)


class LocalStore(ArtifactStore):
    """A folder on disk. Writes go to a temp file and are renamed (or linked) into place."""

    def __init__(self, root: Path):
        """Use ``root`` (created if missing) as the store."""
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """An exclusive ``flock`` per key; it also serialises threads (one open file each)."""
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(exist_ok=True)
        name = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()
        with open(lock_dir / f"{name}.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _tmp_for(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"

    @staticmethod
    def _etag(path: Path) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
        return digest.hexdigest()

    def _write_tmp(self, path: Path, source: bytes | IO[bytes]) -> Path:
        tmp = self._tmp_for(path)
        with open(tmp, "wb") as fh:
            if isinstance(source, bytes):
                fh.write(source)
            else:
                shutil.copyfileobj(source, fh, _CHUNK)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def _commit(self, key: str, tmp: Path, if_none_match: bool, if_match: str | None) -> str:
        """Move a fully written temp file into place, honouring the write condition."""
        path = self._path(key)
        try:
            if if_none_match:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    raise PreconditionFailed(f"{key}: already exists (If-None-Match)") from None
            elif if_match is not None:
                with self._lock(key):
                    if not path.is_file():
                        raise PreconditionFailed(f"{key}: does not exist (If-Match)")
                    if self._etag(path) != if_match.strip('"'):
                        raise PreconditionFailed(f"{key}: changed since it was read (If-Match)")
                    os.replace(tmp, path)
            else:
                with self._lock(key):
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return self._etag(path)

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"{self.uri}/{key}: not found") from None

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Bytes and ETag read under the key's lock, so they belong together."""
        with self._lock(key):
            data = self.get(key)
        return data, hashlib.md5(data, usedforsecurity=False).hexdigest()

    def stat(self, key: str) -> ObjectInfo | None:
        """Size, ETag and sha256 (computed: a local read is cheap)."""
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key, path.stat().st_size, self._etag(path), sha256_file(path))

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write bytes through a temp file; see the module docstring for the conditions."""
        tmp = self._write_tmp(self._path(key), data)
        return self._commit(key, tmp, if_none_match, if_match)

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> str:
        """Copy a local file in through a temp file."""
        with open(path, "rb") as src:
            tmp = self._write_tmp(self._path(key), src)
        return self._commit(key, tmp, if_none_match, None)

    def get_file(self, key: str, path: Path) -> None:
        """Copy an object out to ``path`` atomically."""
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(f"{self.uri}/{key}: not found")
        path = Path(path)
        tmp = self._tmp_for(path)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix``, skipping temp and lock files (names starting with a dot)."""
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == Path(".") else f"{rel.as_posix()}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        """Sub-folder names of ``prefix``."""
        base = self.root / prefix.rstrip("/") if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete(self, key: str) -> None:
        """Unlink the object's file."""
        self._path(key).unlink(missing_ok=True)


class S3Store(ArtifactStore):
    """A bucket and key prefix on S3 (or anything speaking its API, e.g. moto or MinIO)."""

    def __init__(self, uri: str, *, endpoint_url: str | None, region: str):
        """Parse ``s3://bucket/prefix`` and build a client with short, bounded retries."""
        import boto3
        from botocore.config import Config

        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"{uri}: no bucket name in the S3 URI")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        config = Config(
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def _raise(self, exc: Exception, key: str) -> None:
        """Translate a botocore error into this module's exceptions."""
        code = self._code(exc)
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            raise PreconditionFailed(f"{self.uri}/{key}: write condition failed ({code})") from exc
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ObjectNotFound(f"{self.uri}/{key}: not found") from exc
        raise StoreError(f"{self.uri}/{key}: {code or type(exc).__name__}: {exc}") from exc

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Bytes and ETag from one GetObject, so they belong together."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            with contextlib.closing(response["Body"]) as body:
                data = body.read()
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)
        return data, response["ETag"].strip('"')

    def stat(self, key: str) -> ObjectInfo | None:
        """HeadObject; sha256 comes from the metadata this store writes on upload."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            self._raise(exc, key)
        except BotoCoreError as exc:
            self._raise(exc, key)
        return ObjectInfo(
            key,
            int(head["ContentLength"]),
            head["ETag"].strip('"'),
            head.get("Metadata", {}).get("sha256"),
        )

    def _put(self, key: str, body: bytes | IO[bytes], sha256: str, **conditions: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=body,
                Metadata={"sha256": sha256},
                **conditions,
            )
        except (ClientError, BotoCoreError) as exc:
            if "IfMatch" in conditions and self._code(exc) in ("NoSuchKey", "404"):
                raise PreconditionFailed(f"{self.uri}/{key}: does not exist (If-Match)") from exc
            self._raise(exc, key)
        return response["ETag"].strip('"')

    @staticmethod
    def _conditions(if_none_match: bool, if_match: str | None) -> dict[str, str]:
        if if_none_match and if_match is not None:
            raise StoreError("if_none_match and if_match are exclusive")
        if if_none_match:
            return {"IfNoneMatch": "*"}
        if if_match is not None:
            return {"IfMatch": f'"{if_match.strip(chr(34))}"'}
        return {}

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """PutObject with ``If-None-Match: *`` or ``If-Match: <etag>`` when asked."""
        conditions = self._conditions(if_none_match, if_match)
        return self._put(key, data, _sha256_bytes(data), **conditions)

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> str:
        """One streamed PutObject per file (S3 caps these at 5 GB; model files are far smaller)."""
        digest = sha256_file(Path(path))
        with open(path, "rb") as fh:
            return self._put(key, fh, digest, **self._conditions(if_none_match, None))

    def get_file(self, key: str, path: Path) -> None:
        """Stream an object to a temp file next to ``path``, then rename it into place."""
        from botocore.exceptions import BotoCoreError, ClientError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            with contextlib.closing(response["Body"]) as body, open(tmp, "wb") as fh:
                for block in body.iter_chunks(_CHUNK):
                    fh.write(block)
            os.replace(tmp, path)
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        """ListObjectsV2 over every page."""
        from botocore.exceptions import BotoCoreError, ClientError

        keys = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, prefix)
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        """ListObjectsV2 with a ``/`` delimiter: the common prefixes below ``prefix``."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self.prefix + prefix
        names = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(full) :].rstrip("/"))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, prefix)
        return sorted(names)

    def delete(self, key: str) -> None:
        """DeleteObject (idempotent on S3)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)


def open_store(uri: str, settings: Settings) -> ArtifactStore:
    """The store for ``uri``: ``s3://bucket/prefix`` or a local folder (``file://`` allowed)."""
    if uri.startswith("s3://"):
        return S3Store(uri, endpoint_url=settings.s3_endpoint_url, region=settings.aws_region)
    if uri.startswith("file://"):
        return LocalStore(Path(uri[len("file://") :]))
    if "://" in uri:
        raise StoreError(f"artifacts URI {uri!r}: unsupported scheme (use a folder or s3://)")
    return LocalStore(Path(uri))
