"""Schedules: cron-timed actions on a VM or an instance group.

``next_run_at`` is computed with croniter in the schedule's own time zone, so "every day at
01:30 Europe/Berlin" stays at 01:30 local time across daylight-saving changes (the UTC
instant moves by an hour). The policy loop (one leader, ``policy_interval_s``) calls
:func:`run_due`: each due schedule is *claimed* with a conditional UPDATE of its
``next_run_at`` (so even two leaders could not run it twice), then run once as a
``schedule.run`` operation, acting as the schedule's owner through the VM and group services
(their RBAC and audit apply). After downtime a schedule that missed several due times runs
**once**, and the run says how many it folded in (``missed``). A schedule whose resource is
gone turns itself off (``enabled`` false, ``disabled_reason``, ``disabled_at``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Conflict, NotFound, ValidationFailed
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.groups import service as groups
from nexus.manager.features.groups.models import InstanceGroup
from nexus.manager.features.operations import service as operations
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.schedules.models import Schedule, ScheduleRun
from nexus.manager.features.schedules.schemas import (
    ScheduleCreate,
    ScheduleRunRead,
    ScheduleUpdate,
)
from nexus.manager.features.snapshots import service as snapshots
from nexus.manager.features.snapshots.models import Snapshot
from nexus.manager.features.snapshots.schemas import SnapshotCreate
from nexus.manager.features.users.models import User
from nexus.manager.features.vms import service as vms
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)

ACTIONS: dict[str, tuple[str, ...]] = {
    "vm": ("start", "stop", "restart", "snapshot", "delete"),
    "group": ("scale", "delete"),
}
MAX_MISSED_COUNT = 10_000  # count missed due times up to this many (then say "at least")
RUN_TIMEOUT_S = 900.0


def view(s: Schedule) -> dict[str, Any]:
    """Audit view of a schedule."""
    return {
        "name": s.name,
        "resource_type": s.resource_type,
        "resource_id": s.resource_id,
        "action": s.action,
        "cron": s.cron,
        "timezone": s.timezone,
        "enabled": s.enabled,
        "args": s.args,
    }


# --- time ---------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (422 when unknown)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationFailed(f"timezone: unknown time zone '{name}' (IANA names)") from exc


def check_cron(cron: str) -> None:
    """Refuse (422) anything but a five-field cron expression croniter accepts."""
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ValidationFailed(
            f"cron: '{cron}' is not a five-field cron expression "
            "(minute hour day-of-month month day-of-week)"
        )


def next_after(cron: str, tz: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` fires in ``tz``, in UTC."""
    local = after.astimezone(zone(tz))
    nxt: datetime = croniter(cron, local).get_next(datetime)
    return nxt.astimezone(UTC)


def due_times(cron: str, tz: str, first: datetime, now: datetime) -> tuple[int, datetime]:
    """How many times ``cron`` fell due from ``first`` (included) up to ``now``, and the
    next due time after ``now``."""
    count, t = 0, first
    while t <= now and count < MAX_MISSED_COUNT:
        count += 1
        t = next_after(cron, tz, t)
    if t <= now:  # more than we count: jump ahead
        t = next_after(cron, tz, now)
    return count, t


# --- CRUD ---------------------------------------------------------------------------------


async def _target(
    s: AsyncSession, principal: Principal, resource_type: str, resource_id: str, action: str
) -> Vm | InstanceGroup:
    """The scheduled resource: visible to the caller (404) and theirs to change (403)."""
    obj: Vm | InstanceGroup | None
    if resource_type == "vm":
        obj = await s.get(Vm, resource_id)
    else:
        obj = await s.get(InstanceGroup, resource_id)
    ensure_visible(principal, obj, resource_type, resource_id)
    if obj is None:  # ensure_visible raised already; this narrows the type
        raise NotFound(f"{resource_type} '{resource_id}' not found")
    ensure_can_modify(principal, obj, resource_type, f"schedule.{action}")
    return obj


def _check(resource_type: str, action: str, args: dict[str, Any]) -> None:
    if action not in ACTIONS[resource_type]:
        raise ValidationFailed(
            f"action: a {resource_type} schedule may {', '.join(ACTIONS[resource_type])}"
        )
    if action == "scale":
        desired = args.get("desired")
        if not isinstance(desired, int) or isinstance(desired, bool) or desired < 0:
            raise ValidationFailed("args.desired: scale needs a number of VMs (>= 0)")
    if len(str(args)) > 2000:
        raise ValidationFailed("args: at most 2000 characters")


