"""The cache of successful authentications; every revocation (service or repo) clears it."""

from __future__ import annotations

import time
from datetime import datetime

from nexus.core.security import hash_secret
from nexus.core.timeutil import utcnow
from nexus.manager.platform.rbac import Principal

__all__ = ["PrincipalCache", "principal_cache"]


class PrincipalCache:
    """A short-lived cache of successful authentications (bearer hash -> principal).

    Saves the user/session/token lookups on busy clients. Every revocation in this process
    (logout, token revoke, session revoke, user change) clears it; another manager replica
    sees a revocation within ``ttl_s`` (``auth_cache_ttl_s``, 0 disables the cache).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, bearer: str) -> Principal | None:
        """The cached principal of ``bearer``, if still fresh."""
        hit = self._entries.get(hash_secret(bearer))
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            self._entries.pop(hash_secret(bearer), None)
            return None
        return hit[0]

    def put(
        self, bearer: str, principal: Principal, ttl_s: float, expires: datetime | None
    ) -> None:
        """Remember ``principal`` for ``ttl_s`` (never past ``expires``)."""
        if ttl_s <= 0:
            return
        if expires is not None:
            ttl_s = min(ttl_s, (expires - utcnow()).total_seconds())
        if ttl_s > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[hash_secret(bearer)] = (principal, time.monotonic() + ttl_s)

    def invalidate(self) -> None:
        """Forget every cached authentication."""
        self._entries.clear()


principal_cache = PrincipalCache()
