"""Snapshots (full: memory + device state + disk; or disk only), restore in place, new VMs
from a snapshot, and clones. RBAC: snapshotting, restoring or cloning a VM needs modify
rights on it; every mutation is audited in the same transaction.

The host agent does the file work (``nexus.agent.storage.snapshots``); long work runs as operations
attached to the VM they change (one operation per VM at a time:
``vms.lifecycle.start_operation``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import BadRequest, Conflict, NotFound
from nexus.core.ids import new_id
from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentError, AgentNotFound
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images.models import Image
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.snapshots.identity import allocate_identity, source_networks
from nexus.manager.features.snapshots.models import Snapshot
from nexus.manager.features.snapshots.schemas import SnapshotCreate, VmClone
from nexus.manager.features.ttl.policy import expiry
from nexus.manager.features.vms import lifecycle, states
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms import spec as vm_spec
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.schemas import VmCreate
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)


def view(s: Snapshot) -> dict[str, Any]:
    """Audit view of a snapshot."""
    return {"name": s.name, "vm_id": s.vm_id, "kind": s.kind, "state": s.state}


# --- reads --------------------------------------------------------------------------------


async def get_snapshot(
    *, db_session: AsyncSession, principal: Principal, snapshot_id: str
) -> Snapshot:
    """A snapshot the caller may see (404 otherwise)."""
    return ensure_visible(
        principal, await db_session.get(Snapshot, snapshot_id), "snapshot", snapshot_id
    )


async def list_snapshots(
    *,
    db_session: AsyncSession,
    principal: Principal,
    vm_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Snapshot], int]:
    """Snapshots the caller may see (admin: all), newest first."""
    q = select(Snapshot)
    if not principal.is_admin:
        q = q.where(Snapshot.created_by_user_id == principal.user_id)
    if vm_id:
        q = q.where(Snapshot.vm_id == vm_id)
    total = (await db_session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = await db_session.execute(q.order_by(Snapshot.id.desc()).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


# --- helpers ------------------------------------------------------------------------------


async def _host(state: ManagerState, host_id: str | None) -> Host:
    async with state.db.session() as s:
        host = await s.get(Host, host_id) if host_id else None
    if host is None:
        raise Conflict("the host holding this VM/snapshot is gone")
    return host


async def _set_snapshot(ms: ManagerState, snapshot_id: str, **values: Any) -> None:
    async with ms.db.session() as s:
        row = await s.get(Snapshot, snapshot_id)
        if row is not None:
            for k, v in values.items():
                setattr(row, k, v)


async def _modifiable_vm(
    db_session: AsyncSession, principal: Principal, vm_id: str, action: str
) -> Vm:
    vm = await vms.get_vm(db_session=db_session, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", action)
    if states.in_transition(vm.state):
        raise Conflict(f"vm '{vm.name}' is {vm.state}; try again when it settles")
    if vm.host_id is None:
        raise Conflict(f"vm '{vm.name}' has no host yet")
    return vm


async def _settle(state: ManagerState, host: Host, vm_id: str, st_state: str, ready: bool) -> str:
    """After an agent restore/boot: wait for readiness if needed and record the VM state."""
    if st_state == "running" and not ready:
        status = await lifecycle.wait_ready(state, host, vm_id)
        st_state, ready = status.state, status.guest_ready
        pid, ready_at = status.pid, status.ready_at
    else:
        status = await hosts.agent_client(state, host).get_vm(vm_id)
        pid, ready_at = status.pid, status.ready_at
    if st_state in ("running", "paused"):
        await lifecycle.set_state(
            state,
            vm_id,
            st_state,
            pid=pid,
            ready_at=ready_at,
            started_at=utcnow(),
            state_reason=None,
            desired_state=st_state,
        )
    elif st_state == "failed":
        await lifecycle.set_state(state, vm_id, "failed", state_reason=status.error, pid=None)
        raise Conflict(f"the VM failed after the restore: {status.error}")
    else:
        await lifecycle.set_state(state, vm_id, st_state, pid=None, desired_state="stopped")
    return st_state


# --- snapshots ----------------------------------------------------------------------------


async def create_snapshot(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    body: SnapshotCreate,
) -> tuple[Snapshot, Operation]:
    """Snapshot a VM (needs modify rights on it) as an operation with progress."""
    vm = await _modifiable_vm(db_session, principal, vm_id, "vm.snapshot")
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="snapshot.create",
        resource_type="snapshot",
        add={"snapshots": 1},
    )
    snap = Snapshot(
        id=new_id("snap"),
        name=body.name,
        description=body.description,
        vm_id=vm.id,
        vm_name=vm.name,
        host_id=vm.host_id,
        image_id=vm.image_id,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        disk_size_mib=vm.disk_size_mib,
        include_memory=body.include_memory,
        state="creating",
        created_by_user_id=principal.user_id,
    )
    db_session.add(snap)
    try:
        await db_session.flush()
    except IntegrityError as exc:
        raise Conflict(f"vm '{vm.name}' already has a snapshot named '{body.name}'") from exc
    audit.record(
        db_session,
        actor=principal,
        action="snapshot.create",
        resource_type="snapshot",
        resource_id=snap.id,
        after={**view(snap), "include_memory": body.include_memory, "vm_state": vm.state},
    )
    snap_id, host_id, include_memory = snap.id, vm.host_id, body.include_memory

    async def work(progress: operations.Progress) -> dict[str, Any]:
        host = await _host(state, host_id)
        await progress(10, "pausing, saving memory and device state, copying the disk")
        try:
            info = await hosts.agent_client(state, host).snapshot_vm(vm_id, snap_id, include_memory)
        except AgentError as exc:
            p = agent_problem(exc, "snapshot")
            await _set_snapshot(state, snap_id, state="failed", state_reason=p.detail)
            raise p from exc
        timings = {
            "snapshot_ms": info.snapshot_ms,
            "downtime_ms": info.downtime_ms,
            "disk_method": info.disk_method,
        }
        await _set_snapshot(
            state,
            snap_id,
            state="ready",
            kind=info.kind,
            size_bytes=info.size_bytes,
            files=info.files,
            timings=timings,
        )
        return {"snapshot_id": snap_id, "vm_id": vm_id, "kind": info.kind, **timings}

    op = await lifecycle.start_operation(db_session, state, principal, vm, "snapshot.create", work)
    return snap, op


async def delete_snapshot(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, snapshot_id: str
) -> None:
    """Remove a snapshot's files from its host and its row (owner or admin)."""
    snap = await get_snapshot(db_session=db_session, principal=principal, snapshot_id=snapshot_id)
    ensure_can_modify(principal, snap, "snapshot", "snapshot.delete")
    if snap.state == "creating":
        raise Conflict(f"snapshot '{snap.name}' is still being created")
    host = await db_session.get(Host, snap.host_id) if snap.host_id else None
    if host is not None:
        try:
            await hosts.agent_client(state, host).delete_snapshot(snap.id)
        except AgentNotFound:
            pass
        except AgentError as exc:
            raise agent_problem(exc, "delete snapshot") from exc
    audit.record(
        db_session,
        actor=principal,
        action="snapshot.delete",
        resource_type="snapshot",
        resource_id=snap.id,
        before=view(snap),
    )
    await db_session.delete(snap)


