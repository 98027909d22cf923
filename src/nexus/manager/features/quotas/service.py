"""Quotas: per-user limits on what a user may hold, with per-role defaults (setting
``quota_defaults``) and per-user overrides (``PUT /v1/quotas/{user}``).

The limits (:data:`~nexus.core.settings.QUOTA_LIMITS`): ``vms``, ``vcpus``, ``memory_mib``,
``disk_mib`` (root disks + volumes), ``volumes``, ``networks``, ``snapshots``, ``images``,
``api_tokens``; ``-1`` is unlimited. vCPUs and memory count every VM the user has, whatever
its state (as Incus does): a stopped VM keeps its claim, so starting it cannot fail later for
want of quota, and a resize of a stopped VM is checked at once.

**Atomic.** :func:`check` first locks the user's :class:`QuotaUsage` row with an ``UPDATE``
(on PostgreSQL a row lock, on SQLite the database write lock — pysqlite opens the transaction
at that first write, so what follows reads the latest commit), then counts the user's actual
rows and compares. The lock is held until the caller's transaction commits — the one that
inserts the new row — so a second request at the edge waits, counts the first one's row and
is refused: of two concurrent creates at the limit exactly one passes, on both databases.
Usage is counted from the resource rows themselves at every check, so it cannot drift; the
usage stored on the row (shown by ``GET /v1/quotas/...``) is refreshed by every check and by
the policy loop's :func:`recount_all`, which audits a stored value that had drifted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database
from nexus.core.errors import Forbidden, NotFound
from nexus.core.settings import QUOTA_LIMITS, Settings
from nexus.core.timeutil import utcnow
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth.models import ApiToken
from nexus.manager.features.images.models import Image
from nexus.manager.features.networks.models import Network
from nexus.manager.features.quotas.models import QuotaOverride, QuotaUsage
from nexus.manager.features.quotas.schemas import QuotaRead, QuotaUpdate
from nexus.manager.features.snapshots.models import Snapshot
from nexus.manager.features.users.models import User
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.volumes.models import Volume
from nexus.manager.platform.rbac import Principal, denial, ensure_role

UNLIMITED = -1
UNITS = {"memory_mib": " MiB", "disk_mib": " MiB", "vcpus": " vCPUs"}


class QuotaExceeded(Forbidden):
    """A request would take the user over one of their quota limits (403). The problem
    names the limit (``quota``), its value (``limit``), the usage (``usage``) and what the
    request asked for (``requested``)."""

    slug, title = "quota-exceeded", "Quota exceeded"


# --- limits and usage ---------------------------------------------------------------------


def role_defaults(settings: Settings, role: str) -> dict[str, int]:
    """The limits of ``role`` from the setting ``quota_defaults``."""
    return dict(settings.quota_defaults.get(role) or dict.fromkeys(QUOTA_LIMITS, 0))


async def overrides_of(s: AsyncSession, user_id: str) -> dict[str, int]:
    """The per-user overrides of ``user_id`` ({} when none)."""
    row = await s.get(QuotaOverride, user_id)
    return {k: int(v) for k, v in (row.limits if row else {}).items() if k in QUOTA_LIMITS}


async def limits_of(s: AsyncSession, settings: Settings, user_id: str, role: str) -> dict[str, int]:
    """Effective limits: the role defaults with the user's overrides on top."""
    return {**role_defaults(settings, role), **await overrides_of(s, user_id)}


async def _scalar(s: AsyncSession, q: Any) -> int:
    return int((await s.execute(q)).scalar_one() or 0)


