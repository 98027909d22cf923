"""Process-wide manager state, stored on ``app.state.nexus``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from nexus.core.db import Database
from nexus.core.settings import Settings
from nexus.manager.ratelimit import RateLimiter


@dataclass
class ManagerState:
    """Everything a request handler or loop needs besides the request itself."""

    settings: Settings
    db: Database
    jwt_key: str = ""
    limiter: RateLimiter | None = None
    replica_id: str = ""
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    extras: dict[str, Any] = field(default_factory=dict)

    def spawn(self, coro: Any, *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
