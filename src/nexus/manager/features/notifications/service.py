"""Notifications: derived from events at commit, read and marked read by their user.

:func:`derive` runs inside every commit that writes events (see ``platform.outbox``): a VM
that failed or stopped on its own, an operation that ended, a webhook disabled after failing,
a TTL warning, a schedule that disabled itself each become a notification for the owner of
the resource (unless the owner muted that kind), and a private ``notification.created`` event
carries it live to the owner's event stream. Nobody reads another user's notifications, not
even an admin.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from nexus.core.errors import BadRequest, NotFound
from nexus.core.ids import new_id
from nexus.core.timeutil import utcnow
from nexus.manager.features.notifications.models import Notification, NotificationPrefs
from nexus.manager.features.notifications.schemas import (
    KINDS,
    NotificationPrefsRead,
    NotificationPrefsUpdate,
)
from nexus.manager.features.system.service import run_leased
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.outbox import Event, add_deriver, emit, new_event
from nexus.manager.platform.rbac import Principal

# --- which events notify, and how they read ---------------------------------------------------


def _name(ev: Event) -> str:
    return ev.resource_name or ev.resource_id or "?"


def _op_title(ev: Event, outcome: str) -> str:
    target = ev.payload.get("resource_id")
    where = f" ({ev.payload.get('resource_type')} {target})" if target else ""
    return f"Operation {ev.payload.get('kind') or _name(ev)}{where} {outcome}"


Rule = Callable[[Event], tuple[str, str] | None]


def _vm_failed(ev: Event) -> tuple[str, str] | None:
    if ev.type != "vm.failed":
        return None
    return f"VM {_name(ev)} failed", "See `nexus vm get` for the reason and the console tail."


def _vm_stopped(ev: Event) -> tuple[str, str] | None:
    if ev.type != "vm.stopped" or ev.payload.get("desired_state") != "running":
        return None
    return f"VM {_name(ev)} stopped unexpectedly", "It was meant to be running."


def _op_failed(ev: Event) -> tuple[str, str] | None:
    if ev.type != "operation.failed":
        return None
    return _op_title(ev, "failed"), str(ev.payload.get("error") or "")[:2000]


def _op_succeeded(ev: Event) -> tuple[str, str] | None:
    if ev.type != "operation.succeeded":
        return None
    return _op_title(ev, "succeeded"), ""


def _ttl_warning(ev: Event) -> tuple[str, str] | None:
    changed = ev.payload.get("changed") or []
    if ev.type != "vm.updated" or "ttl_warned_at" not in changed:
        return None
    when = ev.payload.get("expires_at")
    return f"VM {_name(ev)} expires soon", f"It will be deleted at {when}; extend it to keep it."


def _schedule_disabled(ev: Event) -> tuple[str, str] | None:
    if ev.type != "schedule.disabled":
        return None
    why = ev.payload.get("disabled_reason") or "its resource is gone"
    return f"Schedule {_name(ev)} was disabled", str(why)


def _webhook_disabled(ev: Event) -> tuple[str, str] | None:
    if ev.type != "webhook.disabled":
        return None
    why = ev.payload.get("disabled_reason") or ""
    return f"Webhook {_name(ev)} was disabled", str(why)


RULES: dict[str, Rule] = {
    "vm_failed": _vm_failed,
    "vm_stopped_unexpectedly": _vm_stopped,
    "operation_failed": _op_failed,
    "operation_succeeded": _op_succeeded,
    "ttl_warning": _ttl_warning,
    "schedule_disabled": _schedule_disabled,
    "webhook_disabled": _webhook_disabled,
}


def _add(
    session: Session,
    *,
    user_id: str,
    kind: str,
    title: str,
    body: str,
    resource_type: str | None,
    resource_id: str | None,
) -> Event:
    n = Notification(
        id=new_id("ntf"),
        user_id=user_id,
        created_at=utcnow(),
        kind=kind,
        title=title[:200],
        body=body,
        resource_type=resource_type,
        resource_id=resource_id,
    )
    session.add(n)
    return new_event(
        "notification.created",
        resource_type="notification",
        resource_id=n.id,
        resource_name=n.title,
        owner_user_id=user_id,
        private=True,
        payload={
            "kind": kind,
            "title": n.title,
            "resource_type": resource_type,
            "resource_id": resource_id,
        },
    )


def derive(session: Session, events: list[Event]) -> list[Event]:
    """The notifications the events call for (rows added to ``session``) and their events."""
    out: list[Event] = []
    prefs: dict[str, NotificationPrefs | None] = {}
    for ev in events:
        if not ev.owner_user_id or ev.private:
            continue
        for kind, rule in RULES.items():
            said = rule(ev)
            if said is None:
                continue
            user = ev.owner_user_id
            if user not in prefs:
                prefs[user] = session.get(NotificationPrefs, user)
            p = prefs[user]
            if p is not None and (p.muted or kind in (p.disabled_kinds or [])):
                continue
            title, body = said
            out.append(
                _add(
                    session,
                    user_id=user,
                    kind=kind,
                    title=title,
                    body=body,
                    resource_type=ev.resource_type,
                    resource_id=ev.resource_id,
                )
            )
    return out


add_deriver(derive)


def notify(
    db_session: AsyncSession,
    *,
    user_id: str,
    kind: str,
    title: str,
    body: str = "",
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> None:
    """Notify one user directly (alerts); commits with the caller's transaction. Muting is
    the caller's business (:func:`wants`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    ev = _add(
        db_session.sync_session,
        user_id=user_id,
        kind=kind,
        title=title,
        body=body,
        resource_type=resource_type,
        resource_id=resource_id,
    )
    emit(db_session.sync_session, ev)


