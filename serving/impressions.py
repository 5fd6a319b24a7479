"""Impressions: every list the API returns is queued on the request path and written to
PostgreSQL in batches by a background thread (``serving.batchwriter``, as for the request
log).

The request path appends one tuple holding a reference to the response body it already has
(cached or not) and counts a metrics sample: no parsing, no encoding, no I/O. The thread
takes the ISBNs out of the bodies (orjson, once per body object: a cached body is shared by
the requests that show it), writes each batch with one ``COPY`` (the housekeeping flow keeps
the day partitions), and retries attributing
this worker's recent ratings whose list was still in some worker's queue when they were
posted. The queue holds at most ``MAX_QUEUE`` lists; beyond that, and when PostgreSQL is
down, lists are dropped and counted (``bookrec_impressions_dropped_total``). Without the
thread (the Flask test client) lists wait for an explicit ``flush()``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from sqlalchemy.engine import Engine

from bookrec import online
from bookrec.settings import Settings
from serving.batchwriter import BatchWriter
from serving.metrics import Metrics

log = logging.getLogger(__name__)

MAX_QUEUE = 50_000
RETRY_ATTRIBUTION_S = 30.0  # how long a posted rating waits for its list to be written
MAX_PENDING_ATTRIBUTIONS = 10_000
MAX_REMEMBERED_BODIES = 1_024  # bodies whose ISBN columns are kept for the next batches
_COPY = (
    "COPY impressions (shown_at, request_id, user_id, model_version, kind, isbns, variant, "
    "rollout_id, teams) FROM STDIN"
)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


_SPECIAL = re.compile(r"[\\\t\n\r]")


def _field(value: object) -> str:
    """A value in COPY's text format (NULL for None)."""
    if value is None:
        return _NULL
    text = str(value)
    return text.translate(_COPY_ESCAPES) if _SPECIAL.search(text) else text


def _array(values: list | None, quote: bool) -> str:
    """An array literal in COPY's text format (NULL for None); ``quote`` the elements
    (text), else write them as they are (numbers)."""
    if values is None:
        return _NULL
    if quote:
        values = ['"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
    return _field("{" + ",".join(str(v) for v in values) + "}")


def list_columns(body: bytes) -> tuple[str, str]:
    """The ``isbns`` and ``teams`` columns of a list body, in COPY's text format."""
    payload = orjson.loads(body)
    items = payload.get("items") or []
    return _array([item["isbn"] for item in items], True), _array(payload.get("teams"), False)


class ImpressionWriter(BatchWriter):
    """Queues shown lists and writes them (and late attributions) in the background."""

    noun = "lists"

    def __init__(self, settings: Settings, metrics: Metrics, engine: Callable[[], Engine] | None):
        """``engine`` is a callable returning the engine (None: count, but store nothing)."""
        super().__init__("impression-writer", settings, engine, max_queue=MAX_QUEUE,
                         dropped=metrics.impressions_dropped)
        self.metrics = metrics
        self.window_s = settings.attribution_window_days * 86400.0
        self._pending: deque[tuple[float, int]] = deque()  # (posted, event id) unattributed
        self._columns: dict[tuple, str] = {}  # (body, version, kind, ...) -> their columns
        self._lock = threading.Lock()

    def record(
        self,
        request_id: str,
        user_id: int | None,
        version: str,
        kind: str,
        body: bytes,
        variant: str | None = None,
        rollout_id: str | None = None,
    ) -> None:
        """Remember that ``body`` (a list response) was shown (never blocks); during a
        rollout with the reader's variant and the rollout (an interleaved body carries the
        team of each position in ``teams``)."""
        if self._offer((time.time(), request_id, user_id, version, kind, body, variant,
                        rollout_id)):
            self.metrics.impression(version, kind, variant)

    def await_attribution(self, event_id: int) -> None:
        """Retry attributing a rating event for a while (its list may still be queued)."""
        with self._lock:
            if len(self._pending) < MAX_PENDING_ATTRIBUTIONS:
                self._pending.append((time.monotonic(), event_id))

    def flush(self) -> int:
        """Write every queued list now, then retry pending attributions; rows written."""
        written = super().flush()
        if self._pending and self._engine is not None:
            self._retry_attributions()
        return written

    def _insert(self, batch: list[tuple]) -> None:
        """One ``COPY`` of the batch. A cached body is the same object request after
        request, so the columns that come from it and from the list's model version, kind
        and variant are formatted once (``list_columns``) and remembered for the next
        batches."""
        remembered = self._columns
        if len(remembered) > MAX_REMEMBERED_BODIES:
            remembered.clear()
        lines = []
        last_second, stamp = None, ""
        for ts, request_id, user_id, version, kind, body, variant, rollout_id in batch:
            key = (body, version, kind, variant, rollout_id)  # a bytes object hashes once
            tail = remembered.get(key)
            if tail is None:
                isbns, teams = list_columns(body)
                tail = remembered[key] = "\t".join(
                    (_field(version), _field(kind), isbns, _field(variant), _field(rollout_id),
                     teams)
                )
            user = _NULL if user_id is None else str(int(user_id))
            second = int(ts)
            if second != last_second:  # the date and time to the second, once per second
                last_second = second
                stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")
            shown = f"{stamp}.{int((ts - second) * 1e6):06d}+00"
            lines.append(f"{shown}\t{_field(request_id)}\t{user}\t{tail}")
        self._copy(_COPY, "\n".join(lines) + "\n")

    def _retry_attributions(self) -> None:
        """Attribute this worker's recent unattributed ratings to the list they name; when
        that list has not appeared in ``RETRY_ATTRIBUTION_S``, to the reader's latest list
        with the book, once, and forget them."""
        now = time.monotonic()
        with self._lock:
            expired = []
            while self._pending and now - self._pending[0][0] > RETRY_ATTRIBUTION_S:
                expired.append(self._pending.popleft()[1])
            ids = [event_id for _, event_id in self._pending]
        if not ids and not expired:
            return
        try:
            with self._engine().begin() as conn:
                found = online.attribute(conn, ids, self.window_s, named_only=True)
                found.update(online.attribute(conn, expired, self.window_s))
        except Exception as exc:  # noqa: BLE001 - try again on the next flush
            log.warning("impressions: attribution retry failed (%s)", type(exc).__name__)
            return
        for found_one in found.values():
            self.metrics.attributed(found_one)
        if found:
            with self._lock:
                self._pending = deque(p for p in self._pending if p[1] not in found)