def _ready(snap: Snapshot) -> None:
    if snap.state != "ready":
        raise Conflict(f"snapshot '{snap.name}' is {snap.state}, not ready")


async def restore_snapshot(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, snapshot_id: str
) -> tuple[Vm, Operation]:
    """Roll the snapshot's VM back to it (needs modify rights on the VM)."""
    snap = await get_snapshot(db_session=db_session, principal=principal, snapshot_id=snapshot_id)
    _ready(snap)
    vm_row = await db_session.get(Vm, snap.vm_id)
    if vm_row is None:
        raise Conflict(
            f"vm '{snap.vm_name}' no longer exists; create a new VM from this snapshot with "
            f"`nexus vm create NAME --from-snapshot {snap.id}` "
            f'(POST /v1/vms {{"from_snapshot": "{snap.id}"}})'
        )
    vm = await _modifiable_vm(db_session, principal, snap.vm_id, "vm.restore")
    if vm.host_id != snap.host_id:
        raise Conflict("the VM moved to another host than its snapshot")
    grow = {
        k: getattr(snap, k) - getattr(vm, k)
        for k in ("vcpus", "memory_mib")
        if getattr(snap, k) > getattr(vm, k)
    }
    await quotas.check_owner(
        db_session,
        state.settings,
        principal,
        vm.created_by_user_id,
        action="vm.restore",
        resource_type="vm",
        resource_id=vm.id,
        add={"vcpus": 0, "memory_mib": 0, **grow},
    )
    audit.record(
        db_session,
        actor=principal,
        action="vm.restore",
        resource_type="vm",
        resource_id=vm.id,
        before={"state": vm.state, "vcpus": vm.vcpus, "memory_mib": vm.memory_mib},
        after={"snapshot_id": snap.id, "kind": snap.kind},
    )
    vm_id, snap_id, host_id = vm.id, snap.id, vm.host_id
    vcpus, memory = snap.vcpus, snap.memory_mib

    async def work(progress: operations.Progress) -> dict[str, Any]:
        host = await _host(state, host_id)
        await lifecycle.set_state(state, vm_id, "starting", state_reason=None)
        await progress(20, "verifying checksums and restoring")
        try:
            res = await hosts.agent_client(state, host).restore_vm(vm_id, snap_id)
        except AgentError as exc:
            p = agent_problem(exc, "restore")
            try:  # the agent leaves the VM as it was on a bad snapshot: record the truth
                st = await hosts.agent_client(state, host).get_vm(vm_id)
                await lifecycle.set_state(state, vm_id, st.state, state_reason=p.detail)
            except AgentError:
                await lifecycle.set_state(state, vm_id, "failed", state_reason=p.detail)
            raise p from exc
        await lifecycle.set_state(state, vm_id, "starting", vcpus=vcpus, memory_mib=memory)
        final = await _settle(state, host, vm_id, res.status.state, res.status.guest_ready)
        return {
            "vm_id": vm_id,
            "snapshot_id": snap_id,
            "kind": res.kind,
            "restore_ms": res.restore_ms,
            "state": final,
        }

    op = await lifecycle.start_operation(db_session, state, principal, vm, "vm.restore", work)
    return vm, op


