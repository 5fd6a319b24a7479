"""A background thread that calls one function at a fixed interval (the API-log writer and
the metrics fold their queues with it; the search index checks its table with it)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``fn`` every ``interval_s`` seconds in a daemon thread, and once more on stop.

    An exception in ``fn`` is logged and the thread carries on: a thread that died silently
    would leave its queue growing and nothing saying why. ``first`` calls ``fn`` as soon as
    the thread starts (before the first wait); ``final=False`` skips the call on stop;
    ``nice`` lowers the thread's own CPU priority (Linux threads have their own), so that
    background work yields the CPU to requests.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object], *,
                 first: bool = False, final: bool = True, nice: int = 0):
        self.name = name
        self.interval_s = interval_s
        self.fn = fn
        self.first = first
        self.final = final
        self.nice = nice
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

    @property
    def alive(self) -> bool:
        """True while the thread runs (``started`` stays true after a thread died)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread (a call under way finishes first, up to 10 s), then call ``fn``
        once more for what is still queued (unless ``final`` is false)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.final:
            self._step()

    def _step(self) -> None:
        try:
            self.fn()
        except Exception:  # noqa: BLE001 - logged with its traceback; the next turn retries
            self.failures += 1
            log.exception("%s: step failed (the thread keeps running)", self.name)

    def _run(self) -> None:
        if self.nice:
            with contextlib.suppress(OSError):
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid,
                               min(os.getpriority(os.PRIO_PROCESS, tid) + self.nice, 19))
        if self.first:
            self._step()
        while not self._stop.wait(self.interval_s):
            self._step()
