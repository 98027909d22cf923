"""Record and query audit events. Secrets are redacted before anything is stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.manager.features.audit.models import AuditEvent
from nexus.manager.platform.context import current_request
from nexus.manager.platform.rbac import Principal

log = get_logger(__name__)

SECRET_KEYS = {
    "password",
    "password_hash",
    "token",
    "token_hash",
    "secret",
    "access_token",
    "refresh_token",
    "host_token",
    "agent_token",
    "agent_token_hash",
    "host_token_hash",
    "join_token",
    "current_password",
}


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking keys replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: ("***" if k.lower() in SECRET_KEYS and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _limits() -> dict[str, int]:
    """Column name -> length of every length-limited string column of the audit table."""
    out: dict[str, int] = {}
    for col in AuditEvent.__table__.columns:
        length = getattr(col.type, "length", None)
        if isinstance(length, int):
            out[col.name] = length
    return out


COLUMN_LIMITS = _limits()


def _cut(name: str, value: str | None) -> str | None:
    """``value`` cut to its column's size: PostgreSQL refuses a longer value, and the audit
    row of a denied attempt with a long path must not be lost for it."""
    limit = COLUMN_LIMITS.get(name)
    if value is None or limit is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


def record(
    s: AsyncSession,
    *,
    actor: Principal | None,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    outcome: str = "success",
    detail: str | None = None,
) -> AuditEvent:
    """Add an audit row to the caller's transaction (it commits with the change). Strings
    are cut to their column sizes."""
    req = current_request()
    event = AuditEvent(
        id=new_id("aud"),
        actor_user_id=_cut("actor_user_id", actor.user_id if actor else None),
        actor_username=_cut("actor_username", actor.username if actor else None),
        token_id=_cut("token_id", actor.token_id if actor else None),
        action=_cut("action", action),
        resource_type=_cut("resource_type", resource_type),
        resource_id=_cut("resource_id", resource_id),
        before=redact(before) if before is not None else None,
        after=redact(after) if after is not None else None,
        outcome=_cut("outcome", outcome),
        detail=detail[:4096] if detail else detail,
        request_id=_cut("request_id", req.request_id),
        source_ip=_cut("source_ip", req.source_ip),
    )
    s.add(event)
    return event


async def record_separately(db: Database, **kwargs: Any) -> None:
    """Record an event in its own transaction (denied attempts, whose request rolls back)."""
    try:
        async with db.session() as s:
            record(s, **kwargs)
    except Exception as exc:  # the audit write must never mask the original error
        log.error("audit.write_failed", error=str(exc), action=kwargs.get("action"))


class AnonymousDenials:
    """Unauthenticated 401s, aggregated: one audit row per source address per window.

    Anyone can send requests without credentials, so writing a row for each would let them
    grow the audit table without bound. The first denial of a source in a window writes a
    row (``after.count`` = 1); later ones in the same window only raise that row's count.
    Per replica (each replica writes at most one row per source per window).
    """

    MAX_SOURCES = 10_000

    def __init__(self) -> None:
        self._rows: dict[str, tuple[float, str, int]] = {}  # ip -> (window start, row id, n)

    async def record(self, db: Database, *, window_s: float, now: float, **kwargs: Any) -> None:
        """Count one anonymous denial from the current request's source address."""
        ip = current_request().source_ip or "unknown"
        hit = self._rows.get(ip)
        try:
            if hit is not None and now - hit[0] < window_s:
                count = hit[2] + 1
                self._rows[ip] = (hit[0], hit[1], count)
                async with db.session() as s:
                    res = await s.execute(
                        update(AuditEvent)
                        .where(AuditEvent.id == hit[1])
                        .values(after={"count": count, "window_s": window_s})
                    )
                if res.rowcount:  # type: ignore[attr-defined]
                    return
                # the row is gone (retention, another database): start a new window
            if len(self._rows) >= self.MAX_SOURCES:
                self._rows.clear()
            async with db.session() as s:
                event = record(s, after={"count": 1, "window_s": window_s}, **kwargs)
            self._rows[ip] = (now, event.id, 1)
        except Exception as exc:  # the audit write must never mask the original error
            log.error("audit.write_failed", error=str(exc), action=kwargs.get("action"))


async def list_events(
    *,
    db_session: AsyncSession,
    principal: Principal,
    actor: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[list[AuditEvent], str | None]:
    """Audit rows newest first; admins see all, others only their own actions."""
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if not principal.is_admin:
        q = q.where(AuditEvent.actor_user_id == principal.user_id)
    if actor:
        q = q.where((AuditEvent.actor_user_id == actor) | (AuditEvent.actor_username == actor))
    if resource_type:
        q = q.where(AuditEvent.resource_type == resource_type)
    if resource_id:
        q = q.where(AuditEvent.resource_id == resource_id)
    if action:
        q = q.where(AuditEvent.action == action)
    if outcome:
        q = q.where(AuditEvent.outcome == outcome)
    if since:
        q = q.where(AuditEvent.at >= since)
    if until:
        q = q.where(AuditEvent.at < until)
    if cursor:
        q = q.where(AuditEvent.id < cursor)
    rows = list((await db_session.execute(q)).scalars().all())
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor
