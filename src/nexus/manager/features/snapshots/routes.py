"""/v1/snapshots, /v1/vms/{id}/snapshots and /v1/vms/{id}/clone (HTTP only)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.paging import (
    CURSOR_DOC,
    CURSOR_MAX_LEN,
    LIMIT_DOC,
    cursor_offset,
    next_offset_cursor,
)
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.operations.responses import ACCEPTED, WAIT_DOC, respond
from nexus.manager.features.quotas.routes import QUOTA_EXCEEDED
from nexus.manager.features.snapshots import service
from nexus.manager.features.snapshots.schemas import (
    SnapshotCreate,
    SnapshotPage,
    SnapshotRead,
    VmClone,
)
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms.schemas import VmRead
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.deps import (
    CreateLimit,
    CurrentPrincipal,
    DbSession,
    ExpensiveLimit,
    State,
)
from nexus.manager.platform.rbac import Principal

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])
vm_router = APIRouter(prefix="/v1/vms", tags=["snapshots"])


async def _respond(
    state: ManagerState,
    principal: Principal,
    op: Operation,
    wait: bool,
    timeout: float,
    *,
    snapshot_id: str | None = None,
    vm_id: str | None = None,
) -> JSONResponse:
    async def fetch(s: AsyncSession) -> BaseModel:
        if snapshot_id is not None:
            snap = await service.get_snapshot(
                db_session=s, principal=principal, snapshot_id=snapshot_id
            )
            return SnapshotRead.model_validate(snap)
        vm = await vms.get_vm(db_session=s, principal=principal, vm_id=str(vm_id))
        return VmRead.model_validate(vm)

    return await respond(state, principal, op, wait=wait, timeout=timeout, fetch=fetch)


@vm_router.post(
    "/{vm_id}/snapshots",
    response_model=SnapshotRead,
    responses={**ACCEPTED, 403: QUOTA_EXCEEDED},
    dependencies=[CreateLimit, ExpensiveLimit],
)
async def create_snapshot(
    vm_id: str,
    body: SnapshotCreate,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
    timeout: float = Query(300, gt=0, le=3600),
) -> JSONResponse:
    """Snapshot a VM: a running VM gets a full snapshot (pause -> save memory and device state
    -> copy disk -> resume) unless ``include_memory`` is false; a stopped VM a disk snapshot.
    Needs modify rights on the VM. Returns 202 + operation, or the snapshot with ?wait=true."""
    snap, op = await service.create_snapshot(
        db_session=db, state=state, principal=principal, vm_id=vm_id, body=body
    )
    return await _respond(state, principal, op, wait, timeout, snapshot_id=snap.id)


@vm_router.post(
    "/{vm_id}/clone",
    response_model=VmRead,
    responses={**ACCEPTED, 403: QUOTA_EXCEEDED},
    dependencies=[CreateLimit, ExpensiveLimit],
)
async def clone_vm(
    vm_id: str,
    body: VmClone,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
    timeout: float = Query(300, gt=0, le=3600),
) -> JSONResponse:
    """Clone a VM: a copy-on-write copy of its root disk (a copy of its qcow2 overlay of the
    image, by reflink where supported, else a sparse copy; the operation result says which
    in ``disk_method``), a fresh identity, ``cloned_from_id``
    lineage. Needs modify rights on the source. 202 + operation, or the new VM (?wait=true)."""
    vm, op = await service.clone_vm(
        db_session=db, state=state, principal=principal, vm_id=vm_id, body=body
    )
    return await _respond(state, principal, op, wait, timeout, vm_id=vm.id)


@router.get("", response_model=SnapshotPage)
async def list_snapshots(
    db: DbSession,
    principal: CurrentPrincipal,
    vm_id: str | None = Query(None, max_length=64),
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> SnapshotPage:
    """Snapshots you may see (admin: all), newest first; ``vm_id`` filters."""
    offset = cursor_offset(cursor)
    items, total = await service.list_snapshots(
        db_session=db, principal=principal, vm_id=vm_id, limit=limit, offset=offset
    )
    return SnapshotPage(
        items=[SnapshotRead.model_validate(s) for s in items],
        next_cursor=next_offset_cursor(offset, len(items), limit, offset + limit < total),
    )


@router.get("/{snapshot_id}", response_model=SnapshotRead)
async def get_snapshot(
    snapshot_id: str, db: DbSession, principal: CurrentPrincipal
) -> SnapshotRead:
    """One snapshot (with its files' sha256 and timings)."""
    return SnapshotRead.model_validate(
        await service.get_snapshot(db_session=db, principal=principal, snapshot_id=snapshot_id)
    )


@router.delete("/{snapshot_id}", status_code=204)
async def delete_snapshot(
    snapshot_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Delete a snapshot and its files on the host."""
    await service.delete_snapshot(
        db_session=db, state=state, principal=principal, snapshot_id=snapshot_id
    )
    return Response(status_code=204)


@router.post(
    "/{snapshot_id}/restore", response_model=VmRead, responses={**ACCEPTED, 403: QUOTA_EXCEEDED}
)
async def restore_snapshot(
    snapshot_id: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
    timeout: float = Query(300, gt=0, le=3600),
) -> JSONResponse:
    """Roll the snapshot's VM back to it. Checksums are verified first: a corrupt or missing
    file fails the operation and leaves the VM as it was. A full snapshot resumes where it
    was saved. 202 + operation, or the VM with ?wait=true."""
    vm, op = await service.restore_snapshot(
        db_session=db, state=state, principal=principal, snapshot_id=snapshot_id
    )
    return await _respond(state, principal, op, wait, timeout, vm_id=vm.id)