async def create_vm_from_snapshot(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: VmCreate
) -> tuple[Vm, Operation]:
    """``POST /v1/vms {from_snapshot}``: a new, independent VM on the snapshot's host, with a
    fresh identity; a full snapshot resumes where it was saved (then clock/entropy reseed)."""
    ensure_can_create(principal, "vm.create", "vm")
    snap_id = str(body.from_snapshot)
    snap = await get_snapshot(db_session=db_session, principal=principal, snapshot_id=snap_id)
    _ready(snap)
    sized = body.model_fields_set
    if snap.kind == "full":
        for key in ("vcpus", "memory_mib"):
            if key in sized and getattr(body, key) != getattr(snap, key):
                raise BadRequest(
                    f"{key} must equal the snapshot's ({getattr(snap, key)}) for a full "
                    "snapshot: its memory image fits only that machine"
                )
    img = await db_session.get(Image, snap.image_id)
    if img is None:
        raise Conflict(f"the snapshot's image '{snap.image_id}' was deleted")
    full = snap.kind == "full"
    expires_at = expiry(state.settings, ttl_s=body.ttl_s, expires_at=body.expires_at)
    vcpus = snap.vcpus if full or "vcpus" not in sized else body.vcpus
    memory_mib = snap.memory_mib if full or "memory_mib" not in sized else body.memory_mib
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="vm.create",
        resource_type="vm",
        add={
            "vms": 1,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "disk_mib": body.disk_size_mib or snap.disk_size_mib or img.rootfs_size_mib,
        },
    )
    vm = Vm(
        id=new_id("vm"),
        name=body.name,
        description=body.description,
        labels=body.labels,
        vcpus=vcpus,
        memory_mib=memory_mib,
        disk_size_mib=body.disk_size_mib or snap.disk_size_mib,
        image_id=snap.image_id,
        host_id=snap.host_id,
        desired_state="running" if body.start else "stopped",
        state="pending",
        cloned_from_id=snap.vm_id,
        expires_at=expires_at,
        created_by_user_id=principal.user_id,
    )
    db_session.add(vm)
    await flush_unique(db_session, f"you already have a VM named '{body.name}'")
    nets = await source_networks(db_session, snap.vm_id)
    if nets is None or "networks" in sized:
        nets = body.networks  # the source is gone (or the caller chose): use the request's
    ident = await allocate_identity(db_session, principal, vm, networks_refs=nets)
    audit.record(
        db_session,
        actor=principal,
        action="vm.create",
        resource_type="vm",
        resource_id=vm.id,
        after={**vms.snapshot(vm), "from_snapshot": snap.id, "identity": ident.as_dict()},
    )
    spec = vm_spec.base_spec(vm, img)
    host_id, start = snap.host_id, body.start

    async def work(progress: operations.Progress) -> dict[str, Any]:
        host = await _host(state, host_id)
        await lifecycle.set_state(state, spec.id, "creating")
        await progress(20, "verifying the snapshot, copying its disk, restoring")
        full = await vm_spec.complete_spec(state, spec)  # NICs (new MAC/IP), volumes
        try:
            res = await hosts.agent_client(state, host).restore_as_new(snap_id, full, start)
        except AgentError as exc:
            p = agent_problem(exc, "restore")
            await lifecycle.set_state(state, spec.id, "failed", state_reason=p.detail)
            raise p from exc
        final = await _settle(state, host, spec.id, res.status.state, res.status.guest_ready)
        return {
            "vm_id": spec.id,
            "from_snapshot": snap_id,
            "kind": res.kind,
            "restore_ms": res.restore_ms,
            "disk_method": res.disk_method,
            "identity": ident.as_dict(),
            "reseed": res.reseed,
            "state": final,
        }

    op = await lifecycle.start_operation(db_session, state, principal, vm, "vm.create", work)
    return vm, op


