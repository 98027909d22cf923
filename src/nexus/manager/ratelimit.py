"""Rate limits with the ``limits`` library: per IP on auth, per user on creates, global on
expensive operations. Memory storage by default, Redis by URL (``rate_limit_storage_url``)."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from nexus.core.errors import RateLimited
from nexus.core.settings import Settings


class RateLimiter:
    """Named limits; :meth:`hit` raises :class:`RateLimited` (429 + Retry-After) when exceeded."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        url = settings.rate_limit_storage_url
        self._storage = storage_from_string(url if url.startswith("async+") else f"async+{url}")
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._limits = {
            "auth": parse(settings.rate_limit_auth),
            "create": parse(settings.rate_limit_create),
            "expensive": parse(settings.rate_limit_expensive),
        }

    async def hit(self, name: str, key: str) -> None:
        """Count one request against limit ``name`` for ``key``."""
        if not self.enabled:
            return
        item = self._limits[name]
        if await self._limiter.hit(item, name, key):
            return
        stats = await self._limiter.get_window_stats(item, name, key)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"rate limit '{name}' ({item}) exceeded; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )

    async def reset(self) -> None:
        """Forget every counter (tests)."""
        await self._storage.reset()  # type: ignore[misc]
