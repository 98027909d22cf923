"""/v1/notifications: your notifications, read state and preferences."""

from __future__ import annotations

from fastapi import APIRouter, Query

from nexus.core.paging import LIMIT_DOC
from nexus.manager.features.notifications import service
from nexus.manager.features.notifications.schemas import (
    NotificationPage,
    NotificationPrefsRead,
    NotificationPrefsUpdate,
    NotificationRead,
    NotificationSummary,
    NotificationUpdate,
    ReadAllResult,
)
from nexus.manager.platform.deps import CurrentPrincipal, DbSession

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


@router.get("", response_model=NotificationPage)
async def list_notifications(
    db: DbSession,
    principal: CurrentPrincipal,
    unread: bool = Query(False, description="only unread ones"),
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=40, description="the previous `next_cursor`"),
) -> NotificationPage:
    """Your notifications, newest first. They arrive live on `GET /v1/events/stream` as
    `notification.created` events (seen only by you)."""
    rows, next_cursor = await service.list_notifications(
        db_session=db, principal=principal, unread_only=unread, cursor=cursor, limit=limit
    )
    return NotificationPage(
        items=[NotificationRead.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.get("/summary", response_model=NotificationSummary)
async def notification_summary(db: DbSession, principal: CurrentPrincipal) -> NotificationSummary:
    """How many notifications you have and how many are unread (for a badge)."""
    unread, total = await service.summary(db_session=db, principal=principal)
    return NotificationSummary(unread=unread, total=total)


@router.post("/read-all", response_model=ReadAllResult)
async def read_all(db: DbSession, principal: CurrentPrincipal) -> ReadAllResult:
    """Mark every unread notification of yours read."""
    return ReadAllResult(marked=await service.read_all(db_session=db, principal=principal))


@router.get("/preferences", response_model=NotificationPrefsRead)
async def get_preferences(db: DbSession, principal: CurrentPrincipal) -> NotificationPrefsRead:
    """Which kinds of notification you receive."""
    return await service.get_prefs(db_session=db, principal=principal)


@router.put("/preferences", response_model=NotificationPrefsRead)
async def set_preferences(
    body: NotificationPrefsUpdate, db: DbSession, principal: CurrentPrincipal
) -> NotificationPrefsRead:
    """Mute everything (`muted`) or some kinds (`disabled_kinds`); applies to what happens
    from now on."""
    return await service.set_prefs(db_session=db, principal=principal, body=body)


@router.patch("/{notification_id}", response_model=NotificationRead)
async def update_notification(
    notification_id: str, body: NotificationUpdate, db: DbSession, principal: CurrentPrincipal
) -> NotificationRead:
    """Mark a notification of yours read (`{"read": true}`) or unread again."""
    n = await service.mark(
        db_session=db, principal=principal, notification_id=notification_id, read=body.read
    )
    return NotificationRead.model_validate(n)
