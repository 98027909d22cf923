"""/v1/templates: reusable VM specs (HTTP only)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from nexus.core.paging import (
    CURSOR_DOC,
    CURSOR_MAX_LEN,
    LIMIT_DOC,
    cursor_offset,
    next_offset_cursor,
)
from nexus.manager.features.operations.responses import ACCEPTED, WAIT_DOC, respond
from nexus.manager.features.templates import service
from nexus.manager.features.templates.schemas import (
    TemplateCreate,
    TemplateInstantiate,
    TemplatePage,
    TemplateRead,
    TemplateUpdate,
)
from nexus.manager.features.vms.routes import vm_fetch
from nexus.manager.features.vms.schemas import VmRead
from nexus.manager.platform.deps import (
    CreateLimit,
    CurrentPrincipal,
    DbSession,
    ExpensiveLimit,
    State,
)

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.post("", response_model=TemplateRead, status_code=201, dependencies=[CreateLimit])
async def create_template(
    body: TemplateCreate, db: DbSession, principal: CurrentPrincipal
) -> TemplateRead:
    """Create a template (operator/admin). ``public: true`` makes it visible to every user."""
    return TemplateRead.model_validate(
        await service.create_template(db_session=db, principal=principal, body=body)
    )


@router.get("", response_model=TemplatePage)
async def list_templates(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> TemplatePage:
    """Your templates and public ones (admin: all), newest first."""
    offset = cursor_offset(cursor)
    items, total = await service.list_templates(
        db_session=db, principal=principal, limit=limit, offset=offset
    )
    return TemplatePage(
        items=[TemplateRead.model_validate(t) for t in items],
        next_cursor=next_offset_cursor(offset, len(items), limit, offset + limit < total),
    )


@router.get("/{template_id}", response_model=TemplateRead)
async def get_template(
    template_id: str, db: DbSession, principal: CurrentPrincipal
) -> TemplateRead:
    """One template, by id or name."""
    return TemplateRead.model_validate(
        await service.get_template(db_session=db, principal=principal, template_id=template_id)
    )


@router.patch("/{template_id}", response_model=TemplateRead)
async def update_template(
    template_id: str, body: TemplateUpdate, db: DbSession, principal: CurrentPrincipal
) -> TemplateRead:
    """Change a template (owner or admin)."""
    return TemplateRead.model_validate(
        await service.update_template(
            db_session=db, principal=principal, template_id=template_id, body=body
        )
    )


@router.delete("/{template_id}", status_code=204)
async def delete_template(template_id: str, db: DbSession, principal: CurrentPrincipal) -> Response:
    """Delete a template (owner or admin); VMs made from it stay."""
    await service.delete_template(db_session=db, principal=principal, template_id=template_id)
    return Response(status_code=204)


@router.post(
    "/{template_id}/instantiate",
    response_model=VmRead,
    responses=ACCEPTED,
    dependencies=[CreateLimit, ExpensiveLimit],
)
async def instantiate(
    template_id: str,
    body: TemplateInstantiate,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
    timeout: float = Query(300, gt=0, le=3600),
) -> JSONResponse:
    """Create a VM from a template (+ overrides): 202 + operation, or the VM with ?wait=true."""
    vm, op = await service.instantiate(
        db_session=db, state=state, principal=principal, template_id=template_id, body=body
    )
    fetch = vm_fetch(principal, vm.id)
    return await respond(state, principal, op, wait=wait, timeout=timeout, fetch=fetch)
