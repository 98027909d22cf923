"""VM lifecycle: create (place + provision + boot), start, stop, reboot, pause, resume, delete,
update, list — as operations where they take time. Ownership, RBAC and audit for every path.

Actual state comes from the host agent; the reconciler loop repairs drift.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database, flush_unique
from nexus.core.errors import BadRequest, Conflict, NotFound
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.hostapi.client import AgentError, AgentNotFound
from nexus.hostapi.models import VmStatus
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images import service as images
from nexus.manager.features.images.models import Image
from nexus.manager.features.networks import service as vm_networks
from nexus.manager.features.networks import wiring as vm_wiring
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.vms import ceilings, listcache
from nexus.manager.features.vms.models import TRANSITIONAL, Vm
from nexus.manager.features.vms.schemas import VmCreate, VmPage, VmRead, VmUpdate
from nexus.manager.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)
from nexus.manager.state import ManagerState

log = get_logger(__name__)
VCPU_OVERCOMMIT = 4
ACTIONS = ("start", "stop", "reboot", "pause", "resume")


def snapshot(vm: Vm) -> dict[str, Any]:
    """Audit view of a VM."""
    return {
        "name": vm.name,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "image_id": vm.image_id,
        "host_id": vm.host_id,
        "state": vm.state,
        "labels": vm.labels,
    }


# --- reads --------------------------------------------------------------------------------


async def get_vm(*, db_session: AsyncSession, principal: Principal, vm_id: str) -> Vm:
    """A VM the caller may see (404 otherwise)."""
    return ensure_visible(principal, await db_session.get(Vm, vm_id), "vm", vm_id)


async def list_vms(
    *,
    db_session: AsyncSession,
    principal: Principal,
    state: str | None = None,
    host_id: str | None = None,
    owner: str | None = None,
    label: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Vm], int]:
    """VMs the caller may see, newest first, with the total count."""
    conds: list[Any] = []
    if not principal.is_admin:
        conds.append(Vm.created_by_user_id == principal.user_id)
    elif owner:
        conds.append(Vm.created_by_user_id == owner)
    if state:
        conds.append(Vm.state == state)
    if host_id:
        conds.append(Vm.host_id == host_id)
    q = select(Vm).where(*conds).order_by(Vm.id.desc())
    if label:
        # Labels are JSON: filter in Python (portable across SQLite and PostgreSQL).
        k, _, v = label.partition("=")
        every = (await db_session.execute(q)).scalars().all()
        hits = [vm for vm in every if k in vm.labels and (not v or vm.labels[k] == v)]
        return hits[offset : offset + limit], len(hits)
    total = (await db_session.execute(select(func.count(Vm.id)).where(*conds))).scalar_one()
    rows = (await db_session.execute(q.limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def list_vms_json(
    *, db: Database, principal: Principal, cache_ttl_s: float, **filters: Any
) -> bytes:
    """The ``GET /v1/vms`` page as JSON bytes, from the listing cache when fresh (a refresh
    may run after the request, so it uses a session of its own)."""
    key = (principal.user_id, principal.is_admin, *sorted(filters.items()))

    async def compute() -> bytes:
        async with db.session() as s:
            items, total = await list_vms(db_session=s, principal=principal, **filters)
            page = VmPage(
                items=[VmRead.model_validate(v) for v in items],
                total=total,
                limit=filters["limit"],
                offset=filters["offset"],
            )
        return page.model_dump_json().encode()

    return await listcache.cache.get_or_compute(key, cache_ttl_s, compute)


# --- placement ----------------------------------------------------------------------------


async def place(
    s: AsyncSession,
    state: ManagerState,
    vcpus: int,
    memory_mib: int,
    disk_mib: int | None = None,
) -> Host:
    """Pick the healthy, undrained host with the most free memory that fits the VM; with
    ``disk_mib``, the host must also have that much free disk beyond its reserve (507 when
    memory and vCPUs would fit somewhere but the disk fits nowhere)."""
    alloc = await hosts.allocations(s)
    best: tuple[int, Host] | None = None
    short_of_disk: list[Host] = []
    for host in (await s.execute(select(Host).order_by(Host.name))).scalars().all():
        if host.drained or not hosts.is_healthy(host, state.settings.host_heartbeat_timeout_s):
            continue
        _, used_cpu, used_mem = alloc.get(host.id, (0, 0, 0))
        free_mem = host.memory_mib - used_mem
        if free_mem < memory_mib or used_cpu + vcpus > host.vcpus * VCPU_OVERCOMMIT:
            continue
        if disk_mib is not None and disk_mib > ceilings.disk_room_mib(state.settings, host):
            short_of_disk.append(host)
            continue
        if best is None or free_mem > best[0]:
            best = (free_mem, host)
    if best is None and short_of_disk and disk_mib is not None:
        roomiest = max(short_of_disk, key=lambda h: h.disk_free_mib)
        ceilings.ensure_disk_room(state.settings, roomiest, disk_mib, "the VM's root disk")
    if best is None:
        raise Conflict(
            f"no healthy host has room for {vcpus} vCPU / {memory_mib} MiB (see GET /v1/hosts)"
        )
    return best[1]


# --- the work done inside operations ------------------------------------------------------


async def _load(state: ManagerState, vm_id: str) -> tuple[Vm, Host | None, Image]:
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        if vm is None:
            raise NotFound(f"vm '{vm_id}' vanished")
        host = await s.get(Host, vm.host_id) if vm.host_id else None
        img = await s.get(Image, vm.image_id)
        if img is None:
            raise NotFound(f"image '{vm.image_id}' vanished")
        return vm, host, img


async def set_state(state: ManagerState, vm_id: str, new: str, **values: Any) -> None:
    """Record a VM's actual state (and optional columns) in its own transaction."""
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        if vm is None:
            return
        vm.state = new
        for k, v in values.items():
            setattr(vm, k, v)


