"""Operations: create, run in the background with progress, wait, list, cancel.

A feature that does long work calls :func:`start` with an async ``work(progress)`` function; the
operation row goes pending -> running -> succeeded/failed. On manager start
:func:`fail_interrupted` marks whatever was left running as failed, with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database
from nexus.core.errors import Conflict, Problem
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.operations.models import TERMINAL, Operation
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal, ensure_can_modify, ensure_visible

log = get_logger(__name__)

Progress = Callable[[int, str | None], Awaitable[None]]
Work = Callable[[Progress], Awaitable[dict[str, Any] | None]]


def create(
    s: AsyncSession,
    *,
    principal: Principal,
    kind: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> Operation:
    """Add a pending operation to the caller's transaction."""
    op = Operation(
        id=new_id("op"),
        kind=kind,
        status="pending",
        progress=0,
        resource_type=resource_type,
        resource_id=resource_id,
        created_by_user_id=principal.user_id,
    )
    s.add(op)
    return op


async def _set(db: Database, op_id: str, **values: Any) -> None:
    # through the ORM, so each change is an event (``operation.started``, ``.updated``...)
    async with db.session() as s:
        op = await s.get(Operation, op_id)
        if op is None:
            return
        for k, v in values.items():
            setattr(op, k, v)


def start(state: ManagerState, op_id: str, work: Work) -> asyncio.Task[Any]:
    """Run ``work`` for the (committed) operation ``op_id`` in the background."""

    async def progress(pct: int, message: str | None = None) -> None:
        await _set(state.db, op_id, progress=max(0, min(100, pct)), message=message)

    async def runner() -> None:
        await _set(state.db, op_id, status="running", started_at=utcnow())
        try:
            result = await work(progress)
        except asyncio.CancelledError:
            await asyncio.shield(
                _set(state.db, op_id, status="cancelled", error="cancelled", finished_at=utcnow())
            )
            raise
        except Problem as exc:
            await _set(state.db, op_id, status="failed", error=exc.detail, finished_at=utcnow())
        except Exception as exc:
            log.exception("operation.failed", operation_id=op_id)
            await _set(
                state.db,
                op_id,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                finished_at=utcnow(),
            )
        else:
            await _set(
                state.db,
                op_id,
                status="succeeded",
                progress=100,
                result=result,
                finished_at=utcnow(),
            )

    task = state.spawn(runner(), name=f"operation:{op_id}")
    state.extras.setdefault("op_tasks", {})[op_id] = task
    task.add_done_callback(lambda _t: state.extras["op_tasks"].pop(op_id, None))
    return task


async def get(*, db_session: AsyncSession, principal: Principal, op_id: str) -> Operation:
    """An operation the caller may see."""
    op = await db_session.get(Operation, op_id)
    return ensure_visible(principal, op, "operation", op_id)


async def wait(
    *, state: ManagerState, principal: Principal, op_id: str, timeout_s: float
) -> Operation:
    """Poll until the operation is terminal or ``timeout_s`` passes; returns its latest row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.05
    while True:
        async with state.db.session() as s:
            op = await get(db_session=s, principal=principal, op_id=op_id)
        if op.status in TERMINAL or loop.time() >= deadline:
            return op
        # Run here: wake the moment its task ends. Run by another replica: poll the row.
        task = state.extras.get("op_tasks", {}).get(op_id)
        pause = min(delay, max(0.0, deadline - loop.time()))
        if task is not None:
            await asyncio.wait({task}, timeout=max(pause, 0.5))  # never raises for the task
        else:
            await asyncio.sleep(pause)
        delay = min(delay * 1.5, 0.5)


async def list_ops(
    *,
    db_session: AsyncSession,
    principal: Principal,
    status: str | None,
    resource_id: str | None,
    limit: int,
    offset: int,
) -> list[Operation]:
    """Operations the caller may see, newest first."""
    q = select(Operation).order_by(Operation.created_at.desc()).limit(limit).offset(offset)
    if not principal.is_admin:
        q = q.where(Operation.created_by_user_id == principal.user_id)
    if status:
        q = q.where(Operation.status == status)
    if resource_id:
        q = q.where(Operation.resource_id == resource_id)
    return list((await db_session.execute(q)).scalars().all())


async def cancel(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, op_id: str
) -> Operation:
    """Cancel a pending or running operation."""
    op = await get(db_session=db_session, principal=principal, op_id=op_id)
    ensure_can_modify(principal, op, "operation", "operation.cancel")
    if op.status in TERMINAL:
        raise Conflict(f"operation is already {op.status}")
    task = state.extras.get("op_tasks", {}).get(op_id)
    if task is not None:
        task.cancel()
    op.status, op.error, op.finished_at = "cancelled", "cancelled by user", utcnow()
    audit.record(
        db_session,
        actor=principal,
        action="operation.cancel",
        resource_type="operation",
        resource_id=op.id,
    )
    return op


async def fail_interrupted(db: Database) -> int:
    """Mark operations left pending/running by a previous manager process as failed."""
    async with db.session() as s:
        rows = (
            await s.execute(select(Operation).where(Operation.status.in_(("pending", "running"))))
        ).scalars()
        n = 0
        for op in rows:  # row by row: each is an ``operation.failed`` event
            op.status = "failed"
            op.error = "interrupted: the manager restarted while this operation ran"
            op.finished_at = utcnow()
            n += 1
        return n
