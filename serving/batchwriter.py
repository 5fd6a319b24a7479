"""The batch writer behind the request log and the impressions: a bounded queue the request
path appends to, drained in batches into PostgreSQL by a background thread.

Each batch is one statement over a JSON array (``json_to_recordset``), so the parsing
happens in the database rather than under the worker's GIL. When PostgreSQL fails, the
batch and whatever the same flush still finds queued are dropped and counted rather than
retried: requests must not wait on the database, and the queue must stay bounded.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from sqlalchemy.engine import Engine

from bookrec.settings import Settings
from serving.periodic import Periodic

log = logging.getLogger(__name__)


class BatchWriter:
    """A bounded queue of records and the thread that writes them in batches.

    Subclasses queue with ``_offer`` (False when full) and say how a batch is written
    (``_insert``); ``_before_insert`` sees every batch, also when the database is off.
    """

    noun = "records"  # what the warning says was dropped

    def __init__(
        self,
        name: str,
        settings: Settings,
        engine: Callable[[], Engine] | None,
        *,
        max_queue: int,
        dropped: Counter,
        written: Counter | None = None,
    ):
        """``engine`` is a callable returning the engine (None: nothing reaches a database)."""
        self.batch_size = max(1, settings.api_log_batch_size)
        self.max_queue = max_queue
        self._engine = engine
        self._dropped = dropped
        self._written = written
        self._queue: deque[Any] = deque()
        self._writer = Periodic(name, settings.api_log_flush_interval_s, self.flush)

    def _offer(self, item: Any) -> bool:
        """Queue ``item`` unless the queue is full (then count it dropped); never blocks."""
        if len(self._queue) >= self.max_queue:
            self._dropped.inc()
            return False
        self._queue.append(item)
        return True

    def start(self) -> None:
        """Start the background writer (once, in the serving process)."""
        self._writer.start()

    def stop(self) -> None:
        """Write what is queued and stop the writer."""
        self._writer.stop()

    def _drain(self) -> list[Any]:
        batch: list[Any] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.popleft())
            except IndexError:
                break
        return batch

    def flush(self) -> int:
        """Write every queued record now, in batches; returns how many rows were stored."""
        stored = lost = 0
        failure: Exception | None = None
        while batch := self._drain():
            self._before_insert(batch)
            if self._engine is None:
                continue
            if failure is None:  # after a failed batch, do not wait on the database again
                try:
                    self._insert(batch)
                except Exception as exc:  # noqa: BLE001 - any database failure drops the batch
                    failure = exc
                else:
                    stored += len(batch)
                    if self._written is not None:
                        self._written.inc(len(batch))
                    continue
            lost += len(batch)
            self._dropped.inc(len(batch))
        if failure is not None:
            log.warning("%s: dropped %d %s (%s)", self._writer.name, lost, self.noun,
                        type(failure).__name__)
        return stored

    def _before_insert(self, batch: list[Any]) -> None:
        """Called with every batch drained, before it goes to the database (if any)."""

    def _insert(self, batch: list[Any]) -> None:
        """Store one batch (one statement); raise on failure."""
        raise NotImplementedError

    def _copy(self, statement: str, text: str) -> None:
        """Run ``COPY ... FROM STDIN`` with ``text`` (rows in COPY's text format) in its own
        transaction."""
        import io

        self._in_transaction(lambda cur: cur.copy_expert(statement, io.StringIO(text),
                                                         size=1 << 16))

    def _execute(self, statement: str, document: str) -> None:
        """Run ``statement`` with the JSON array ``document`` in its own transaction."""
        self._in_transaction(lambda cur: cur.execute(statement, (document,)))

    def _in_transaction(self, work) -> None:
        """Call ``work(cursor)`` on a raw connection of the pool, committed, or rolled back
        if it raises."""
        raw = self._engine().raw_connection()
        try:
            with raw.cursor() as cur:
                work(cur)
            raw.commit()
        except Exception:
            raw.rollback()
            raise
        finally:
            raw.close()
