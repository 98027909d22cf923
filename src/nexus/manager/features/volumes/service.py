"""Volumes: CRUD, grow, attach/detach. Ownership, RBAC and audit for every path.

A volume's file is created on a host by its agent the first time the volume is attached to a
VM there (``host_id`` is then fixed). Attach and detach need a stopped VM and take effect at
its next boot; the agent's VM spec is updated at once, and the database change is rolled back
if the agent refuses. A volume is attached to at most one VM.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import Conflict, NotFound
from nexus.core.ids import new_id
from nexus.hostapi.agent_client import AgentError, AgentNotFound
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.vms import ceilings, states
from nexus.manager.features.vms import spec as vm_spec
from nexus.manager.features.volumes.models import Volume, VolumeAttachment
from nexus.manager.features.volumes.schemas import (
    VolumeAttach,
    VolumeAttachmentRead,
    VolumeCreate,
    VolumeRead,
    VolumeUpdate,
)
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

MAX_VOLUMES_PER_VM = 8
DETACHED_STATES = states.ALLOWED_FROM["attach"]


def snapshot(vol: Volume) -> dict[str, Any]:
    """Audit view of a volume."""
    return {
        "name": vol.name,
        "size_mib": vol.size_mib,
        "filesystem": vol.filesystem,
        "host_id": vol.host_id,
    }


def device_of(position: int) -> str:
    """The guest device of the ``position``-th volume (the root disk is /dev/vda)."""
    return "/dev/vd" + chr(ord("b") + position)


def attachment_read(att: VolumeAttachment) -> VolumeAttachmentRead:
    """API view of an attachment."""
    return VolumeAttachmentRead(
        vm_id=att.vm_id,
        volume_id=att.volume_id,
        position=att.position,
        read_only=att.read_only,
        device=device_of(att.position),
    )


async def read(s: AsyncSession, vol: Volume) -> VolumeRead:
    """API view of a volume (with its attachment)."""
    att = (
        await s.execute(select(VolumeAttachment).where(VolumeAttachment.volume_id == vol.id))
    ).scalar_one_or_none()
    return VolumeRead(
        id=vol.id,
        name=vol.name,
        description=vol.description,
        size_mib=vol.size_mib,
        filesystem=vol.filesystem,
        host_id=vol.host_id,
        attachment=attachment_read(att) if att else None,
        created_by_user_id=vol.created_by_user_id,
        created_at=vol.created_at,
        updated_at=vol.updated_at,
    )


async def get_volume(*, db_session: AsyncSession, principal: Principal, volume_id: str) -> Volume:
    """A volume the caller may see (404 otherwise); ``volume_id`` may also be a name."""
    vol = await db_session.get(Volume, volume_id)
    if vol is None:
        q = select(Volume).where(Volume.name == volume_id)
        if not principal.is_admin:
            q = q.where(Volume.created_by_user_id == principal.user_id)
        vol = (await db_session.execute(q.limit(1))).scalar_one_or_none()
    return ensure_visible(principal, vol, "volume", volume_id)


async def list_volumes(*, db_session: AsyncSession, principal: Principal) -> list[Volume]:
    """Volumes the caller may see (admin: all), by name."""
    q = select(Volume)
    if not principal.is_admin:
        q = q.where(or_(Volume.created_by_user_id == principal.user_id))
    return list((await db_session.execute(q.order_by(Volume.name, Volume.id))).scalars())


async def _ensure_some_host_has_room(s: AsyncSession, state: ManagerState, size_mib: int) -> None:
    """At creation the volume has no host yet: refuse (507) a size that no healthy,
    undrained host could hold beyond its disk reserve. With no healthy host at all the check
    waits for the attach, which checks the VM's host."""
    candidates = [
        h
        for h in (await s.execute(select(Host))).scalars()
        if not h.drained and hosts.is_healthy(h, state.settings.host_heartbeat_timeout_s)
    ]
    if not candidates:
        return
    roomiest = max(candidates, key=lambda h: ceilings.disk_room_mib(state.settings, h))
    ceilings.ensure_disk_room(state.settings, roomiest, size_mib, "the volume")


async def create_volume(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: VolumeCreate
) -> Volume:
    """Create a volume record (its file is made on the host of the first VM it joins); sizes
    over ``max_volume_mib`` are refused (422), and so are sizes no host has the free disk
    for (507)."""
    ensure_can_create(principal, "volume.create", "volume")
    ceilings.check_volume_size(state.settings, body.size_mib)
    await _ensure_some_host_has_room(db_session, state, body.size_mib)
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="volume.create",
        resource_type="volume",
        add={"volumes": 1, "disk_mib": body.size_mib},
    )
    vol = Volume(
        id=new_id("vol"),
        name=body.name,
        description=body.description,
        size_mib=body.size_mib,
        filesystem=body.filesystem,
        created_by_user_id=principal.user_id,
    )
    db_session.add(vol)
    await flush_unique(db_session, f"you already have a volume named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="volume.create",
        resource_type="volume",
        resource_id=vol.id,
        after=snapshot(vol),
    )
    return vol


