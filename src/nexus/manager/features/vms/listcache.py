"""A small cache of serialised VM listings (``GET /v1/vms``), the platform's hottest read.

Entries are keyed by the caller and the query, and are dropped the moment this process
writes a VM or a NIC (any ORM flush or ORM update/delete touching those tables bumps a
generation counter). Writes made by *another* manager replica become visible after about
``list_cache_ttl_s`` (default 1 s, plus one refresh; 0 turns the cache off).

An expired entry is refreshed in the background while callers keep getting it (for at most
one more TTL): under load a refresh waits for a busy event loop on each of its database
round trips, and no request should pay for that. ``compute`` therefore opens its own
database session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from nexus.core.logging import get_logger

log = get_logger(__name__)

_WATCHED = {"vms", "vm_nics"}
_MAX_ENTRIES = 2048


class ListingCache:
    """Serialised responses by key; cleared on every local VM/NIC write."""

    def __init__(self) -> None:
        self.generation = 0
        self._entries: dict[Hashable, tuple[bytes, float]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._refreshing: dict[Hashable, asyncio.Task[None]] = {}

    async def get_or_compute(
        self, key: Hashable, ttl_s: float, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The cached body, or ``compute()``: once for all concurrent callers of ``key``.

        An entry that expired less than one TTL ago (and saw no local write) is returned at
        once while a background task refreshes it, so expiry causes no latency spike.
        """
        if ttl_s <= 0:
            return await compute()
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and entry[1] >= now:
            return entry[0]
        if entry is not None and now - entry[1] < ttl_s:
            if key not in self._refreshing:
                task = asyncio.ensure_future(self._refresh(key, ttl_s, compute))
                self._refreshing[key] = task
            return entry[0]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            fresh = self.get(key)  # refreshed by the caller we waited for?
            if fresh is not None:
                return fresh
            generation = self.generation
            body = await compute()
            self.put(key, body, ttl_s, generation)
        if len(self._locks) > _MAX_ENTRIES:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return body

    async def _refresh(
        self, key: Hashable, ttl_s: float, compute: Callable[[], Awaitable[bytes]]
    ) -> None:
        generation = self.generation
        try:
            self.put(key, await compute(), ttl_s, generation)
        except Exception as exc:  # the next caller computes in line and sees the error
            log.warning("listcache.refresh_failed", error=repr(exc)[:300])
        finally:
            self._refreshing.pop(key, None)

    def get(self, key: Hashable) -> bytes | None:
        hit = self._entries.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: Hashable, body: bytes, ttl_s: float, generation: int) -> None:
        """Store ``body`` unless a write happened since ``generation`` was read."""
        if ttl_s <= 0 or generation != self.generation:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (body, time.monotonic() + ttl_s)

    def bump(self) -> None:
        self.generation += 1
        self._entries.clear()


cache = ListingCache()


def _touches(objs: Any) -> bool:
    return any(getattr(o, "__tablename__", None) in _WATCHED for o in objs)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx: UOWTransaction) -> None:
    if _touches(session.new) or _touches(session.dirty) or _touches(session.deleted):
        cache.bump()


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and state.bind_mapper is not None:
        if state.bind_mapper.local_table.name in _WATCHED:  # type: ignore[attr-defined]
            cache.bump()
