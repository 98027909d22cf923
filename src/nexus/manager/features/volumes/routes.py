"""/v1/volumes and /v1/vms/{vm_id}/volumes: persistent block devices."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, page_of
from nexus.manager.features.quotas.routes import QUOTA_EXCEEDED
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.features.volumes import service
from nexus.manager.features.volumes.schemas import (
    VolumeAttach,
    VolumeAttachmentPage,
    VolumeAttachmentRead,
    VolumeCreate,
    VolumePage,
    VolumeRead,
    VolumeUpdate,
)
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State
from nexus.manager.platform.rbac import ensure_can_modify

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])
vm_router = APIRouter(prefix="/v1/vms/{vm_id}/volumes", tags=["volumes"])

ATTACH_DOC = (
    " Attach and detach only while the VM is stopped; the change takes effect at its next"
    " boot. Volumes appear in the guest as /dev/vdb, /dev/vdc, ... in attachment order."
)


@router.post(
    "",
    response_model=VolumeRead,
    status_code=201,
    dependencies=[CreateLimit],
    responses={
        403: QUOTA_EXCEEDED,
        422: problem("`size_mib` over `max_volume_mib`"),
        507: problem("no healthy host has the free disk"),
    },
)
async def create_volume(
    body: VolumeCreate, db: DbSession, state: State, principal: CurrentPrincipal
) -> VolumeRead:
    """Create a volume: a sparse file (formatted ext4, or raw) created on the host of the
    first VM it is attached to. Its data outlives the VMs it is attached to. Sizes over the
    administrator's `max_volume_mib` are refused (422), and so are sizes no healthy host has
    the free disk for, beyond its `disk_reserve_mib` (507)."""
    vol = await service.create_volume(db_session=db, state=state, principal=principal, body=body)
    return await service.read(db, vol)


@router.get("", response_model=VolumePage)
async def list_volumes(
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> VolumePage:
    """Volumes you may see (admin: all)."""
    everything = await service.list_volumes(db_session=db, principal=principal)
    vols, nxt = page_of(everything, cursor, limit)
    return VolumePage(items=[await service.read(db, v) for v in vols], next_cursor=nxt)


@router.get("/{volume_id}", response_model=VolumeRead)
async def get_volume(volume_id: str, db: DbSession, principal: CurrentPrincipal) -> VolumeRead:
    """One volume (id or name)."""
    vol = await service.get_volume(db_session=db, principal=principal, volume_id=volume_id)
    return await service.read(db, vol)


@router.patch(
    "/{volume_id}",
    response_model=VolumeRead,
    responses={
        403: QUOTA_EXCEEDED,
        422: problem("`size_mib` over `max_volume_mib`"),
        507: problem("the volume's host lacks the free disk"),
    },
)
async def update_volume(
    volume_id: str, body: VolumeUpdate, db: DbSession, state: State, principal: CurrentPrincipal
) -> VolumeRead:
    """Rename/describe, or grow with a larger `size_mib` (only while detached; ext4 is
    resized offline; shrinking is refused with 409)."""
    vol = await service.update_volume(
        db_session=db, state=state, principal=principal, volume_id=volume_id, body=body
    )
    return await service.read(db, vol)


@router.delete("/{volume_id}", status_code=204)
async def delete_volume(
    volume_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Delete a volume and its data; refused (409) while attached."""
    await service.delete_volume(
        db_session=db, state=state, principal=principal, volume_id=volume_id
    )
    return Response(status_code=204)


@vm_router.get("", response_model=VolumeAttachmentPage)
async def list_vm_volumes(
    vm_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> VolumeAttachmentPage:
    """The VM's volumes in device order."""
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    rows, nxt = page_of(await service.list_vm_volumes(db, vm.id), cursor, limit)
    return VolumeAttachmentPage(items=[service.attachment_read(a) for a in rows], next_cursor=nxt)


@vm_router.post(
    "",
    response_model=VolumeAttachmentRead,
    status_code=201,
    responses={
        507: problem("the VM's host lacks the free disk for a new volume file"),
    },
    description="Attach a volume (`read_only` is honoured by the VMM)." + ATTACH_DOC,
    summary="Attach a volume",
)
async def attach_volume(
    vm_id: str, body: VolumeAttach, db: DbSession, state: State, principal: CurrentPrincipal
) -> VolumeAttachmentRead:
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", "vm.volume.attach")
    att = await service.attach(db_session=db, state=state, principal=principal, vm=vm, body=body)
    return service.attachment_read(att)


@vm_router.delete(
    "/{volume_id}",
    status_code=204,
    summary="Detach a volume",
    description="Detach a volume; its file and data stay." + ATTACH_DOC,
)
async def detach_volume(
    vm_id: str, volume_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", "vm.volume.detach")
    await service.detach(
        db_session=db, state=state, principal=principal, vm=vm, volume_id=volume_id
    )
    return Response(status_code=204)
