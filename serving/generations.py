"""Readers' generations (the freshness token of their cached lists) kept in each worker's
memory, without weakening read-your-writes.

A cached reader list is keyed by the reader's generation in Redis, which ``POST
/v1/users/<id>/ratings`` replaces (``serving/cache.py``). Reading it costs a Redis round
trip per request. Here each worker keeps the generations it has read, and a write makes
sure that no worker can use an old one after its 201:

- **Membership.** Each worker's listener thread subscribes to ``INVALIDATION_CHANNEL``
  (suffixed with the Redis database number),
  then registers in the sorted set ``MEMBERS_KEY`` with a lease that ends ``LEASE_S``
  after Redis ran the registration (Redis's clock) and renews it every ``RENEW_S``. The
  worker uses its copies only until ``LEASE_S - LEASE_MARGIN_S`` after it *sent* its last
  renewal whose reply said it was still a member (its own monotonic clock): that moment
  always comes before Redis's end of the lease. A renewal that finds it was not a member
  any more (the lease ran out, or a writer evicted it) clears every copy first.
- **A write** (``invalidate``), after the new generation is stored: reads the live
  members and publishes ``<reader> <ack key>`` on the channel (one pipeline); each
  member's listener drops its copy of that reader and then pushes its id to the ack key;
  the writer waits for every member's ack, at most ``ACK_TIMEOUT_S``. A member that has
  not acknowledged by then is evicted (removed from the set) and the writer waits until
  that member's lease has ended; its next renewal finds it evicted and clears.
- **In-flight reads.** A request that read a generation from Redis stores it only if no
  invalidation or clear happened in this worker since it sent the read (a counter
  checked under the lock), so a value read before a write cannot be stored after the
  write's invalidation was handled.

So after the 201 every worker either has dropped its copy (it acknowledged), or can no
longer use any copy (evicted: its lease ended before the 201, and it clears before it
trusts again), and a worker that joined later cleared when it registered. A member that
crashed delays a write until its lease ends (at most ``ACK_TIMEOUT_S + LEASE_S``). If
Redis fails in the middle of a write, other workers may use their copies until they
expire (``ENTRY_TTL_S``); the failure is logged and counted like any Redis failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid

log = logging.getLogger(__name__)

INVALIDATION_CHANNEL = "bookrec:ugen:invalidate"
MEMBERS_KEY = "bookrec:ugen:members"
ACK_PREFIX = "bookrec:ugen:ack:"
LEASE_S = 3.0
LEASE_MARGIN_S = 0.25  # clock-rate differences and the time between send and run
RENEW_S = 0.5
ACK_TIMEOUT_S = 1.0
ENTRY_TTL_S = 30.0
MAX_ENTRIES = 50_000

# Renew (or register) a member; 1 if it was a live member until now, 0 if not (first
# registration, lease ran out, or evicted): the caller then clears before it trusts.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if score and tonumber(score) >= now then return 1 end
return 0
"""
# The live members (lease not ended by Redis's clock).
_MEMBERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""
# Evict members; the milliseconds until the last of their leases ends.
_EVICT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, member in ipairs(ARGV) do
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score then
    redis.call('ZREM', KEYS[1], member)
    if tonumber(score) - now > wait then wait = tonumber(score) - now end
  end
