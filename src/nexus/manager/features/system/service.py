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
from nexus.manager.features.system.schemas import LeaderList, LeaderRead
from nexus.manager.platform import metrics
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal, ensure_role

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


def _leading(state: ManagerState) -> dict[str, bool]:
    """This replica's view of the loops it runs: name -> holds the lease now."""
    leading: dict[str, bool] = state.extras.setdefault("leases", {})
    return leading


def _set_leading(state: ManagerState, name: str, leader: bool) -> None:
    was = _leading(state).get(name, False)
    if was is not leader:
        log.info("lease.acquired" if leader else "lease.lost", loop=name, replica=state.replica_id)
    _leading(state)[name] = leader
    metrics.LOOP_LEADER.labels(name).set(1 if leader else 0)


async def _renew(state: ManagerState, name: str, ttl: float) -> bool:
    async with state.db.session() as s:
        return await try_acquire_lease(db_session=s, name=name, holder=state.replica_id, ttl_s=ttl)


async def run_leased(
    state: ManagerState,
    name: str,
    interval_s: float,
    work: Callable[[ManagerState], Awaitable[Any]],
    *,
    ttl_s: float | None = None,
) -> None:
    """Forever: run ``work`` every ``interval_s`` while this replica holds the lease ``name``.

    The lease lasts ``ttl_s`` (default: the ``lease_ttl_s`` setting, 10 s) whatever the
    interval: the leader renews it every third of it (also while ``work`` runs), and the
    other replicas try to take it as often, so a dead leader's loops are taken over within
    ``ttl_s`` plus a third (≤ 15 s with the default) — not three intervals of a slow loop.
    An error in ``work`` is logged and the loop goes on. On shutdown the lease is released
    so the next replica takes over at once. The holder is visible at
    ``GET /v1/system/leaders`` and as the ``nexus_loop_leader`` metric."""
    ttl = ttl_s if ttl_s is not None else state.settings.lease_ttl_s
    tick = ttl / 3
    loop = asyncio.get_running_loop()
    next_run = 0.0
    _set_leading(state, name, False)
    try:
        while True:
            try:
                leader = await _renew(state, name, ttl)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease.error", loop=name)
                leader = False
            _set_leading(state, name, leader)
            if leader and loop.time() >= next_run:
                next_run = loop.time() + interval_s
                await _work_renewing(state, name, ttl, work)
            wait = tick if not leader else min(tick, max(0.0, next_run - loop.time()))
            await asyncio.sleep(wait)
    finally:
        if _leading(state).get(name):
            _set_leading(state, name, False)
            await asyncio.shield(_release(state, name))


async def _work_renewing(
    state: ManagerState,
    name: str,
    ttl: float,
    work: Callable[[ManagerState], Awaitable[Any]],
) -> None:
    """Run ``work`` once, renewing the lease every third of ``ttl`` meanwhile."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                _set_leading(state, name, await _renew(state, name, ttl))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease.error", loop=name)

    renewer = asyncio.create_task(renew(), name=f"{name}-lease")
    try:
        await work(state)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("loop.error", loop=name)
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)


async def _release(state: ManagerState, name: str) -> None:
    """Give the lease up (shutdown): expire it now if this replica still holds it."""
    try:
        async with state.db.session() as s:
            await s.execute(
                update(Lease)
                .where(Lease.name == name, Lease.holder == state.replica_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
    except Exception:
        log.warning("lease.release_failed", loop=name)


async def list_leaders(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, limit: int = 100
) -> LeaderList:
    """Every background loop's lease: who holds it, until when, and whether it is this
    replica (admin)."""
    ensure_role(principal, "system.leaders.read", "system", "admin")
    now = utcnow()
    rows = (
        (await db_session.execute(select(Lease).order_by(Lease.name).limit(limit))).scalars().all()
    )
    return LeaderList(
        items=[
            LeaderRead(
                loop=r.name,
                holder=r.holder,
                expires_at=r.expires_at,
                live=r.expires_at >= now,
                this_replica=r.holder == state.replica_id,
            )
            for r in rows
        ],
    )