async def usage_of(
    s: AsyncSession, user_id: str, names: tuple[str, ...] = QUOTA_LIMITS
) -> dict[str, int]:
    """What ``user_id`` holds now, counted from the resource rows (only ``names``)."""
    out: dict[str, int] = {}
    if {"vms", "vcpus", "memory_mib"} & set(names):
        n, c, m = (
            await s.execute(
                select(func.count(Vm.id), func.sum(Vm.vcpus), func.sum(Vm.memory_mib)).where(
                    Vm.created_by_user_id == user_id
                )
            )
        ).one()
        out.update(vms=int(n or 0), vcpus=int(c or 0), memory_mib=int(m or 0))
    if "disk_mib" in names:
        roots = await _scalar(
            s,
            select(func.sum(func.coalesce(Vm.disk_size_mib, Image.rootfs_size_mib)))
            .select_from(Vm)
            .join(Image, Image.id == Vm.image_id)
            .where(Vm.created_by_user_id == user_id),
        )
        vols = await _scalar(
            s, select(func.sum(Volume.size_mib)).where(Volume.created_by_user_id == user_id)
        )
        out["disk_mib"] = roots + vols
    counted: dict[str, Any] = {
        "volumes": (Volume.id, Volume.created_by_user_id == user_id),
        "networks": (Network.id, Network.created_by_user_id == user_id),
        "snapshots": (Snapshot.id, Snapshot.created_by_user_id == user_id),
        "images": (Image.id, Image.created_by_user_id == user_id),
    }
    for name, (col, cond) in counted.items():
        if name in names:
            out[name] = await _scalar(s, select(func.count(col)).where(cond))
    if "api_tokens" in names:
        out["api_tokens"] = await _scalar(
            s,
            select(func.count(ApiToken.id)).where(
                ApiToken.created_by_user_id == user_id,
                ApiToken.revoked_at.is_(None),
                or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > utcnow()),
            ),
        )
    return {k: out[k] for k in QUOTA_LIMITS if k in out}


async def _lock(s: AsyncSession, user_id: str) -> QuotaUsage:
    """Lock the user's usage row for the rest of the transaction (creating it the first
    time) and return it."""
    now = utcnow()
    stmt = update(QuotaUsage).where(QuotaUsage.user_id == user_id).values(locked_at=now)
    res = await s.execute(stmt)
    if not res.rowcount:  # type: ignore[attr-defined]
        try:
            async with s.begin_nested():
                s.add(QuotaUsage(user_id=user_id, usage={}, locked_at=now))
        except IntegrityError:
            pass  # a concurrent first check made it
        await s.execute(stmt)
    row = await s.get(QuotaUsage, user_id, populate_existing=True)
    if row is None:
        raise NotFound(f"user '{user_id}' not found")
    return row


def _fmt(name: str, n: int) -> str:
    return f"{n}{UNITS.get(name, '')}"


async def check(
    db_session: AsyncSession,
    settings: Settings,
    principal: Principal,
    *,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
    add: dict[str, int],
    owner_id: str | None = None,
    owner_role: str | None = None,
) -> None:
    """Refuse (403 ``quota-exceeded``) a request that would take its owner over a limit.

    ``add`` is what the request adds per limit (a resize: the difference; ``0`` checks that
    the user is within the limit as it is, e.g. at start after an admin lowered it). The
    owner is ``principal`` unless ``owner_id``/``owner_role`` are given (an admin acting on
    someone's resource is checked against its owner's quota). Call it before adding the new
    row, in the transaction that adds it: the lock it takes is held until that commits."""
    user_id = owner_id or principal.user_id
    role = owner_role or principal.role
    limits = await limits_of(db_session, settings, user_id, role)
    wanted = {k: v for k, v in add.items() if k in QUOTA_LIMITS and v >= 0}
    if all(limits.get(k, UNLIMITED) == UNLIMITED for k in wanted):
        return
    row = await _lock(db_session, user_id)
    limits = await limits_of(db_session, settings, user_id, role)  # as of the lock
    used = await usage_of(db_session, user_id, tuple(wanted))
    row.usage = {**row.usage, **used}
    row.counted_at = utcnow()
    for name in QUOTA_LIMITS:
        if name not in wanted or limits.get(name, UNLIMITED) == UNLIMITED:
            continue
        limit, have, ask = limits[name], used.get(name, 0), wanted[name]
        if have + ask > limit:
            detail = (
                f"quota {name} exceeded: you use {_fmt(name, have)} of {_fmt(name, limit)} and "
                f"this request asks for {_fmt(name, ask)} more (ask an administrator to raise "
                f"it: PUT /v1/quotas/{{user}})"
            )
            if ask == 0:
                detail = (
                    f"quota {name} exceeded: you use {_fmt(name, have)} of "
                    f"{_fmt(name, limit)}; free some before you {action.split('.')[-1]}"
                )
            raise QuotaExceeded(
                detail,
                extra={"quota": name, "limit": limit, "usage": have, "requested": ask},
                audit=denial(action, resource_type, resource_id),
            )


