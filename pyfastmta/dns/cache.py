"""A TTL cache of DNS answers in which concurrent lookups of one key share one query.

A worker delivers to many recipients of one domain at once; without sharing, every one of them
would send the same query while the first is still out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values kept until their own expiry; lookups in flight are shared, failures are not kept.

    fetch() returns (value, ttl_seconds); a ttl of 0 or less keeps nothing. When max_entries is
    reached, expired entries go first, then the oldest ones, so memory stays bounded however many
    domains a worker meets.
    """

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._in_flight: dict[K, asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> V | None:
        """The value kept for key, or None when there is none (or it expired)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return None

    async def get(self, key: K, fetch: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock():
                return entry[1]
            del self._entries[key]
        shared = self._in_flight.get(key)
        if shared is not None:
            # shield: one waiter being cancelled must not cancel the query the others wait for
            return await asyncio.shield(shared)
        task = asyncio.ensure_future(self._fetch_and_store(key, fetch))
        self._in_flight[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Future) -> None:
        self._in_flight.pop(key, None)
        if not task.cancelled():
            # Retrieved here so a failure whose every waiter was cancelled is not reported as
            # an exception nobody looked at; waiters still present get it from their await.
            task.exception()

    async def _fetch_and_store(self, key: K, fetch: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        value, ttl = await fetch()
        if ttl > 0:
            if len(self._entries) >= self.max_entries:
                self._evict()
            self._entries[key] = (self._clock() + ttl, value)
        return value

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expiry, _) in self._entries.items() if expiry <= now]:
            del self._entries[key]
        # dicts keep insertion order: the first keys are the oldest entries
        excess = len(self._entries) - self.max_entries * 9 // 10
        for key in list(self._entries)[:max(excess, 0)]:
            del self._entries[key]