async def _wait_ready(state: ManagerState, host: Host, vm_id: str) -> VmStatus:
    """Poll the agent until the guest is ready (running + guest agent answered) or failed."""
    client = hosts.agent_client(state, host)
    deadline = asyncio.get_running_loop().time() + state.settings.boot_timeout_s
    delay = 0.05
    while True:
        st = await client.get_vm(vm_id)
        if st.state == "failed" or (st.state == "running" and st.guest_ready):
            return st
        if st.state in ("stopped",):
            return st
        if asyncio.get_running_loop().time() > deadline:
            return st
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def _failure_reason(st: VmStatus) -> str:
    reason = st.error or f"VM ended in state {st.state}"
    if st.console_tail:
        reason += "\n--- console tail ---\n" + st.console_tail[-2000:]
    return reason


async def _boot(state: ManagerState, vm_id: str, progress: operations.Progress) -> dict[str, Any]:
    _vm, host, _ = await _load(state, vm_id)
    if host is None:
        raise Conflict("the VM has no host")
    await set_state(state, vm_id, "starting", state_reason=None, desired_state="running")
    await progress(60, "starting the VMM")
    client = hosts.agent_client(state, host)
    try:
        st = await client.start_vm(vm_id)
        await progress(75, "waiting for the guest agent")
        if not st.guest_ready and st.state != "failed":
            st = await _wait_ready(state, host, vm_id)
    except AgentError as exc:
        await set_state(state, vm_id, "failed", state_reason=agent_problem(exc, "start").detail)
        raise agent_problem(exc, "start") from exc
    if st.state == "running" and st.guest_ready:
        await set_state(
            state,
            vm_id,
            "running",
            pid=st.pid,
            ready_at=st.ready_at,
            started_at=utcnow(),
            state_reason=None,
        )
        return {"vm_id": vm_id, "state": "running"}
    if st.state == "running":
        reason = f"guest agent did not answer within {state.settings.boot_timeout_s:.0f} s"
        await set_state(
            state, vm_id, "running", pid=st.pid, state_reason=reason, started_at=utcnow()
        )
        return {"vm_id": vm_id, "state": "running", "warning": reason}
    reason = _failure_reason(st)
    await set_state(state, vm_id, "failed", state_reason=reason, pid=None)
    raise Conflict(f"the VM failed to boot: {reason}")


async def _provision(
    state: ManagerState, vm_id: str, start: bool, progress: operations.Progress
) -> dict[str, Any]:
    vm, host, img = await _load(state, vm_id)
    await progress(10, "placing the VM")
    if host is None:
        async with state.db.session() as s:
            host = await place(
                s, state, vm.vcpus, vm.memory_mib, vm.disk_size_mib or img.rootfs_size_mib
            )
            row = await s.get(Vm, vm_id)
            if row is not None:
                row.host_id = host.id
    await set_state(state, vm_id, "creating")
    await progress(30, f"preparing disk on host {host.name}")
    spec = await vm_wiring.complete_spec(state, vm_wiring.base_spec(vm, img))
    try:
        await hosts.agent_client(state, host).put_vm(spec)
    except AgentError as exc:
        p = agent_problem(exc, "create")
        await set_state(state, vm_id, "failed", state_reason=p.detail)
        raise p from exc
    if not start:
        await set_state(state, vm_id, "stopped", desired_state="stopped")
        return {"vm_id": vm_id, "state": "stopped"}
    return await _boot(state, vm_id, progress)