# --- API ----------------------------------------------------------------------------------


async def _user(s: AsyncSession, principal: Principal, ref: str) -> User:
    """A user by id or username that the caller may see (itself; admin: anyone)."""
    user = await s.get(User, ref)
    if user is None:
        user = (await s.execute(select(User).where(User.username == ref))).scalar_one_or_none()
    if user is None or (not principal.is_admin and user.id != principal.user_id):
        raise NotFound(f"user '{ref}' not found")
    return user


async def read(s: AsyncSession, settings: Settings, user: User) -> QuotaRead:
    """Limits, overrides and live usage of ``user``."""
    return QuotaRead.model_validate(
        {
            "user_id": user.id,
            "username": user.username,
            "role": user.role,
            "limits": await limits_of(s, settings, user.id, user.role),
            "overrides": await overrides_of(s, user.id),
            "usage": await usage_of(s, user.id),
        }
    )


async def get_quota(
    *, db_session: AsyncSession, settings: Settings, principal: Principal, user: str
) -> QuotaRead:
    """A user's quota: your own (``me``), or anyone's for an admin (404 otherwise)."""
    ref = principal.user_id if user == "me" else user
    return await read(db_session, settings, await _user(db_session, principal, ref))


async def set_quota(
    *,
    db_session: AsyncSession,
    settings: Settings,
    principal: Principal,
    user: str,
    body: QuotaUpdate,
) -> QuotaRead:
    """Replace a user's overrides (admin only). A limit given as ``null`` or left out
    follows the role default; ``-1`` is unlimited. Lowering a limit under the usage removes
    nothing: further creates are refused until the user is under it again."""
    ensure_role(principal, "quota.update", "quota", "admin")
    target = await _user(db_session, principal, user)
    new: dict[str, Any] = {k: v for k, v in body.limits.items() if v is not None}
    row = await db_session.get(QuotaOverride, target.id)
    before = dict(row.limits) if row else {}
    if row is None:
        row = QuotaOverride(user_id=target.id, limits=new, set_by_user_id=principal.user_id)
        db_session.add(row)
    else:
        row.limits, row.set_by_user_id = new, principal.user_id
    await db_session.flush()
    audit.record(
        db_session,
        actor=principal,
        action="quota.update",
        resource_type="quota",
        resource_id=target.id,
        before={"overrides": before},
        after={"overrides": new},
    )
    return await read(db_session, settings, target)


# --- the policy loop's recount --------------------------------------------------------------


async def recount_all(db: Database, when: datetime | None = None) -> int:
    """Recount every user's usage and store it where the stored value drifted (resources
    deleted since the last check); each correction is audited. Returns how many rows
    changed."""
    changed = 0
    async with db.session() as s:
        users = list((await s.execute(select(User.id))).scalars())
    for user_id in users:
        async with db.session() as s:
            live = await usage_of(s, user_id)
            row = await s.get(QuotaUsage, user_id)
            if row is None:
                s.add(QuotaUsage(user_id=user_id, usage=live, counted_at=when or utcnow()))
                continue
            if row.usage == live:
                continue
            audit.record(
                s,
                actor=None,
                action="quota.usage.recount",
                resource_type="quota",
                resource_id=user_id,
                before={"usage": row.usage},
                after={"usage": live},
            )
            row.usage, row.counted_at = live, when or utcnow()
            changed += 1
    return changed


async def check_owner(
    db_session: AsyncSession,
    settings: Settings,
    principal: Principal,
    owner_id: str,
    **kwargs: Any,
) -> None:
    """:func:`check` against the quota of ``owner_id`` (the owner of the resource that
    grows, who may not be the caller: an admin resizing someone's VM)."""
    if owner_id == principal.user_id:
        await check(db_session, settings, principal, **kwargs)
        return
    owner = await db_session.get(User, owner_id)
    role = owner.role if owner is not None else "viewer"
    await check(db_session, settings, principal, owner_id=owner_id, owner_role=role, **kwargs)
