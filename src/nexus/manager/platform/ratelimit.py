"""Rate limits with the ``limits`` library: per IP on auth, per username on failed logins
(an escalating backoff: several limits, e.g. 5/minute;20/hour;100/day), per user on creates,
global on expensive operations. Memory storage by default, Redis by URL
(``rate_limit_storage_url``) so several replicas share the counters."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from nexus.core.errors import RateLimited
from nexus.core.settings import Settings
from nexus.manager.platform.metrics import RATE_LIMITED


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
        self._tiers: dict[str, list[RateLimitItem]] = {
            "login_user": parse_many(settings.rate_limit_login_user),
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
        RATE_LIMITED.labels(name).inc()
        raise RateLimited(
            f"rate limit '{name}' ({item}) exceeded; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )

    async def check_tiers(self, name: str, key: str) -> None:
        """Raise :class:`RateLimited` when any limit of the tiered limit ``name`` is used up
        for ``key`` (counts nothing: failures are counted with :meth:`hit_tiers`)."""
        if not self.enabled:
            return
        for item in self._tiers[name]:
            if not await self._limiter.test(item, name, key):
                stats = await self._limiter.get_window_stats(item, name, key)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                RATE_LIMITED.labels(name).inc()
                raise RateLimited(
                    f"too many failed attempts for this account ({item}); retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )

    async def hit_tiers(self, name: str, key: str) -> None:
        """Count one failure against every limit of the tiered limit ``name``."""
        if not self.enabled:
            return
        for item in self._tiers[name]:
            await self._limiter.hit(item, name, key)

    async def reset(self) -> None:
        """Forget every counter (tests)."""
        await self._storage.reset()  # type: ignore[misc]
