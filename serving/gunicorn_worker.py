"""gunicorn's threaded worker, with new connections spread over the workers.

All workers of a gunicorn server poll one listening socket, and whichever wakes first
accepts. With keep-alive clients (a load balancer, wrk) the connections are opened once
and stay where they landed, and they land unevenly: 16 connections over 4 workers were
seen as 9/1/5/1 and 10/1/5/0 here (gunicorn issues #2817, #3071, #3433). Each worker runs
Python under one GIL, so the one holding 10 connections queues them on one core while
the others idle, and the tail latency follows that draw rather than the load.

``BalancedThreadWorker`` accepts freely while it holds fewer connections than it has
threads. Beyond that it stops polling the listener for ``ACCEPT_BACKOFF_S`` per
connection over its share, which leaves a waiting connection to a less loaded worker;
if none takes it by then, this worker does. Under 16 connections on 4 x 4 every worker
gets 4; when all are full, the least loaded one accepts first (its pause is shortest),
and a new connection waits at most a few milliseconds once, never per request.
"""

from __future__ import annotations

import os
import time

from gunicorn.workers.gthread import ThreadWorker

ACCEPT_BACKOFF_S = 0.01  # per connection held beyond the worker's thread count...
MAX_ACCEPT_PAUSE_S = 0.05  # ...up to this


def workers_per_cpu() -> int:
    """The default number of workers: one per CPU this process may run on (each worker runs
    Python under one GIL, so more workers than CPUs only take turns)."""
    return len(os.sched_getaffinity(0))


class BalancedThreadWorker(ThreadWorker):
    """gthread worker that leaves new connections to workers holding fewer of them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_at = 0.0  # monotonic time the current accept pause ends
        self._retry = False  # paused once for the waiting connection: take it if still there

    def accept(self, listener):
        """Accept, unless this worker is at its share and has not yet let the others try."""
        if self.nr_conns >= self.cfg.threads and not self._retry:
            over = self.nr_conns - self.cfg.threads
            pause = min(ACCEPT_BACKOFF_S * (over + 1), MAX_ACCEPT_PAUSE_S)
            self._resume_at = time.monotonic() + pause
            self._retry = True
            super().set_accept_enabled(False)
            return
        self._retry = False
        super().accept(listener)

    def set_accept_enabled(self, enabled):
        """The run loop re-enables accepting every turn; not before the pause ends."""
        if enabled and time.monotonic() < self._resume_at:
            enabled = False
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        """Wake up when the pause ends; after it, one round of events decides: the waiting
        connection is accepted in it, or another worker took it and the next one that
        arrives pauses this worker again."""
        pause = self._resume_at - time.monotonic()
        if pause > 0:
            timeout = min(timeout, pause)
        deciding = self._retry and pause <= 0 and self._accepting
        super().wait_for_and_dispatch_events(timeout)
        if deciding:
            self._retry = False
