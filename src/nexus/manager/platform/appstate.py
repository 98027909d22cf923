"""Process-wide manager state, stored on ``app.state.nexus``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database
from nexus.core.settings import Settings
from nexus.core.signing import KeyRing
from nexus.manager.platform.ratelimit import RateLimiter
from nexus.manager.platform.rbac import Principal


class Authenticator(Protocol):
    """Turns a bearer credential into a principal (the auth feature's ``authenticate``);
    the app plugs it in, so the platform stands below every feature."""

    def __call__(
        self,
        *,
        db_session: AsyncSession,
        keys: KeyRing,
        bearer: str,
        cache_ttl_s: float = 0.0,
        token_max_days: int = 0,
    ) -> Awaitable[Principal]: ...


@dataclass
class ManagerState:
    """Everything a request handler or loop needs besides the request itself."""

    settings: Settings
    db: Database
    keys: KeyRing | None = None  # JWT signing keys, set at start-up (bootstrap)
    limiter: RateLimiter | None = None
    replica_id: str = ""
    authenticator: Authenticator | None = None  # set by the app factory (features/auth)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    extras: dict[str, Any] = field(default_factory=dict)

    def signing_keys(self) -> KeyRing:
        """The JWT key ring (loaded by the start-up bootstrap, before any request)."""
        if self.keys is None:
            raise RuntimeError("signing keys not loaded: the app did not run its start-up")
        return self.keys

    def authenticate(self) -> Authenticator:
        """The authenticator the app factory plugged in."""
        if self.authenticator is None:
            raise RuntimeError("no authenticator: the app factory did not plug in features/auth")
        return self.authenticator

    def spawn(self, coro: Any, *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
