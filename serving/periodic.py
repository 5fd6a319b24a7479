"""A background thread that calls one function at a fixed interval (the API-log writer and
the metrics fold their queues with it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``fn`` every ``interval_s`` seconds in a daemon thread, and once more on stop.

    An exception in ``fn`` is logged and the thread carries on: a thread that died silently
    would leave its queue growing and nothing saying why.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]):
        self.name = name
        self.interval_s = interval_s
        self.fn = fn
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """True between ``start()`` and ``stop()`` (cheap: read on the request path)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (again in a forked child, whose inherited thread is not alive)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then call ``fn`` once more (for what is still queued)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._step()

    def _step(self) -> None:
        try:
            self.fn()
        except Exception:  # noqa: BLE001 - logged with its traceback; the next turn retries
            self.failures += 1
            log.exception("%s: step failed (the thread keeps running)", self.name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._step()