async def _attachment(s: AsyncSession, volume_id: str) -> VolumeAttachment | None:
    q = select(VolumeAttachment).where(VolumeAttachment.volume_id == volume_id)
    return (await s.execute(q)).scalar_one_or_none()


async def update_volume(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    volume_id: str,
    body: VolumeUpdate,
) -> Volume:
    """Rename/describe; grow (``size_mib``) only while detached, never shrink."""
    vol = await get_volume(db_session=db_session, principal=principal, volume_id=volume_id)
    ensure_can_modify(principal, vol, "volume", "volume.update")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    before = snapshot(vol)
    new_size = changes.pop("size_mib", None)
    if new_size is not None and new_size != vol.size_mib:
        if new_size < vol.size_mib:
            raise Conflict(f"volumes only grow (is {vol.size_mib} MiB, asked {new_size})")
        ceilings.check_volume_size(state.settings, new_size)
        if await _attachment(db_session, vol.id) is not None:
            raise Conflict("detach the volume before resizing it")
        await quotas.check_owner(
            db_session,
            state.settings,
            principal,
            vol.created_by_user_id,
            action="volume.update",
            resource_type="volume",
            resource_id=vol.id,
            add={"disk_mib": new_size - vol.size_mib},
        )
        if vol.host_id is not None:
            host = await db_session.get(Host, vol.host_id)
            if host is not None:
                ceilings.ensure_disk_room(
                    state.settings, host, new_size - vol.size_mib, "growing the volume"
                )
                try:
                    await hosts.agent_client(state, host).put_volume(
                        vol.id, new_size, vol.filesystem
                    )
                except AgentError as exc:
                    raise agent_problem(exc, f"resize on host {host.name}") from exc
        vol.size_mib = new_size
    for k, v in changes.items():
        setattr(vol, k, v)
    await flush_unique(db_session, f"you already have a volume named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="volume.update",
        resource_type="volume",
        resource_id=vol.id,
        before=before,
        after=snapshot(vol),
    )
    return vol


async def delete_volume(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, volume_id: str
) -> None:
    """Delete a detached volume and its file (409 while attached)."""
    vol = await get_volume(db_session=db_session, principal=principal, volume_id=volume_id)
    ensure_can_modify(principal, vol, "volume", "volume.delete")
    att = await _attachment(db_session, vol.id)
    if att is not None:
        raise Conflict(f"volume '{vol.name}' is attached to vm {att.vm_id}; detach it first")
    if vol.host_id is not None:
        host = await db_session.get(Host, vol.host_id)
        if host is not None:
            try:
                await hosts.agent_client(state, host).delete_volume(vol.id)
            except AgentNotFound:
                pass
            except AgentError as exc:
                raise agent_problem(exc, f"delete on host {host.name}") from exc
    audit.record(
        db_session,
        actor=principal,
        action="volume.delete",
        resource_type="volume",
        resource_id=vol.id,
        before=snapshot(vol),
    )
    await db_session.delete(vol)


async def list_vm_volumes(s: AsyncSession, vm_id: str) -> list[VolumeAttachment]:
    """A VM's attachments in device order."""
    q = select(VolumeAttachment).where(VolumeAttachment.vm_id == vm_id)
    return list((await s.execute(q.order_by(VolumeAttachment.position))).scalars())


async def attach(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Any,
    body: VolumeAttach,
) -> VolumeAttachment:
    """Attach a volume to a stopped VM (seen at its next boot); creates the volume file on the
    VM's host the first time. The caller has checked the VM (visible + modifiable)."""
    vol = await get_volume(db_session=db_session, principal=principal, volume_id=body.volume_id)
    ensure_can_modify(principal, vol, "volume", "volume.attach")
    if vm.state not in DETACHED_STATES:
        raise Conflict(f"volumes attach only to a stopped VM (vm '{vm.name}' is {vm.state})")
    att = await _add_attachment(db_session, state, principal, vm, vol, read_only=body.read_only)
    await _create_file_and_push(db_session, state, vm, vol)
    return att


