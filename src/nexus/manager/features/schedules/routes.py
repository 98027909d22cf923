"""/v1/schedules: cron-timed actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, cursor_offset
from nexus.core.paging import next_offset_cursor as next_cursor
from nexus.manager.features.schedules import service
from nexus.manager.features.schedules.schemas import (
    ScheduleCreate,
    SchedulePage,
    ScheduleRead,
    ScheduleRunPage,
    ScheduleUpdate,
)
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
NOT_YOURS: dict[int | str, dict[str, Any]] = {
    403: problem("a viewer, or not your schedule"),
    404: problem("no such schedule"),
}


@router.post(
    "",
    status_code=201,
    response_model=ScheduleRead,
    responses={
        403: problem("viewers may not create schedules; or the resource is not yours to change"),
        404: problem("no such VM or group (or not one you may see)"),
        422: problem("a bad cron expression, time zone, action or args"),
    },
    dependencies=[CreateLimit],
)
async def create_schedule(
    body: ScheduleCreate, db: DbSession, principal: CurrentPrincipal
) -> ScheduleRead:
    """Run `action` on a VM or group at the times of `cron` in `timezone` (DST-correct).
    Each run is a `schedule.run` operation, listed at `/v1/schedules/{id}/runs`; missed runs
    (no manager running) run once, not once per miss. A schedule whose resource is deleted
    turns itself off (`enabled: false`, `disabled_reason`)."""
    return ScheduleRead.model_validate(
        await service.create_schedule(db_session=db, principal=principal, body=body)
    )


@router.get("", response_model=SchedulePage)
async def list_schedules(
    db: DbSession,
    principal: CurrentPrincipal,
    resource_id: str | None = Query(None, max_length=40, description="only this VM's/group's"),
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> SchedulePage:
    """Schedules you may see (admin: all), newest first."""
    offset = cursor_offset(cursor)
    rows, total = await service.list_schedules(
        db_session=db, principal=principal, resource_id=resource_id, limit=limit, offset=offset
    )
    return SchedulePage(
        items=[ScheduleRead.model_validate(r) for r in rows],
        next_cursor=next_cursor(offset, len(rows), limit, offset + limit < total),
    )


@router.get("/{schedule_id}", response_model=ScheduleRead, responses={404: NOT_YOURS[404]})
async def get_schedule(
    schedule_id: str, db: DbSession, principal: CurrentPrincipal
) -> ScheduleRead:
    """One schedule."""
    return ScheduleRead.model_validate(
        await service.get_schedule(db_session=db, principal=principal, schedule_id=schedule_id)
    )


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleRead,
    responses={**NOT_YOURS, 422: problem("a bad cron expression, time zone, action or args")},
)
async def update_schedule(
    schedule_id: str, body: ScheduleUpdate, db: DbSession, principal: CurrentPrincipal
) -> ScheduleRead:
    """Change a schedule; enabling it again (after it turned itself off too) needs its
    resource to exist."""
    return ScheduleRead.model_validate(
        await service.update_schedule(
            db_session=db, principal=principal, schedule_id=schedule_id, body=body
        )
    )


@router.delete("/{schedule_id}", status_code=204, responses=NOT_YOURS)
async def delete_schedule(schedule_id: str, db: DbSession, principal: CurrentPrincipal) -> Response:
    """Delete a schedule and its run history."""
    await service.delete_schedule(db_session=db, principal=principal, schedule_id=schedule_id)
    return Response(status_code=204)


@router.get("/{schedule_id}/runs", response_model=ScheduleRunPage, responses={404: NOT_YOURS[404]})
async def list_runs(
    schedule_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> ScheduleRunPage:
    """A schedule's runs, newest first: when each was due, its operation and outcome, and
    how many due times it folded in after downtime (`missed`)."""
    offset = cursor_offset(cursor)
    runs, total = await service.list_runs(
        db_session=db, principal=principal, schedule_id=schedule_id, limit=limit, offset=offset
    )
    return ScheduleRunPage(
        items=runs, next_cursor=next_cursor(offset, len(runs), limit, offset + limit < total)
    )
