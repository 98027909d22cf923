"""System values and database leases."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database
from nexus.core.logging import get_logger
from nexus.core.security import new_secret
from nexus.core.timeutil import utcnow
from nexus.manager.features.system.models import Lease, SystemValue
from nexus.manager.platform.appstate import ManagerState

log = get_logger(__name__)


async def get_or_create_value(db: Database, key: str) -> str:
    """Return the system value ``key``, creating a random secret the first time."""
    async with db.session() as s:
        row = await s.get(SystemValue, key)
        if row is not None:
            return row.value
    try:
        async with db.session() as s:
            value = new_secret(48)
            s.add(SystemValue(key=key, value=value))
        return value
    except IntegrityError:  # another replica won the race
        async with db.session() as s:
            row = await s.get(SystemValue, key)
            if row is None:
                raise RuntimeError(f"system value {key} vanished") from None
            return row.value


async def try_acquire_lease(
    *, db_session: AsyncSession, name: str, holder: str, ttl_s: float
) -> bool:
    """Take or renew the lease ``name`` for ``holder``; True when this holder now owns it."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    lease = await db_session.get(Lease, name, with_for_update=True)
    if lease is None:
        db_session.add(Lease(name=name, holder=holder, expires_at=expires))
        try:
            await db_session.flush()
        except IntegrityError:
            return False
        return True
    if lease.holder == holder or lease.expires_at < now:
        res = await db_session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == lease.holder)
            .values(holder=holder, expires_at=expires)
        )
        return bool(res.rowcount)  # type: ignore[attr-defined]
    return False


async def lease_holder(*, db_session: AsyncSession, name: str) -> str | None:
    """Who holds the lease ``name`` (expired or not)."""
    return (await db_session.execute(select(Lease.holder).where(Lease.name == name))).scalar()


async def run_leased(
    state: ManagerState,
    name: str,
    interval_s: float,
    work: Callable[[ManagerState], Awaitable[Any]],
    *,
    ttl_s: float | None = None,
) -> None:
    """Forever: every ``interval_s``, run ``work`` if this replica holds (or takes) the lease
    ``name``. An error is logged and the loop goes on; the lease lasts ``ttl_s`` (default
    three intervals, at least 15 s), so another replica takes over when this one dies."""
    ttl = ttl_s if ttl_s is not None else max(interval_s * 3, 15.0)
    while True:
        try:
            async with state.db.session() as s:
                leader = await try_acquire_lease(
                    db_session=s, name=name, holder=state.replica_id, ttl_s=ttl
                )
            if leader:
                await work(state)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("loop.error", loop=name)
        await asyncio.sleep(interval_s)