async def _action(
    state: ManagerState, vm_id: str, action: str, force: bool, progress: operations.Progress
) -> dict[str, Any]:
    if action == "start":
        return await _boot(state, vm_id, progress)
    _vm, host, _ = await _load(state, vm_id)
    if host is None:
        raise Conflict("the VM has no host")
    client = hosts.agent_client(state, host)
    try:
        if action == "stop":
            await set_state(state, vm_id, "stopping", desired_state="stopped")
            await progress(30, "forcing off" if force else "ACPI shutdown")
            st = await client.stop_vm(vm_id, force=force, timeout_s=state.settings.stop_timeout_s)
            await set_state(state, vm_id, "stopped", pid=None, ready_at=None, state_reason=None)
            return {"vm_id": vm_id, "state": st.state}
        if action == "pause":
            st = await client.pause_vm(vm_id)
            await set_state(state, vm_id, "paused", desired_state="paused")
        elif action == "resume":
            st = await client.resume_vm(vm_id)
            await set_state(state, vm_id, "running", desired_state="running")
        elif action == "reboot":
            await set_state(state, vm_id, "starting")
            st = await client.reboot_vm(vm_id)
            if not st.guest_ready:
                st = await _wait_ready(state, host, vm_id)
            await set_state(state, vm_id, "running", pid=st.pid, ready_at=st.ready_at)
        else:
            raise BadRequest(f"unknown action {action}")
    except AgentError as exc:
        p = agent_problem(exc, action)
        # Re-read the truth from the agent so the row does not lie.
        try:
            st = await client.get_vm(vm_id)
            await set_state(state, vm_id, st.state, state_reason=p.detail)
        except AgentError:
            await set_state(state, vm_id, "failed", state_reason=p.detail)
        raise p from exc
    return {"vm_id": vm_id, "state": st.state}


async def _delete(state: ManagerState, vm_id: str, progress: operations.Progress) -> dict[str, Any]:
    _vm, host, _ = await _load(state, vm_id)
    await set_state(state, vm_id, "deleting", desired_state="deleted")
    if host is not None:
        await progress(30, "removing the VM from its host")
        try:
            await hosts.agent_client(state, host).delete_vm(vm_id)
        except AgentNotFound:
            pass
        except AgentError as exc:
            p = agent_problem(exc, "delete")
            await set_state(state, vm_id, "failed", state_reason=p.detail)
            raise p from exc
    async with state.db.session() as s:
        row = await s.get(Vm, vm_id)
        if row is not None:
            await s.delete(row)
    return {"vm_id": vm_id, "deleted": True}


# --- entry points -------------------------------------------------------------------------


def _busy(state: ManagerState) -> dict[str, asyncio.Task[Any]]:
    busy: dict[str, asyncio.Task[Any]] = state.extras.setdefault("vm_busy", {})
    return busy


async def _run(
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Vm,
    kind: str,
    work: operations.Work,
) -> Operation:
    """Commit an operation for ``vm`` and start it; one operation per VM at a time."""
    running = await db_session.execute(
        select(Operation.id).where(
            Operation.resource_id == vm.id, Operation.status.in_(("pending", "running"))
        )
    )
    if running.first() is not None:
        raise Conflict(f"vm '{vm.name}' is busy with another operation; try again shortly")
    op = operations.create(
        db_session, principal=principal, kind=kind, resource_type="vm", resource_id=vm.id
    )
    await db_session.commit()
    operations.start(state, op.id, work)
    return op


async def create_vm(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, body: VmCreate
) -> tuple[Vm, Operation]:
    """Create a VM row and an operation that places, provisions and (optionally) boots it."""
    if body.from_snapshot:  # a new VM restored from a snapshot (features/snapshots)
        from nexus.manager.features.snapshots import service as snapshots

        return await snapshots.create_vm_from_snapshot(
            db_session=db_session, state=state, principal=principal, body=body
        )
    ensure_can_create(principal, "vm.create", "vm")
    ceilings.check_vm_size(
        state.settings,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        disk_mib=body.disk_size_mib,
    )
    img = await images.resolve(db_session=db_session, principal=principal, ref=body.image)
    if body.disk_size_mib is not None and body.disk_size_mib < img.rootfs_size_mib:
        raise BadRequest(
            f"disk_size_mib {body.disk_size_mib} is smaller than the image ({img.rootfs_size_mib})"
        )
    disk_mib = body.disk_size_mib or img.rootfs_size_mib
    host = await place(db_session, state, body.vcpus, body.memory_mib, disk_mib)
    vm = Vm(
        id=new_id("vm"),
        name=body.name,
        description=body.description,
        labels=body.labels,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        disk_size_mib=body.disk_size_mib,
        image_id=img.id,
        host_id=host.id,
        desired_state="running" if body.start else "stopped",
        state="pending",
        created_by_user_id=principal.user_id,
    )
    db_session.add(vm)
    await flush_unique(db_session, f"you already have a VM named '{body.name}'")
    await vm_networks.allocate_nics(db_session, principal, vm, body.networks)
    audit.record(
        db_session,
        actor=principal,
        action="vm.create",
        resource_type="vm",
        resource_id=vm.id,
        after=snapshot(vm),
    )
    start = body.start

    async def work(progress: operations.Progress) -> dict[str, Any]:
        return await _provision(state, vm.id, start, progress)

    op = await _run(db_session, state, principal, vm, "vm.create", work)
    return vm, op


