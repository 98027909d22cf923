"""Instance groups: ``desired`` VMs made from one template, kept running, scaled on CPU.

The policy loop calls :func:`reconcile_all` (one leader): for each group it replaces members
that failed (or stopped although they should run) — deletes them and makes new ones — and
creates or deletes members until ``desired`` run; with a ``scale_rule`` it first moves
``desired`` toward ``ceil(members * cpu / target)`` within ``min..max`` (after the rule's
cooldown). Members are made and deleted through the VM service as the group's owner, so the
owner's quota, RBAC and audit apply; each member carries ``vms.group_id``.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import Problem, ValidationFailed
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.groups.models import InstanceGroup
from nexus.manager.features.groups.schemas import GroupCreate, GroupRead, GroupUpdate
from nexus.manager.features.guest.models import VmMetricSample
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.users.models import User
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.schemas import VmCreate
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)


def view(g: InstanceGroup) -> dict[str, Any]:
    """Audit view of a group."""
    return {
        "name": g.name,
        "min": g.min_size,
        "max": g.max_size,
        "desired": g.desired,
        "scale_rule": g.scale_rule,
        "template": g.template,
    }


async def members(s: AsyncSession, group_id: str) -> list[Vm]:
    """A group's VMs, oldest first."""
    q = select(Vm).where(Vm.group_id == group_id).order_by(Vm.id)
    return list((await s.execute(q)).scalars())


async def read(s: AsyncSession, g: InstanceGroup) -> GroupRead:
    """API view of a group."""
    vms_of = await members(s, g.id)
    return GroupRead(
        id=g.id,
        name=g.name,
        description=g.description,
        template=g.template,
        min=g.min_size,
        max=g.max_size,
        desired=g.desired,
        scale_rule=g.scale_rule,
        members=[v.id for v in vms_of],
        running=sum(1 for v in vms_of if v.state == "running"),
        last_scaled_at=g.last_scaled_at,
        state_reason=g.state_reason,
        created_by_user_id=g.created_by_user_id,
        created_at=g.created_at,
        updated_at=g.updated_at,
    )


# --- CRUD ---------------------------------------------------------------------------------


async def get_group(
    *, db_session: AsyncSession, principal: Principal, group_id: str
) -> InstanceGroup:
    """A group the caller may see (404 otherwise)."""
    return ensure_visible(
        principal, await db_session.get(InstanceGroup, group_id), "group", group_id
    )


async def list_groups(*, db_session: AsyncSession, principal: Principal) -> list[InstanceGroup]:
    """Groups the caller may see (admin: all), by name."""
    q = select(InstanceGroup)
    if not principal.is_admin:
        q = q.where(InstanceGroup.created_by_user_id == principal.user_id)
    return list((await db_session.execute(q.order_by(InstanceGroup.name))).scalars())


async def create_group(
    *, db_session: AsyncSession, principal: Principal, body: GroupCreate
) -> InstanceGroup:
    """Create a group; the policy loop makes its members."""
    ensure_can_create(principal, "group.create", "group")
    g = InstanceGroup(
        id=new_id("grp"),
        name=body.name,
        description=body.description,
        template=body.template.model_dump(),
        min_size=body.min,
        max_size=body.max,
        desired=body.min if body.desired is None else body.desired,
        scale_rule=body.scale_rule.model_dump() if body.scale_rule else None,
        created_by_user_id=principal.user_id,
    )
    db_session.add(g)
    await flush_unique(db_session, f"you already have a group named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="group.create",
        resource_type="group",
        resource_id=g.id,
        after=view(g),
    )
    return g