# --- clones -------------------------------------------------------------------------------


async def clone_vm(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    body: VmClone,
) -> tuple[Vm, Operation]:
    """A new VM with a copy-on-write copy of ``vm_id``'s root disk (needs modify rights on the
    source), a fresh identity and ``cloned_from_id`` lineage; independent afterwards."""
    ensure_can_create(principal, "vm.create", "vm")
    src = await _modifiable_vm(db_session, principal, vm_id, "vm.clone")
    img = await db_session.get(Image, src.image_id)
    if img is None:
        raise NotFound(f"image '{src.image_id}' not found")
    ov = body.overrides
    vcpus = ov.vcpus if ov and ov.vcpus else src.vcpus
    memory_mib = ov.memory_mib if ov and ov.memory_mib else src.memory_mib
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="vm.clone",
        resource_type="vm",
        add={
            "vms": 1,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "disk_mib": src.disk_size_mib or img.rootfs_size_mib,
        },
    )
    vm = Vm(
        id=new_id("vm"),
        name=body.name,
        description=body.description or src.description,
        labels=body.labels if body.labels is not None else dict(src.labels),
        vcpus=vcpus,
        memory_mib=memory_mib,
        disk_size_mib=src.disk_size_mib,
        image_id=src.image_id,
        host_id=src.host_id,
        desired_state="running" if body.start else "stopped",
        state="pending",
        cloned_from_id=src.id,
        created_by_user_id=principal.user_id,
    )
    db_session.add(vm)
    await flush_unique(db_session, f"you already have a VM named '{body.name}'")
    nets = await source_networks(db_session, src.id) or []
    if ov and ov.network:
        nets = [ov.network, *nets[1:]]  # the first NIC joins the requested network
    ident = await allocate_identity(db_session, principal, vm, networks_refs=nets)
    audit.record(
        db_session,
        actor=principal,
        action="vm.clone",
        resource_type="vm",
        resource_id=vm.id,
        after={**vms.snapshot(vm), "cloned_from_id": src.id, "identity": ident.as_dict()},
    )
    spec = vm_spec.base_spec(vm, img)
    src_id, host_id, start = src.id, src.host_id, body.start

    async def work(progress: operations.Progress) -> dict[str, Any]:
        host = await _host(state, host_id)
        await lifecycle.set_state(state, spec.id, "creating")
        await progress(20, "copying the root disk (reflink, else sparse copy)")
        full = await vm_spec.complete_spec(state, spec)  # NICs (new MAC/IP), volumes
        try:
            res = await hosts.agent_client(state, host).clone_vm(src_id, full)
        except AgentError as exc:
            p = agent_problem(exc, "clone")
            await lifecycle.set_state(state, spec.id, "failed", state_reason=p.detail)
            raise p from exc
        await lifecycle.set_state(state, spec.id, "stopped", desired_state="stopped")
        result: dict[str, Any] = {
            "vm_id": spec.id,
            "cloned_from_id": src_id,
            "disk_method": res.disk_method,
            "clone_ms": res.clone_ms,
            "identity": ident.as_dict(),
            "state": "stopped",
        }
        if start:
            result.update(await lifecycle.boot(state, spec.id, progress))
        return result

    op = await lifecycle.start_operation(db_session, state, principal, vm, "vm.clone", work)
    return vm, op