ALLOWED_FROM = {
    "start": ("stopped", "failed"),
    "stop": ("running", "paused", "starting", "failed"),
    "reboot": ("running",),
    "pause": ("running",),
    "resume": ("paused",),
}


async def act(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    action: str,
    force: bool = False,
) -> tuple[Vm, Operation]:
    """start | stop | reboot | pause | resume, as an operation."""
    vm = await get_vm(db_session=db_session, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", f"vm.{action}")
    if vm.state not in ALLOWED_FROM[action]:
        raise Conflict(
            f"cannot {action} vm '{vm.name}' while it is {vm.state} "
            f"(allowed from: {', '.join(ALLOWED_FROM[action])})"
        )
    audit.record(
        db_session,
        actor=principal,
        action=f"vm.{action}",
        resource_type="vm",
        resource_id=vm.id,
        before={"state": vm.state},
        after={"force": force} if force else None,
    )

    async def work(progress: operations.Progress) -> dict[str, Any]:
        return await _action(state, vm_id, action, force, progress)

    op = await _run(db_session, state, principal, vm, f"vm.{action}", work)
    return vm, op


async def delete_vm(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, vm_id: str
) -> tuple[Vm, Operation]:
    """Delete a VM (force-stops it) and everything of it on its host."""
    vm = await get_vm(db_session=db_session, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", "vm.delete")
    if vm.state == "deleting":
        raise Conflict(f"vm '{vm.name}' is already being deleted")
    audit.record(
        db_session,
        actor=principal,
        action="vm.delete",
        resource_type="vm",
        resource_id=vm.id,
        before=snapshot(vm),
    )

    async def work(progress: operations.Progress) -> dict[str, Any]:
        return await _delete(state, vm_id, progress)

    op = await _run(db_session, state, principal, vm, "vm.delete", work)
    return vm, op


async def update_vm(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    body: VmUpdate,
) -> Vm:
    """Rename, describe, label; resize only while stopped (applied at the next start)."""
    vm = await get_vm(db_session=db_session, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", "vm.update")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    ceilings.check_vm_size(
        state.settings, vcpus=changes.get("vcpus"), memory_mib=changes.get("memory_mib")
    )
    if ("vcpus" in changes or "memory_mib" in changes) and vm.state not in ("stopped", "failed"):
        raise Conflict(f"vcpus and memory_mib can change only while stopped (vm is {vm.state})")
    before = snapshot(vm)
    for k, v in changes.items():
        setattr(vm, k, v)
    await flush_unique(db_session, f"you already have a VM named '{body.name}'")
    if {"vcpus", "memory_mib", "name"} & set(changes) and vm.state in ("stopped", "failed"):
        # The host keeps the spec it boots from: hand it the new one now.
        try:
            await vm_wiring.push_spec(db_session, state, vm.id)
        except NotFound:
            pass  # not placed on a host yet: the create operation sends the spec
        except AgentError as exc:
            raise agent_problem(exc, "update") from exc
    audit.record(
        db_session,
        actor=principal,
        action="vm.update",
        resource_type="vm",
        resource_id=vm.id,
        before=before,
        after=snapshot(vm),
    )
    return vm


async def console(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, vm_id: str, tail: int
) -> str:
    """The last ``tail`` lines of the VM's serial console."""
    vm = await get_vm(db_session=db_session, principal=principal, vm_id=vm_id)
    host = await db_session.get(Host, vm.host_id) if vm.host_id else None
    if host is None:
        return ""
    try:
        return await hosts.agent_client(state, host).console(vm.id, tail)
    except AgentNotFound:
        return ""
    except AgentError as exc:
        raise agent_problem(exc, "console") from exc


def in_transition(vm: Vm) -> bool:
    """True while an operation should be driving this VM."""
    return vm.state in TRANSITIONAL
