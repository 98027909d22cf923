"""Process-wide manager state, stored on ``app.state.nexus``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from nexus.core.db import Database
from nexus.core.settings import Settings
from nexus.core.signing import KeyRing
from nexus.manager.ratelimit import RateLimiter


@dataclass
class ManagerState:
    """Everything a request handler or loop needs besides the request itself."""

    settings: Settings
    db: Database
    keys: KeyRing | None = None  # JWT signing keys, set at start-up (bootstrap)
    limiter: RateLimiter | None = None
    replica_id: str = ""
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    extras: dict[str, Any] = field(default_factory=dict)

    def signing_keys(self) -> KeyRing:
        """The JWT key ring (loaded by the start-up bootstrap, before any request)."""
        if self.keys is None:
            raise RuntimeError("signing keys not loaded: the app did not run its start-up")
        return self.keys

    def spawn(self, coro: Any, *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