async def attach_to_new_vm(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Any,
    volume: Volume,
    read_only: bool,
) -> VolumeAttachment:
    """Attach a volume to a VM being created, in the VM's own transaction (before its create
    operation sends the spec): the volume's file is made on the VM's host now. The caller has
    checked the volume (:func:`check_attachable`)."""
    att = await _add_attachment(db_session, state, principal, vm, volume, read_only=read_only)
    await _create_file_and_push(db_session, state, vm, volume, push=False)
    return att


async def check_attachable(
    *, db_session: AsyncSession, principal: Principal, volume_id: str, action: str
) -> Volume:
    """A volume the caller may attach (404 unseen, 403 not theirs to modify, 409 attached
    to a VM already)."""
    vol = await get_volume(db_session=db_session, principal=principal, volume_id=volume_id)
    ensure_can_modify(principal, vol, "volume", action)
    current = await _attachment(db_session, vol.id)
    if current is not None:
        mode = "read-only" if current.read_only else "read-write"
        raise Conflict(
            f"volume '{vol.name}' is already attached ({mode}) to vm {current.vm_id}; "
            "a volume is attached to one VM at a time"
        )
    return vol


async def _add_attachment(
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Any,
    vol: Volume,
    *,
    read_only: bool,
) -> VolumeAttachment:
    """The attachment row (audited) after the host and exclusivity checks."""
    if vm.host_id is None:
        raise Conflict("the VM has no host yet")
    if vol.host_id is not None and vol.host_id != vm.host_id:
        raise Conflict(f"volume '{vol.name}' lives on another host ({vol.host_id})")
    current = await _attachment(db_session, vol.id)
    if current is not None:
        raise Conflict(f"volume '{vol.name}' is already attached to vm {current.vm_id}")
    taken = {a.position for a in await list_vm_volumes(db_session, vm.id)}
    free = [p for p in range(MAX_VOLUMES_PER_VM) if p not in taken]
    if not free:
        raise Conflict(f"a VM can have at most {MAX_VOLUMES_PER_VM} volumes")
    att = VolumeAttachment(
        id=new_id("vat"),
        volume_id=vol.id,
        vm_id=vm.id,
        position=free[0],
        read_only=read_only,
        created_by_user_id=principal.user_id,
    )
    db_session.add(att)
    try:
        await db_session.flush()
    except IntegrityError as exc:
        raise Conflict(f"volume '{vol.name}' was attached concurrently") from exc
    audit.record(
        db_session,
        actor=principal,
        action="volume.attach",
        resource_type="volume",
        resource_id=vol.id,
        after={"vm_id": vm.id, "read_only": read_only, "device": device_of(att.position)},
    )
    return att


async def _create_file_and_push(
    db_session: AsyncSession, state: ManagerState, vm: Any, vol: Volume, *, push: bool = True
) -> None:
    """Make the volume's file on the VM's host (the first time) and, with ``push``, re-send
    the VM's spec."""
    host = await db_session.get(Host, vm.host_id)
    if host is None:
        raise NotFound(f"host '{vm.host_id}' not found")
    if vol.host_id is None:  # the file is created now, on this host
        ceilings.ensure_disk_room(state.settings, host, vol.size_mib, f"volume '{vol.name}'")
    client = hosts.agent_client(state, host)
    try:
        await client.put_volume(vol.id, vol.size_mib, vol.filesystem)
        vol.host_id = host.id
        if push:
            await vm_spec.push_spec(db_session, state, vm.id)
    except AgentError as exc:
        raise agent_problem(exc, f"attach on host {host.name}") from exc


async def detach(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Any,
    volume_id: str,
) -> None:
    """Detach a volume from a stopped VM (the file and its data stay)."""
    vol = await get_volume(db_session=db_session, principal=principal, volume_id=volume_id)
    att = await _attachment(db_session, vol.id)
    if att is None or att.vm_id != vm.id:
        raise NotFound(f"volume '{volume_id}' is not attached to vm '{vm.name}'")
    if vm.state not in DETACHED_STATES:
        raise Conflict(f"volumes detach only from a stopped VM (vm '{vm.name}' is {vm.state})")
    await db_session.delete(att)
    await db_session.flush()
    if vm.host_id is not None:
        try:
            await vm_spec.push_spec(db_session, state, vm.id)
        except AgentError as exc:
            raise agent_problem(exc, "detach") from exc
    audit.record(
        db_session,
        actor=principal,
        action="volume.detach",
        resource_type="volume",
        resource_id=vol.id,
        before={"vm_id": vm.id, "device": device_of(att.position)},
    )


async def count_attached(s: AsyncSession, vm_id: str) -> int:
    """How many volumes a VM has."""
    q = select(func.count()).select_from(VolumeAttachment).where(VolumeAttachment.vm_id == vm_id)
    return int((await s.execute(q)).scalar_one())