async def get_schedule(
    *, db_session: AsyncSession, principal: Principal, schedule_id: str
) -> Schedule:
    """A schedule the caller may see (404 otherwise)."""
    return ensure_visible(
        principal, await db_session.get(Schedule, schedule_id), "schedule", schedule_id
    )


async def list_schedules(
    *,
    db_session: AsyncSession,
    principal: Principal,
    resource_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Schedule], int]:
    """Schedules the caller may see (admin: all), newest first."""
    q = select(Schedule)
    if not principal.is_admin:
        q = q.where(Schedule.created_by_user_id == principal.user_id)
    if resource_id:
        q = q.where(Schedule.resource_id == resource_id)
    total = (await db_session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = await db_session.execute(q.order_by(Schedule.id.desc()).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


async def create_schedule(
    *, db_session: AsyncSession, principal: Principal, body: ScheduleCreate
) -> Schedule:
    """Create a schedule on a resource the caller may change."""
    ensure_can_create(principal, "schedule.create", "schedule")
    check_cron(body.cron)
    zone(body.timezone)
    _check(body.resource_type, body.action, body.args)
    await _target(db_session, principal, body.resource_type, body.resource_id, "create")
    sched = Schedule(
        id=new_id("sch"),
        name=body.name,
        resource_type=body.resource_type,
        resource_id=body.resource_id,
        action=body.action,
        cron=body.cron,
        timezone=body.timezone,
        enabled=body.enabled,
        args=body.args,
        next_run_at=next_after(body.cron, body.timezone, utcnow()) if body.enabled else None,
        created_by_user_id=principal.user_id,
    )
    db_session.add(sched)
    await db_session.flush()
    audit.record(
        db_session,
        actor=principal,
        action="schedule.create",
        resource_type="schedule",
        resource_id=sched.id,
        after={**view(sched), "next_run_at": str(sched.next_run_at)},
    )
    return sched


async def update_schedule(
    *, db_session: AsyncSession, principal: Principal, schedule_id: str, body: ScheduleUpdate
) -> Schedule:
    """Change a schedule; a new cron/timezone or enabling it recomputes ``next_run_at``."""
    sched = await get_schedule(db_session=db_session, principal=principal, schedule_id=schedule_id)
    ensure_can_modify(principal, sched, "schedule", "schedule.update")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "cron" in changes:
        check_cron(changes["cron"])
    if "timezone" in changes:
        zone(changes["timezone"])
    _check(
        sched.resource_type, changes.get("action", sched.action), changes.get("args", sched.args)
    )
    if changes.get("enabled") and not sched.enabled:
        # re-enabling (also after it turned itself off): the resource must still be there
        await _target(db_session, principal, sched.resource_type, sched.resource_id, "update")
        sched.disabled_reason = sched.disabled_at = None
    before = view(sched)
    for k, v in changes.items():
        setattr(sched, k, v)
    if {"cron", "timezone", "enabled"} & set(changes):
        sched.next_run_at = (
            next_after(sched.cron, sched.timezone, utcnow()) if sched.enabled else None
        )
    audit.record(
        db_session,
        actor=principal,
        action="schedule.update",
        resource_type="schedule",
        resource_id=sched.id,
        before=before,
        after={**view(sched), "next_run_at": str(sched.next_run_at)},
    )
    return sched


async def delete_schedule(
    *, db_session: AsyncSession, principal: Principal, schedule_id: str
) -> None:
    """Delete a schedule and its run history."""
    sched = await get_schedule(db_session=db_session, principal=principal, schedule_id=schedule_id)
    ensure_can_modify(principal, sched, "schedule", "schedule.delete")
    audit.record(
        db_session,
        actor=principal,
        action="schedule.delete",
        resource_type="schedule",
        resource_id=sched.id,
        before=view(sched),
    )
    await db_session.delete(sched)


async def list_runs(
    *,
    db_session: AsyncSession,
    principal: Principal,
    schedule_id: str,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[ScheduleRunRead], int]:
    """A schedule's runs, newest first, each with its operation's outcome."""
    sched = await get_schedule(db_session=db_session, principal=principal, schedule_id=schedule_id)
    cond = ScheduleRun.schedule_id == sched.id
    total = (await db_session.execute(select(func.count(ScheduleRun.id)).where(cond))).scalar_one()
    rows = (
        await db_session.execute(
            select(ScheduleRun, Operation)
            .outerjoin(Operation, Operation.id == ScheduleRun.operation_id)
            .where(cond)
            .order_by(ScheduleRun.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return [
        ScheduleRunRead(
            id=run.id,
            schedule_id=run.schedule_id,
            scheduled_for=run.scheduled_for,
            missed=run.missed,
            detail=run.detail,
            operation_id=run.operation_id,
            status=op.status if op else None,
            error=op.error if op else None,
            result=op.result if op else None,
            created_at=run.created_at,
        )
        for run, op in rows
    ], int(total)


# --- the policy loop ----------------------------------------------------------------------


async def owner_principal(s: AsyncSession, user_id: str) -> Principal | None:
    """The principal a background run acts as: the resource owner (None if the user is gone
    or disabled)."""
    user = await s.get(User, user_id)
    if user is None or user.disabled:
        return None
    return Principal(user_id=user.id, username=user.username, role=user.role)  # type: ignore[arg-type]


async def disable_orphans(state: ManagerState) -> int:
    """Turn off enabled schedules whose resource was deleted (``enabled`` false,
    ``disabled_reason``, ``disabled_at``: the owner is to be told); audited."""
    n = 0
    async with state.db.session() as s:
        for resource_type, model in (("vm", Vm), ("group", InstanceGroup)):
            gone = (
                await s.execute(
                    select(Schedule).where(
                        Schedule.enabled.is_(True),
                        Schedule.resource_type == resource_type,
                        Schedule.resource_id.not_in(select(model.id)),
                    )
                )
            ).scalars()
            for sched in gone:
                await _disable(s, sched, f"its {resource_type} '{sched.resource_id}' was deleted")
                n += 1
    return n


async def _disable(s: AsyncSession, sched: Schedule, reason: str) -> None:
    sched.enabled = False
    sched.next_run_at = None
    sched.disabled_reason = reason
    sched.disabled_at = utcnow()
    audit.record(
        s,
        actor=None,
        action="schedule.disable",
        resource_type="schedule",
        resource_id=sched.id,
        after={"enabled": False, "disabled_reason": reason},
    )
    log.info("schedule.disabled", schedule_id=sched.id, reason=reason)


async def run_due(state: ManagerState, now: datetime | None = None) -> int:
    """Run every enabled schedule that is due (once each, whatever it missed); returns how
    many runs started."""
    now = now or utcnow()
    await disable_orphans(state)
    async with state.db.session() as s:
        due = list(
            (
                await s.execute(
                    select(Schedule.id).where(
                        Schedule.enabled.is_(True), Schedule.next_run_at <= now
                    )
                )
            ).scalars()
        )
    started = 0
    for sched_id in due:
        try:
            if await _run_one(state, sched_id, now):
                started += 1
        except Exception:
            log.exception("schedule.run_error", schedule_id=sched_id)
    return started


async def _run_one(state: ManagerState, sched_id: str, now: datetime) -> bool:
    async with state.db.session() as s:
        sched = await s.get(Schedule, sched_id)
        if sched is None or not sched.enabled or sched.next_run_at is None:
            return False
        due_at = sched.next_run_at
        count, following = due_times(sched.cron, sched.timezone, due_at, now)
        claimed = await s.execute(
            update(Schedule)
            .where(Schedule.id == sched.id, Schedule.next_run_at == due_at)
            .values(next_run_at=following, last_run_at=now)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            return False  # another replica ran it
        principal = await owner_principal(s, sched.created_by_user_id)
        if principal is None:
            await _disable(s, sched, "its owner was deleted or disabled")
            return False
        missed = count - 1
        detail = None
        if missed:
            more = "at least " if count >= MAX_MISSED_COUNT else ""
            detail = (
                f"{more}{missed} earlier run(s) due since {due_at.isoformat()} were missed "
                "while no manager was running; ran once"
            )
        op = operations.create(
            s,
            principal=principal,
            kind="schedule.run",
            resource_type="schedule",
            resource_id=sched.id,
        )
        run = ScheduleRun(
            id=new_id("srun"),
            schedule_id=sched.id,
            scheduled_for=due_at,
            operation_id=op.id,
            missed=missed,
            detail=detail,
            created_by_user_id=sched.created_by_user_id,
        )
        s.add(run)
        sched.last_operation_id = op.id
        audit.record(
            s,
            actor=principal,
            action="schedule.run",
            resource_type="schedule",
            resource_id=sched.id,
            after={
                "action": sched.action,
                "resource_type": sched.resource_type,
                "resource_id": sched.resource_id,
                "scheduled_for": due_at.isoformat(),
                "missed": missed,
                "operation_id": op.id,
            },
            detail=detail,
        )
        job = (sched.resource_type, sched.resource_id, sched.action, dict(sched.args), sched.id)

    async def work(progress: operations.Progress) -> dict[str, Any]:
        await progress(10, f"{job[2]} {job[0]} {job[1]}")
        result = await perform(state, principal, *job)
        return {**result, "missed": missed, **({"detail": detail} if detail else {})}

    operations.start(state, op.id, work)
    log.info("schedule.run", schedule_id=sched_id, operation_id=op.id, missed=missed)
    return True


async def _wait(state: ManagerState, principal: Principal, op: Operation) -> dict[str, Any]:
    done = await operations.wait(
        state=state, principal=principal, op_id=op.id, timeout_s=RUN_TIMEOUT_S
    )
    if done.status != "succeeded":
        raise Conflict(f"{done.kind} {done.id} {done.status}: {done.error or ''}".strip())
    return {"operation_id": done.id, "result": done.result}


async def perform(
    state: ManagerState,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    action: str,
    args: dict[str, Any],
    schedule_id: str,
) -> dict[str, Any]:
    """Do what a schedule says, as ``principal`` through the resource's own service (its
    RBAC and audit apply); waits for the operation it starts. A VM already in the asked
    state is a success that did nothing (``skipped``)."""
    base = {"action": action, "resource_type": resource_type, "resource_id": resource_id}
    if resource_type == "group":
        async with state.db.session() as s:
            if action == "scale":
                g = await groups.scale(
                    db_session=s,
                    principal=principal,
                    group_id=resource_id,
                    desired=int(args["desired"]),
                )
                return {**base, "desired": g.desired}
            await groups.delete_group(db_session=s, principal=principal, group_id=resource_id)
            return {**base, "deleted": True}
    async with state.db.session() as s:
        vm = await vms.get_vm(db_session=s, principal=principal, vm_id=resource_id)
        vm_state = vm.state
        if action == "stop" and vm_state == "stopped":
            return {**base, "skipped": "the VM is already stopped"}
        if action == "start" and vm_state == "running":
            return {**base, "skipped": "the VM is already running"}
        if action in ("start", "stop"):
            _, op = await vms.act(
                db_session=s,
                state=state,
                principal=principal,
                vm_id=resource_id,
                action=action,
                force=bool(args.get("force", False)),
            )
        elif action == "restart":
            what = "reboot" if vm_state == "running" else "start"
            _, op = await vms.act(
                db_session=s, state=state, principal=principal, vm_id=resource_id, action=what
            )
        elif action == "delete":
            _, op = await vms.delete_vm(
                db_session=s, state=state, principal=principal, vm_id=resource_id
            )
        else:  # snapshot
            name = f"sched-{utcnow().strftime('%Y%m%d-%H%M%S')}"
            body = SnapshotCreate(name=name, include_memory=bool(args.get("include_memory", True)))
            _, op = await snapshots.create_snapshot(
                db_session=s, state=state, principal=principal, vm_id=resource_id, body=body
            )
    out = {**base, **await _wait(state, principal, op)}
    keep = args.get("keep")
    if action == "snapshot" and isinstance(keep, int) and keep > 0:
        out["pruned"] = await _prune(state, principal, resource_id, keep)
    return out


async def _prune(state: ManagerState, principal: Principal, vm_id: str, keep: int) -> int:
    """Delete the VM's oldest schedule-made snapshots beyond ``keep``."""
    async with state.db.session() as s:
        rows = list(
            (
                await s.execute(
                    select(Snapshot.id)
                    .where(Snapshot.vm_id == vm_id, Snapshot.name.like("sched-%"))
                    .order_by(Snapshot.id.desc())
                )
            ).scalars()
        )
    for snap_id in rows[keep:]:
        async with state.db.session() as s:
            await snapshots.delete_snapshot(
                db_session=s, state=state, principal=principal, snapshot_id=snap_id
            )
    return max(0, len(rows) - keep)