async def wants(db_session: AsyncSession, user_id: str, kind: str) -> bool:
    """True unless the user muted everything or this kind."""
    p = await db_session.get(NotificationPrefs, user_id)
    return p is None or not (p.muted or kind in (p.disabled_kinds or []))


# --- the user's side ---------------------------------------------------------------------------


async def list_notifications(
    *,
    db_session: AsyncSession,
    principal: Principal,
    unread_only: bool = False,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[list[Notification], str | None]:
    """Your notifications, newest first, and the next cursor."""
    q = select(Notification).where(Notification.user_id == principal.user_id)
    if unread_only:
        q = q.where(Notification.read_at.is_(None))
    if cursor:
        if not cursor.startswith("ntf_") or len(cursor) > 40:
            raise BadRequest("cursor: not a cursor of this listing (pass the previous next_cursor)")
        q = q.where(Notification.id < cursor)
    q = q.order_by(Notification.id.desc()).limit(limit + 1)
    rows = list((await db_session.execute(q)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


async def summary(*, db_session: AsyncSession, principal: Principal) -> tuple[int, int]:
    """(unread, total) of your notifications."""
    row = (
        await db_session.execute(
            select(func.count(Notification.read_at), func.count())
            .select_from(Notification)
            .where(Notification.user_id == principal.user_id)
        )
    ).one()
    read, total = int(row[0]), int(row[1])
    return total - read, total


async def mark(
    *, db_session: AsyncSession, principal: Principal, notification_id: str, read: bool
) -> Notification:
    """Mark one of your notifications read or unread (another user's is 404)."""
    n = await db_session.get(Notification, notification_id)
    if n is None or n.user_id != principal.user_id:
        raise NotFound(f"notification '{notification_id}' not found")
    n.read_at = (n.read_at or utcnow()) if read else None
    return n


async def read_all(*, db_session: AsyncSession, principal: Principal) -> int:
    """Mark all your unread notifications read; how many."""
    res = await db_session.execute(
        update(Notification)
        .where(Notification.user_id == principal.user_id, Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


async def get_prefs(*, db_session: AsyncSession, principal: Principal) -> NotificationPrefsRead:
    """Your preferences (defaults when never set)."""
    p = await db_session.get(NotificationPrefs, principal.user_id)
    if p is None:
        return NotificationPrefsRead()
    return NotificationPrefsRead(muted=p.muted, disabled_kinds=list(p.disabled_kinds or []))


async def set_prefs(
    *, db_session: AsyncSession, principal: Principal, body: NotificationPrefsUpdate
) -> NotificationPrefsRead:
    """Change your preferences."""
    p = await db_session.get(NotificationPrefs, principal.user_id)
    if p is None:
        p = NotificationPrefs(user_id=principal.user_id, muted=False, disabled_kinds=[])
        db_session.add(p)
    if body.muted is not None:
        p.muted = body.muted
    if body.disabled_kinds is not None:
        p.disabled_kinds = sorted(set(body.disabled_kinds))
    return NotificationPrefsRead(muted=p.muted, disabled_kinds=list(p.disabled_kinds))


async def prune(state: ManagerState) -> int:
    """Delete notifications older than their retention."""
    cutoff = utcnow() - timedelta(days=state.settings.notifications_retention_days)
    async with state.db.session() as s:
        res = await s.execute(delete(Notification).where(Notification.created_at < cutoff))
        return int(res.rowcount or 0)  # type: ignore[attr-defined]


async def start(state: ManagerState) -> None:
    """Start-up hook: retention (one leader)."""
    state.spawn(
        run_leased(state, "notifications-retention", 600.0, prune), name="notifications-retention"
    )
