"""TTL: extend a VM's life, and the policy loop's warning and expiry.

A VM made with ``ttl_s`` or ``expires_at`` carries ``vms.expires_at``. The policy loop
(:func:`expire_due`, one leader) sets ``vms.ttl_warned_at`` once ``ttl_warning_s`` before
expiry (audited ``vm.ttl.warning``: the state change the owner is told about), and at
``expires_at`` deletes the VM as its owner through the VM service — an ordinary
``vm.delete`` operation, audited ``vm.ttl.expire``. ``POST /v1/vms/{id}/extend`` moves the
expiry (and clears ``ttl_warned_at``, so a new warning comes before the new expiry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Conflict, Problem, ValidationFailed
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.ttl.policy import expiry
from nexus.manager.features.ttl.schemas import VmExtend
from nexus.manager.features.users.models import User
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal, ensure_can_modify

log = get_logger(__name__)


async def extend(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    body: VmExtend,
) -> Vm:
    """Move (or remove) a VM's expiry; owner or admin."""
    vm = await vms.get_vm(db_session=db_session, principal=principal, vm_id=vm_id)
    ensure_can_modify(principal, vm, "vm", "vm.extend")
    given = [x for x in (body.ttl_s, body.by_s, body.expires_at) if x is not None]
    if len(given) + int(body.clear) != 1:
        raise ValidationFailed("give exactly one of ttl_s, by_s, expires_at or clear: true")
    if vm.state == "deleting":
        raise Conflict(f"vm '{vm.name}' is being deleted")
    before = vm.expires_at
    if body.clear:
        new = None
    elif body.by_s is not None:
        start = vm.expires_at or utcnow()
        new = expiry(state.settings, expires_at=start + timedelta(seconds=body.by_s))
    else:
        new = expiry(state.settings, ttl_s=body.ttl_s, expires_at=body.expires_at)
    vm.expires_at = new
    vm.ttl_warned_at = None
    audit.record(
        db_session,
        actor=principal,
        action="vm.extend",
        resource_type="vm",
        resource_id=vm.id,
        before={"expires_at": str(before) if before else None},
        after={"expires_at": str(new) if new else None},
    )
    return vm


#: Features whose resources own a VM (containers) expire the resource whole when its VM
#: expires: a hook deletes it (its VM included) and returns True, or returns False when the
#: VM is not one of theirs. Tried in order, before the plain VM deletion.
ExpireHook = Callable[[AsyncSession, ManagerState, Principal, Vm], Awaitable[bool]]
EXPIRE_HOOKS: list[ExpireHook] = []


async def _owner(s: AsyncSession, user_id: str) -> Principal | None:
    user = await s.get(User, user_id)
    if user is None:
        return None
    return Principal(user_id=user.id, username=user.username, role=user.role)  # type: ignore[arg-type]


async def expire_due(state: ManagerState) -> dict[str, int]:
    """Warn owners of VMs about to expire (``ttl_warned_at``), delete expired ones."""
    counts = {"warned": 0, "expired": 0}
    now = utcnow()
    warn_before = timedelta(seconds=state.settings.ttl_warning_s)
    async with state.db.session() as s:
        to_warn = (
            await s.execute(
                select(Vm).where(
                    Vm.expires_at.is_not(None),
                    Vm.ttl_warned_at.is_(None),
                    Vm.expires_at <= now + warn_before,
                    Vm.state != "deleting",
                )
            )
        ).scalars()
        for vm in to_warn:
            _warn(s, vm, now)
            counts["warned"] += 1
        expired = list(
            (
                await s.execute(
                    select(Vm.id).where(
                        Vm.expires_at.is_not(None), Vm.expires_at <= now, Vm.state != "deleting"
                    )
                )
            ).scalars()
        )
        busy = set(
            (
                await s.execute(
                    select(Operation.resource_id).where(
                        Operation.status.in_(("pending", "running")),
                        Operation.resource_id.in_(expired),
                    )
                )
            ).scalars()
        )
    for vm_id in expired:
        if vm_id in busy:
            continue  # an operation drives it now: next pass
        try:
            if await _expire(state, vm_id):
                counts["expired"] += 1
        except Problem as exc:
            log.warning("ttl.expire_refused", vm_id=vm_id, error=exc.detail)
    return counts


def _warn(s: AsyncSession, vm: Vm, now: object) -> None:
    vm.ttl_warned_at = utcnow()
    audit.record(
        s,
        actor=None,
        action="vm.ttl.warning",
        resource_type="vm",
        resource_id=vm.id,
        after={"expires_at": str(vm.expires_at), "owner": vm.created_by_user_id},
    )
    log.info("ttl.warning", vm_id=vm.id, expires_at=str(vm.expires_at))


async def _expire(state: ManagerState, vm_id: str) -> bool:
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        if vm is None or vm.expires_at is None or vm.expires_at > utcnow():
            return False  # extended meanwhile
        principal = await _owner(s, vm.created_by_user_id)
        if principal is None:
            return False
        if vm.ttl_warned_at is None:  # the warning window was shorter than a pass
            _warn(s, vm, utcnow())
        audit.record(
            s,
            actor=None,
            action="vm.ttl.expire",
            resource_type="vm",
            resource_id=vm.id,
            after={"expires_at": str(vm.expires_at)},
        )
        for hook in EXPIRE_HOOKS:
            if await hook(s, state, principal, vm):
                log.info("ttl.expired", vm_id=vm_id, by="hook")
                return True
        _, op = await vms.delete_vm(db_session=s, state=state, principal=principal, vm_id=vm_id)
        log.info("ttl.expired", vm_id=vm_id, operation_id=op.id)
    return True
