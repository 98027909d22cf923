"""/v1/audit: the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC
from nexus.manager.features.audit import service
from nexus.manager.features.audit.schemas import AuditEventRead, AuditPage
from nexus.manager.platform.deps import CurrentPrincipal, DbSession

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
async def list_audit(
    db: DbSession,
    principal: CurrentPrincipal,
    actor: str | None = Query(None, max_length=64, description="user id or username"),
    resource_type: str | None = Query(None, max_length=32),
    resource_id: str | None = Query(None, max_length=64),
    action: str | None = Query(None, max_length=64),
    outcome: Literal["success", "denied", "failure"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
) -> AuditPage:
    """Audit events, newest first. Admins see all; others see their own actions."""
    rows, nxt = await service.list_events(
        db_session=db,
        principal=principal,
        actor=actor,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        outcome=outcome,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return AuditPage(items=[AuditEventRead.model_validate(r) for r in rows], next_cursor=nxt)