async def update_group(
    *, db_session: AsyncSession, principal: Principal, group_id: str, body: GroupUpdate
) -> InstanceGroup:
    """Change sizes, rule or description (``desired`` is kept within the new min..max)."""
    g = await get_group(db_session=db_session, principal=principal, group_id=group_id)
    ensure_can_modify(principal, g, "group", "group.update")
    before = view(g)
    changes = body.model_dump(exclude_unset=True)
    lo = changes.get("min", g.min_size) if changes.get("min") is not None else g.min_size
    hi = changes.get("max", g.max_size) if changes.get("max") is not None else g.max_size
    if lo > hi:
        raise ValidationFailed(f"min ({lo}) is above max ({hi})")
    desired = changes.get("desired")
    if desired is not None and not lo <= desired <= hi:
        raise ValidationFailed(f"desired ({desired}) must be between min ({lo}) and max ({hi})")
    g.min_size, g.max_size = lo, hi
    g.desired = min(max(desired if desired is not None else g.desired, lo), hi)
    if "scale_rule" in changes:
        g.scale_rule = changes["scale_rule"]
    if changes.get("description") is not None:
        g.description = changes["description"]
    audit.record(
        db_session,
        actor=principal,
        action="group.update",
        resource_type="group",
        resource_id=g.id,
        before=before,
        after=view(g),
    )
    return g


async def scale(
    *, db_session: AsyncSession, principal: Principal, group_id: str, desired: int
) -> InstanceGroup:
    """Set ``desired`` (clamped to min..max; a schedule's ``scale`` action)."""
    g = await get_group(db_session=db_session, principal=principal, group_id=group_id)
    ensure_can_modify(principal, g, "group", "group.scale")
    before = g.desired
    g.desired = min(max(desired, g.min_size), g.max_size)
    g.last_scaled_at = utcnow()
    audit.record(
        db_session,
        actor=principal,
        action="group.scale",
        resource_type="group",
        resource_id=g.id,
        before={"desired": before},
        after={"desired": g.desired, "asked": desired},
    )
    return g


async def delete_group(*, db_session: AsyncSession, principal: Principal, group_id: str) -> None:
    """Delete a group; its members are released (deleted by the policy loop)."""
    g = await get_group(db_session=db_session, principal=principal, group_id=group_id)
    ensure_can_modify(principal, g, "group", "group.delete")
    audit.record(
        db_session,
        actor=principal,
        action="group.delete",
        resource_type="group",
        resource_id=g.id,
        before=view(g),
    )
    await db_session.delete(g)


# --- the policy loop ----------------------------------------------------------------------


def _failed(vm: Vm) -> bool:
    """A member to replace: failed, or stopped although it should run."""
    return vm.state == "failed" or (vm.state == "stopped" and vm.desired_state == "running")


async def _busy(s: AsyncSession) -> set[str]:
    q = select(Operation.resource_id).where(Operation.status.in_(("pending", "running")))
    return {r for r in (await s.execute(q)).scalars() if r}


async def _cpu(s: AsyncSession, vm_list: list[Vm], window_s: int) -> float | None:
    """The members' mean CPU per vCPU (%) over the last ``window_s`` (None: no samples)."""
    since = utcnow() - timedelta(seconds=window_s)
    per_vm: list[float] = []
    for vm in vm_list:
        avg = (
            await s.execute(
                select(func.avg(VmMetricSample.cpu_percent)).where(
                    VmMetricSample.vm_id == vm.id,
                    VmMetricSample.sampled_at >= since,
                    VmMetricSample.cpu_percent.is_not(None),
                )
            )
        ).scalar()
        if avg is not None:
            per_vm.append(float(avg) / max(vm.vcpus, 1))
    return sum(per_vm) / len(per_vm) if per_vm else None


async def _autoscale(s: AsyncSession, g: InstanceGroup, live: list[Vm]) -> None:
    rule = g.scale_rule or {}
    now = utcnow()
    if g.last_scaled_at and now - g.last_scaled_at < timedelta(seconds=rule.get("cooldown_s", 0)):
        return
    running = [v for v in live if v.state == "running"]
    cpu = await _cpu(s, running, int(rule.get("window_s", 60)))
    if cpu is None or not running:
        return
    target = float(rule["target_percent"])
    want = min(max(math.ceil(len(running) * cpu / target), g.min_size), g.max_size)
    if want == g.desired:
        return
    audit.record(
        s,
        actor=None,
        action="group.autoscale",
        resource_type="group",
        resource_id=g.id,
        before={"desired": g.desired},
        after={"desired": want, "cpu_percent": round(cpu, 1), "target_percent": target},
    )
    log.info("group.autoscale", group_id=g.id, was=g.desired, now=want, cpu=round(cpu, 1))
    g.desired, g.last_scaled_at = want, now


