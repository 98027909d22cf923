"""/v1/vms: virtual machines."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, cursor_offset
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.operations.responses import ACCEPTED, WAIT_DOC, Fetch, respond
from nexus.manager.features.operations.schemas import OperationRead
from nexus.manager.features.quotas.routes import QUOTA_EXCEEDED
from nexus.manager.features.snapshots import service as snapshots
from nexus.manager.features.vms import service
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.schemas import VmCreate, VmPage, VmRead, VmUpdate
from nexus.manager.features.vms.states import VmStateName
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.deps import (
    CreateLimit,
    CurrentPrincipal,
    DbSession,
    ExpensiveLimit,
    State,
)
from nexus.manager.platform.rbac import Principal

router = APIRouter(prefix="/v1/vms", tags=["vms"])


def vm_fetch(principal: Principal, vm_id: str) -> Fetch:
    """What an operation's ``?wait=true`` answer shows: the VM as ``principal`` sees it."""

    async def fetch(s: AsyncSession) -> VmRead:
        return VmRead.model_validate(
            await service.get_vm(db_session=s, principal=principal, vm_id=vm_id)
        )

    return fetch


async def _respond(
    state: ManagerState,
    principal: Principal,
    vm: Vm,
    op: Operation,
    wait: bool,
    timeout: float,
    *,
    deleted: bool = False,
) -> JSONResponse:
    fetch = None if deleted else vm_fetch(principal, vm.id)
    return await respond(state, principal, op, wait=wait, timeout=timeout, fetch=fetch)


@router.post(
    "",
    response_model=VmRead,
    status_code=200,
    responses={
        **ACCEPTED,
        403: QUOTA_EXCEEDED,
        422: problem("vcpus, memory_mib or disk_size_mib over the administrator's ceiling"),
        507: problem("no host with room for the VM has the free disk for its root disk"),
    },
    dependencies=[CreateLimit, ExpensiveLimit],
)
async def create_vm(
    body: VmCreate,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
    timeout: float = Query(300, gt=0, le=3600),
) -> JSONResponse:
    """Create a VM from an image; it is placed on a healthy host with room, gets its own
    copy-on-write root disk and boots (unless ``start: false``). Returns 202 + operation, or
    with ``?wait=true`` the VM once it is running (guest agent answered)."""
    # a VM restored from a snapshot is the snapshots feature's (it drives the VM engine)
    create = snapshots.create_vm_from_snapshot if body.from_snapshot else service.create_vm
    vm, op = await create(db_session=db, state=state, principal=principal, body=body)
    return await _respond(state, principal, vm, op, wait, timeout)


@router.get("", response_model=VmPage)
async def list_vms(
    app_state: State,
    principal: CurrentPrincipal,
    state: VmStateName | None = None,
    host_id: str | None = Query(None, max_length=64),
    owner: str | None = Query(None, max_length=64, description="owner user id (admin)"),
    label: str | None = Query(None, max_length=300, description="key or key=value"),
    q: str | None = Query(
        None, min_length=1, max_length=100, description="name contains this (any case)"
    ),
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> Response:
    """VMs you may see (admin: all), newest first; ``q`` searches their names."""
    body = await service.list_vms_json(
        db=app_state.db,
        principal=principal,
        cache_ttl_s=app_state.settings.list_cache_ttl_s,
        state=state,
        host_id=host_id,
        owner=owner,
        label=label,
        q=q,
        limit=limit,
        offset=cursor_offset(cursor),
    )
    return Response(body, media_type="application/json")


@router.get("/{vm_id}", response_model=VmRead)
async def get_vm(vm_id: str, db: DbSession, principal: CurrentPrincipal) -> VmRead:
    """One VM."""
    return VmRead.model_validate(
        await service.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    )


@router.patch(
    "/{vm_id}",
    response_model=VmRead,
    responses={
        403: QUOTA_EXCEEDED,
        422: problem("vcpus or memory_mib over the administrator's ceiling"),
    },
)
async def update_vm(
    vm_id: str, body: VmUpdate, db: DbSession, state: State, principal: CurrentPrincipal
) -> VmRead:
    """Rename, describe, label; change vcpus/memory only while stopped (the new spec goes
    to the host at once and applies at the next start)."""
    return VmRead.model_validate(
        await service.update_vm(
            db_session=db, state=state, principal=principal, vm_id=vm_id, body=body
        )
    )


@router.delete("/{vm_id}", status_code=202, response_model=OperationRead)
async def delete_vm(
    vm_id: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description="block until deleted"),
    timeout: float = Query(120, gt=0, le=3600),
) -> JSONResponse:
    """Delete a VM: stops it and removes its disk, sockets and state on the host."""
    vm, op = await service.delete_vm(db_session=db, state=state, principal=principal, vm_id=vm_id)
    return await _respond(state, principal, vm, op, wait, timeout, deleted=True)


ACTION_DOCS = {
    "start": "Boot a stopped or failed VM.",
    "stop": "Graceful ACPI shutdown with a timeout, then force; `?force=true` kills at once.",
    "reboot": "Reboot a running VM.",
    "pause": "Freeze a running VM's vCPUs.",
    "resume": "Continue a paused VM.",
}


def _action_route(action: str) -> None:
    async def handler(
        vm_id: str,
        db: DbSession,
        state: State,
        principal: CurrentPrincipal,
        force: bool = Query(False, description="stop: skip the ACPI shutdown, kill the VMM"),
        wait: bool = Query(False, description=WAIT_DOC),
        timeout: float = Query(300, gt=0, le=3600),
    ) -> JSONResponse:
        vm, op = await service.act(
            db_session=db,
            state=state,
            principal=principal,
            vm_id=vm_id,
            action=action,
            force=force,
        )
        return await _respond(state, principal, vm, op, wait, timeout)

    handler.__doc__ = ACTION_DOCS[action] + " Returns 202 + operation, or the VM with ?wait=true."
    router.add_api_route(
        f"/{{vm_id}}/{action}",
        handler,
        methods=["POST"],
        response_model=VmRead,
        responses={**ACCEPTED, 403: QUOTA_EXCEEDED} if action == "start" else ACCEPTED,
        name=f"vm_{action}",
        summary=f"{action.capitalize()} a VM",
    )


for _action in ACTION_DOCS:
    _action_route(_action)


@router.get("/{vm_id}/console", response_class=PlainTextResponse)
async def console(
    vm_id: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    tail: int = Query(100, ge=1, le=10_000),
) -> PlainTextResponse:
    """The last ``tail`` lines of the VM's serial console (kept on the host, size-capped)."""
    text = await service.console(
        db_session=db, state=state, principal=principal, vm_id=vm_id, tail=tail
    )
    return PlainTextResponse(text)