end
return wait
"""


class LocalGenerations:
    """This worker's copies of readers' generations and the listener that keeps them safe
    to use (see the module docstring)."""

    def __init__(self, redis_url: str, socket_timeout_s: float):
        """Nothing connects until ``start()``."""
        import redis

        self.redis_url = redis_url
        self.socket_timeout_s = socket_timeout_s
        # Pub/sub channels are server-wide, not per database: one channel per database.
        db = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{INVALIDATION_CHANNEL}:{db}"
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._entries: dict[int, tuple[str, float]] = {}  # reader -> (generation, expires)
        self._lock = threading.Lock()
        self._seq = 0  # bumped by every invalidation and clear
        self._trusted_until = -float("inf")  # monotonic; copies are used only before it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None  # the listener's command connection (acks, renewals)

    # -- the request path --------------------------------------------------------------------
    def get(self, user_id: int) -> str | None:
        """The reader's generation from this worker's copy, or None (not held, expired,
        or the worker's lease is not current)."""
        now = time.monotonic()
        if now >= self._trusted_until:
            return None
        entry = self._entries.get(user_id)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def mark(self) -> int:
        """Call before reading a generation from Redis; pass the result to ``put``."""
        return self._seq

    def put(self, user_id: int, generation: str, mark: int) -> None:
        """Keep a generation read from Redis, unless an invalidation or clear happened since
        ``mark`` (the value may then be older than the write that caused it)."""
        with self._lock:
            if self._seq != mark or time.monotonic() >= self._trusted_until:
                return
            entries = self._entries
            entries.pop(user_id, None)  # re-inserted at the young end
            while len(entries) >= MAX_ENTRIES:
                del entries[next(iter(entries))]
            entries[user_id] = (generation, time.monotonic() + ENTRY_TTL_S)

    @property
    def started(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._thread is not None

    @property
    def trusted(self) -> bool:
        """True while this worker may use its copies (its lease is current)."""
        return time.monotonic() < self._trusted_until

    # -- invalidation --------------------------------------------------------------------------
    def _drop(self, user_id: int | None) -> None:
        """Forget one reader's copy (None: all of them); in-flight reads are not stored."""
        with self._lock:
            self._seq += 1
            if user_id is None:
                self._entries.clear()
            else:
                self._entries.pop(user_id, None)

    def invalidate(self, client, user_id: int) -> dict:
        """Make every worker drop its copy of ``user_id``'s generation (after the new one
        is stored); returns what happened (members, acks, evicted, waited_s). Raises
        ``redis.RedisError`` when Redis fails (the caller counts it)."""
        ack_key = ACK_PREFIX + uuid.uuid4().hex
        pipe = client.pipeline(transaction=False)
        pipe.eval(_MEMBERS, 1, MEMBERS_KEY)
        pipe.publish(self.channel, f"{user_id} {ack_key}")
        members_raw, _ = pipe.execute()
        members = {m.decode() for m in members_raw}
        acked: set[str] = set()
        clock = time.monotonic
        deadline = clock() + ACK_TIMEOUT_S
        try:
            while members - acked:
                left = deadline - clock()
                if left <= 0:
                    break
                item = client.blpop([ack_key], timeout=max(0.01, min(left, 0.5)))
                if item is not None:
                    acked.add(item[1].decode())
        finally:
            client.delete(ack_key)
        missing = sorted(members - acked)
        waited = 0.0
        if missing:
            wait_ms = client.eval(_EVICT, 1, MEMBERS_KEY, *missing)
            waited = max(0.0, float(wait_ms) / 1000.0) + LEASE_MARGIN_S
            log.warning("generations: %d of %d workers did not acknowledge an invalidation; "
                        "evicted, waiting %.2f s for their leases", len(missing), len(members),
                        waited)
            time.sleep(waited)
        return {"members": len(members), "acked": len(acked & members), "evicted": missing,
                "waited_s": waited}

    # -- the listener thread ---------------------------------------------------------------
    def start(self) -> None:
        """Start the listener (again in a forked child, whose inherited thread is gone)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._trusted_until = -float("inf")
        self._drop(None)
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._thread = threading.Thread(target=self._run, name="generations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the listener and leave the membership (writers stop waiting for us)."""
        self._stop.set()
        self._trusted_until = -float("inf")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        import redis

        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=1,
                                          socket_connect_timeout=1)
            client.zrem(MEMBERS_KEY, self.member)
            client.close()
        except (redis.RedisError, OSError):
            pass

    def _renew(self, client) -> None:
        """Renew the lease; clear first if this worker was not a live member."""
        sent = time.monotonic()
        was_member = client.eval(_RENEW, 1, MEMBERS_KEY, self.member, int(LEASE_S * 1000))
        if not was_member:
            self._drop(None)
        self._trusted_until = sent + LEASE_S - LEASE_MARGIN_S

    def _handle(self, client, message: dict) -> None:
        """One invalidation: drop the copy, then acknowledge."""
        data = message.get("data")
        if isinstance(data, bytes):
            data = data.decode()
        try:
            user_text, ack_key = str(data).split(" ", 1)
            user_id = int(user_text)
        except ValueError:
            log.warning("generations: ignored a malformed invalidation %r", data)
            return
        self._drop(user_id)
        pipe = client.pipeline(transaction=False)
        pipe.rpush(ack_key, self.member)
        pipe.expire(ack_key, 30)
        pipe.execute()

    def _run(self) -> None:
        import redis

        backoff = 0.2
        while not self._stop.is_set():
            client = pubsub = None
            try:
                client = redis.Redis.from_url(
                    self.redis_url,
                    socket_timeout=max(self.socket_timeout_s, 1.0),
                    socket_connect_timeout=max(self.socket_timeout_s, 1.0),
                )
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                deadline = time.monotonic() + 5
                while True:  # Redis confirms the subscription before we join
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None and message.get("type") == "subscribe":
                        break
                    if time.monotonic() > deadline:
                        raise redis.ConnectionError("subscription not confirmed")
                self._drop(None)  # whatever was kept before (re)joining may be old
                self._renew(client)
                backoff = 0.2
                next_renewal = time.monotonic() + RENEW_S
                while not self._stop.is_set():
                    message = pubsub.get_message(
                        timeout=max(0.0, min(0.1, next_renewal - time.monotonic()))
                    )
                    if message is not None and message.get("type") == "message":
                        self._handle(client, message)
                    if time.monotonic() >= next_renewal:
                        self._renew(client)
                        next_renewal = time.monotonic() + RENEW_S
            except (redis.RedisError, OSError, AttributeError) as exc:
                self._trusted_until = -float("inf")
                self._drop(None)
                log.warning("generations: listener lost Redis (%s); reconnecting",
                            type(exc).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                for thing in (pubsub, client):
                    if thing is not None:
                        with contextlib.suppress(Exception):  # closing a broken connection
                            thing.close()
        self._trusted_until = -float("inf")
