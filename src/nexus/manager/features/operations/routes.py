"""/v1/operations: long-running tasks."""

from __future__ import annotations

from fastapi import APIRouter, Query

from nexus.core.paging import (
    CURSOR_DOC,
    CURSOR_MAX_LEN,
    LIMIT_DOC,
    cursor_offset,
    next_offset_cursor,
)
from nexus.manager.features.operations import service
from nexus.manager.features.operations.schemas import OperationPage, OperationRead, OperationStatus
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/operations", tags=["operations"])


@router.get("", response_model=OperationPage)
async def list_operations(
    db: DbSession,
    principal: CurrentPrincipal,
    status: OperationStatus | None = None,
    resource_id: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> OperationPage:
    """Operations you may see, newest first."""
    offset = cursor_offset(cursor)
    ops = await service.list_ops(
        db_session=db,
        principal=principal,
        status=status,
        resource_id=resource_id,
        limit=limit + 1,
        offset=offset,
    )
    return OperationPage(
        items=[OperationRead.model_validate(o) for o in ops[:limit]],
        next_cursor=next_offset_cursor(offset, min(len(ops), limit), limit, len(ops) > limit),
    )


@router.get("/{op_id}", response_model=OperationRead)
async def get_operation(
    op_id: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description="block until the operation ends or timeout passes"),
    timeout: float = Query(60.0, gt=0, le=3600, description="seconds to wait at most"),
) -> OperationRead:
    """One operation; ``?wait=true&timeout=S`` blocks until it is terminal."""
    if wait:
        op = await service.wait(state=state, principal=principal, op_id=op_id, timeout_s=timeout)
    else:
        op = await service.get(db_session=db, principal=principal, op_id=op_id)
    return OperationRead.model_validate(op)


@router.post("/{op_id}/cancel", response_model=OperationRead)
async def cancel_operation(
    op_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> OperationRead:
    """Cancel a pending or running operation."""
    op = await service.cancel(db_session=db, state=state, principal=principal, op_id=op_id)
    return OperationRead.model_validate(op)