async def _owner(s: AsyncSession, user_id: str) -> Principal | None:
    user = await s.get(User, user_id)
    if user is None or user.disabled:
        return None
    return Principal(user_id=user.id, username=user.username, role=user.role)  # type: ignore[arg-type]


async def reconcile_all(state: ManagerState) -> dict[str, int]:
    """One pass over every group (and every orphaned member of a deleted group)."""
    counts = {"created": 0, "deleted": 0, "replaced": 0}
    async with state.db.session() as s:
        group_ids = list((await s.execute(select(InstanceGroup.id))).scalars())
        orphans = list(
            (
                await s.execute(
                    select(Vm.id, Vm.created_by_user_id).where(
                        Vm.group_id.is_not(None), Vm.group_id.not_in(select(InstanceGroup.id))
                    )
                )
            ).all()
        )
    for vm_id, owner_id in orphans:  # the group was deleted: so are its members
        if await _delete_member(state, owner_id, vm_id):
            counts["deleted"] += 1
    for gid in group_ids:
        try:
            for k, v in (await _reconcile_group(state, gid)).items():
                counts[k] += v
        except Exception:
            log.exception("group.reconcile_error", group_id=gid)
    return counts


async def _delete_member(state: ManagerState, owner_id: str, vm_id: str) -> bool:
    async with state.db.session() as s:
        principal = await _owner(s, owner_id)
        vm = await s.get(Vm, vm_id)
        if principal is None or vm is None or vm.state == "deleting" or vm.id in await _busy(s):
            return False
        try:
            await vms.delete_vm(db_session=s, state=state, principal=principal, vm_id=vm_id)
        except Problem as exc:
            log.warning("group.member_delete_refused", vm_id=vm_id, error=exc.detail)
            return False
    return True


async def _reconcile_group(state: ManagerState, gid: str) -> dict[str, int]:
    counts = {"created": 0, "deleted": 0, "replaced": 0}
    async with state.db.session() as s:
        g = await s.get(InstanceGroup, gid)
        if g is None:
            return counts
        principal = await _owner(s, g.created_by_user_id)
        if principal is None:
            return counts
        busy = await _busy(s)
        all_members = await members(s, gid)
        broken = [v for v in all_members if _failed(v) and v.id not in busy]
        live = [v for v in all_members if v.state != "deleting" and v not in broken]
        if g.scale_rule:
            await _autoscale(s, g, live)
        desired, owner_id, name, template = g.desired, g.created_by_user_id, g.name, g.template
        taken = {v.name for v in all_members}
    for vm in broken:  # replace: delete it; the count below makes a new one
        if await _delete_member(state, owner_id, vm.id):
            counts["replaced"] += 1
            log.info("group.member_replaced", group_id=gid, vm_id=vm.id, state=vm.state)
    extra = len(live) - desired
    for vm in reversed(live[len(live) - extra :] if extra > 0 else []):  # newest first
        if await _delete_member(state, owner_id, vm.id):
            counts["deleted"] += 1
    reason = None
    for _ in range(max(0, desired - len(live))):
        n = 1
        while f"{name}-{n}" in taken:
            n += 1
        taken.add(f"{name}-{n}")
        try:
            async with state.db.session() as s:
                body = VmCreate.model_validate({**template, "name": f"{name}-{n}", "start": True})
                vm, _op = await vms.create_vm(
                    db_session=s, state=state, principal=principal, body=body
                )
                vm.group_id = gid
            counts["created"] += 1
        except Problem as exc:
            reason = f"could not create a member: {exc.detail}"
            log.warning("group.member_create_refused", group_id=gid, error=exc.detail)
            break
    async with state.db.session() as s:
        g = await s.get(InstanceGroup, gid)
        if g is not None and g.state_reason != reason:
            g.state_reason = reason
    return counts
