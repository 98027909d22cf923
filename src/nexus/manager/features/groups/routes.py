"""/v1/groups: instance groups."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, page_of
from nexus.manager.features.groups import service
from nexus.manager.features.groups.schemas import (
    GroupCreate,
    GroupPage,
    GroupRead,
    GroupScale,
    GroupUpdate,
)
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession

router = APIRouter(prefix="/v1/groups", tags=["groups"])
NOT_YOURS: dict[int | str, dict[str, Any]] = {
    403: problem("a viewer, or not your group"),
    404: problem("no such group"),
}


@router.post(
    "",
    status_code=201,
    response_model=GroupRead,
    responses={
        403: problem("viewers may not create groups"),
        409: problem("you already have a group of that name"),
        422: problem("min/max/desired out of order, or a bad template or rule"),
    },
    dependencies=[CreateLimit],
)
async def create_group(body: GroupCreate, db: DbSession, principal: CurrentPrincipal) -> GroupRead:
    """Create an instance group: the manager keeps `desired` VMs (`<name>-<n>`) running from
    `template`, replacing members that fail; `scale_rule` moves `desired` between `min` and
    `max` from the members' CPU. Members count against your quota."""
    g = await service.create_group(db_session=db, principal=principal, body=body)
    return await service.read(db, g)


@router.get("", response_model=GroupPage)
async def list_groups(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> GroupPage:
    """Groups you may see (admin: all)."""
    rows, nxt = page_of(
        await service.list_groups(db_session=db, principal=principal), cursor, limit
    )
    return GroupPage(items=[await service.read(db, g) for g in rows], next_cursor=nxt)


@router.get("/{group_id}", response_model=GroupRead, responses={404: NOT_YOURS[404]})
async def get_group(group_id: str, db: DbSession, principal: CurrentPrincipal) -> GroupRead:
    """One group with its members."""
    g = await service.get_group(db_session=db, principal=principal, group_id=group_id)
    return await service.read(db, g)


@router.patch("/{group_id}", response_model=GroupRead, responses=NOT_YOURS)
async def update_group(
    group_id: str, body: GroupUpdate, db: DbSession, principal: CurrentPrincipal
) -> GroupRead:
    """Change min/max/desired, the scale rule (`null` removes it) or the description."""
    g = await service.update_group(db_session=db, principal=principal, group_id=group_id, body=body)
    return await service.read(db, g)


@router.post("/{group_id}/scale", response_model=GroupRead, responses=NOT_YOURS)
async def scale_group(
    group_id: str, body: GroupScale, db: DbSession, principal: CurrentPrincipal
) -> GroupRead:
    """Set `desired` (clamped to min..max); members follow within one policy pass."""
    g = await service.scale(
        db_session=db, principal=principal, group_id=group_id, desired=body.desired
    )
    return await service.read(db, g)


@router.delete("/{group_id}", status_code=204, responses=NOT_YOURS)
async def delete_group(group_id: str, db: DbSession, principal: CurrentPrincipal) -> Response:
    """Delete a group; its member VMs are deleted by the next policy pass."""
    await service.delete_group(db_session=db, principal=principal, group_id=group_id)
    return Response(status_code=204)
