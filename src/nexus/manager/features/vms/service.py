"""VM lifecycle: create (place + provision + boot), start, stop, reboot, pause, resume, delete,
update, list — as operations where they take time. Ownership, RBAC and audit for every path.

Actual state comes from the host agent; the reconciler loop repairs drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database, flush_unique
from nexus.core.errors import BadRequest, Conflict, NotFound
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.paging import next_offset_cursor
from nexus.hostapi.agent_client import AgentError, AgentNotFound
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images import service as images
from nexus.manager.features.networks import service as vm_networks
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.ttl.policy import expiry
from nexus.manager.features.vms import ceilings, lifecycle, listcache, placement, spec, states
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.schemas import VmCreate, VmPage, VmRead, VmUpdate
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)


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
        "expires_at": str(vm.expires_at) if vm.expires_at else None,
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
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Vm], int]:
    """VMs the caller may see, newest first, with the total count; ``q``: the name contains
    it, in any case (``%`` and ``_`` are literal)."""
    conds: list[Any] = []
    if not principal.is_admin:
        conds.append(Vm.created_by_user_id == principal.user_id)
    elif owner:
        conds.append(Vm.created_by_user_id == owner)
    if state:
        conds.append(Vm.state == state)
    if host_id:
        conds.append(Vm.host_id == host_id)
    if q:
        conds.append(func.lower(Vm.name).contains(q.lower(), autoescape=True))
    stmt = select(Vm).where(*conds).order_by(Vm.id.desc())
    if label:
        # Labels are JSON: filter in Python (portable across SQLite and PostgreSQL).
        k, _, v = label.partition("=")
        every = (await db_session.execute(stmt)).scalars().all()
        hits = [vm for vm in every if k in vm.labels and (not v or vm.labels[k] == v)]
        return hits[offset : offset + limit], len(hits)
    total = (await db_session.execute(select(func.count(Vm.id)).where(*conds))).scalar_one()
    rows = (await db_session.execute(stmt.limit(limit).offset(offset))).scalars()
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
            offset, limit = filters["offset"], filters["limit"]
            page = VmPage(
                items=[VmRead.model_validate(v) for v in items],
                next_cursor=next_offset_cursor(offset, len(items), limit, offset + limit < total),
            )
        return page.model_dump_json().encode()

    return await listcache.cache.get_or_compute(key, cache_ttl_s, compute)


# --- entry points -------------------------------------------------------------------------


#: What a feature adds to a new VM in the VM's own transaction, before its create operation
#: starts (containers: volume attachments and port forwards). Raising rolls the VM back.
Prepare = Callable[[AsyncSession, Vm], Awaitable[None]]


async def create_vm(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    body: VmCreate,
    prepare: Prepare | None = None,
) -> tuple[Vm, Operation]:
    """Create a VM row and an operation that places, provisions and (optionally) boots it.
    ``prepare`` runs once the row (with its host and NICs) is flushed, before the operation
    is committed: what it adds is in the spec the host gets, and its errors undo the VM."""
    ensure_can_create(principal, "vm.create", "vm")
    ceilings.check_vm_size(
        state.settings,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        disk_mib=body.disk_size_mib,
    )
    expires_at = expiry(state.settings, ttl_s=body.ttl_s, expires_at=body.expires_at)
    img = await images.resolve(db_session=db_session, principal=principal, ref=body.image)
    if body.disk_size_mib is not None and body.disk_size_mib < img.rootfs_size_mib:
        raise BadRequest(
            f"disk_size_mib {body.disk_size_mib} is smaller than the image ({img.rootfs_size_mib})"
        )
    disk_mib = body.disk_size_mib or img.rootfs_size_mib
    host = await placement.place(db_session, state, body.vcpus, body.memory_mib, disk_mib)
    await quotas.check(
        db_session,
        state.settings,
        principal,
        action="vm.create",
        resource_type="vm",
        add={"vms": 1, "vcpus": body.vcpus, "memory_mib": body.memory_mib, "disk_mib": disk_mib},
    )
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
        expires_at=expires_at,
        created_by_user_id=principal.user_id,
        first_boot_spec=(
            {"ssh_keys": body.ssh_keys, "user_data": body.user_data}
            if body.ssh_keys or body.user_data is not None
            else None
        ),
    )
    db_session.add(vm)
    await flush_unique(db_session, f"you already have a VM named '{body.name}'")
    await vm_networks.allocate_nics(db_session, principal, vm, body.networks)
    if prepare is not None:
        await prepare(db_session, vm)
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
        return await lifecycle.provision(state, vm.id, start, progress)

    op = await lifecycle.start_operation(db_session, state, principal, vm, "vm.create", work)
    return vm, op


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
    states.ensure_allowed(vm.name, vm.state, action)
    if action == "start":  # refused while over quota (e.g. after an admin lowered it)
        await quotas.check_owner(
            db_session,
            state.settings,
            principal,
            vm.created_by_user_id,
            action="vm.start",
            resource_type="vm",
            resource_id=vm.id,
            add={"vms": 0, "vcpus": 0, "memory_mib": 0, "disk_mib": 0},
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
        return await lifecycle.run_action(state, vm_id, action, force, progress)

    op = await lifecycle.start_operation(db_session, state, principal, vm, f"vm.{action}", work)
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
        return await lifecycle.remove(state, vm_id, progress)

    op = await lifecycle.start_operation(db_session, state, principal, vm, "vm.delete", work)
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
    if ("vcpus" in changes or "memory_mib" in changes) and not states.allows(vm.state, "resize"):
        raise Conflict(f"vcpus and memory_mib can change only while stopped (vm is {vm.state})")
    grow = {
        k: changes[k] - getattr(vm, k)
        for k in ("vcpus", "memory_mib")
        if k in changes and changes[k] > getattr(vm, k)
    }
    if grow:
        await quotas.check_owner(
            db_session,
            state.settings,
            principal,
            vm.created_by_user_id,
            action="vm.update",
            resource_type="vm",
            resource_id=vm.id,
            add=grow,
        )
    before = snapshot(vm)
    for k, v in changes.items():
        setattr(vm, k, v)
    await flush_unique(db_session, f"you already have a VM named '{body.name}'")
    if {"vcpus", "memory_mib", "name"} & set(changes) and states.allows(vm.state, "resize"):
        # The host keeps the spec it boots from: hand it the new one now.
        try:
            await spec.push_spec(db_session, state, vm.id)
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
    return states.in_transition(vm.state)
