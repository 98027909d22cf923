"""Read and follow events: RBAC filtering, type patterns, the live stream, retention.

Visibility: admins see every event except other users' private ones (notifications); other
users see the events of what they own and of what is shared with everyone (public
templates and images). The same rule decides what a webhook receives (its owner's view).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import Database
from nexus.core.errors import BadRequest
from nexus.core.logging import get_logger
from nexus.core.timeutil import utcnow
from nexus.manager.features.events.schemas import EventRead
from nexus.manager.features.system.service import run_leased
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.outbox import Event, EventHub, valid_pattern
from nexus.manager.platform.rbac import Principal

log = get_logger(__name__)

MAX_PATTERNS = 20
HUB_KEY = "event_hub"


def visible_to(user_id: str, is_admin: bool) -> ColumnElement[bool]:
    """The SQL condition: events the user may see."""
    own = Event.owner_user_id == user_id
    if is_admin:
        return or_(Event.private.is_(False), own)
    return or_(own, and_(Event.public.is_(True), Event.private.is_(False)))


def check_patterns(patterns: list[str]) -> list[str]:
    """Validate type patterns (``vm.*``, ``*.failed``, ``operation.succeeded``)."""
    if len(patterns) > MAX_PATTERNS:
        raise BadRequest(f"type: at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not valid_pattern(p):
            raise BadRequest(
                f"type: {p!r} is not a pattern (letters, digits, '_', '.', and '*' as wildcard)"
            )
    return patterns


def _like(pattern: str) -> ColumnElement[bool]:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Event.type.like(escaped.replace("*", "%"), escape="\\")


def _query(
    principal: Principal,
    *,
    types: list[str],
    resource_type: str | None,
    resource_id: str | None,
) -> Any:
    q = select(Event).where(visible_to(principal.user_id, principal.is_admin))
    if types:
        q = q.where(or_(*[_like(p) for p in types]))
    if resource_type:
        q = q.where(Event.resource_type == resource_type)
    if resource_id:
        q = q.where(Event.resource_id == resource_id)
    return q


def parse_cursor(value: str | None, name: str = "after") -> int | None:
    """An event id given as a cursor (``after``, ``before``, ``Last-Event-ID``)."""
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{name}: an event id (a whole number) expected, got {value!r}") from None
    if n < 0:
        raise BadRequest(f"{name}: must not be negative")
    return n


async def list_events(
    *,
    db_session: AsyncSession,
    principal: Principal,
    after: int | None = None,
    before: int | None = None,
    types: list[str] | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    limit: int = 100,
) -> tuple[list[Event], str | None]:
    """Events the principal may see. With ``before`` (or neither cursor): newest first, the
    next page older; with ``after``: oldest first from that cursor (following a log)."""
    q = _query(
        principal,
        types=check_patterns(types or []),
        resource_type=resource_type,
        resource_id=resource_id,
    )
    if after is not None and before is not None:
        raise BadRequest("give `after` or `before`, not both")
    if after is not None:
        q = q.where(Event.id > after).order_by(Event.id.asc())
    else:
        if before is not None:
            q = q.where(Event.id < before)
        q = q.order_by(Event.id.desc())
    rows = list((await db_session.execute(q.limit(limit + 1))).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    direction = "a" if after is not None else "b"
    next_cursor = f"{direction}{rows[-1].id}" if more and rows else None
    return rows, next_cursor


def parse_page_cursor(cursor: str | None) -> tuple[int | None, int | None]:
    """A listing's ``next_cursor`` (``a<id>``: oldest first after id; ``b<id>``: newest
    first before id) as (after, before)."""
    if not cursor:
        return None, None
    kind, digits = cursor[:1], cursor[1:]
    if kind not in ("a", "b") or not digits.isdigit() or len(digits) > 19:
        raise BadRequest("cursor: not a cursor of this listing (pass the previous next_cursor)")
    return (int(digits), None) if kind == "a" else (None, int(digits))


async def newest_id(db: Database) -> int:
    """The id of the newest event (0: none)."""
    async with db.session() as s:
        return int((await s.execute(select(func.max(Event.id)))).scalar() or 0)


def hub(state: ManagerState) -> EventHub:
    """This process's event hub (made at start-up)."""
    h = state.extras.get(HUB_KEY)
    if h is None:
        h = state.extras[HUB_KEY] = EventHub()
    assert isinstance(h, EventHub)
    return h


def sse(ev: Event) -> str:
    """One event in the ``text/event-stream`` format."""
    data = EventRead.model_validate(ev).model_dump_json()
    return f"id: {ev.id}\nevent: {ev.type}\ndata: {data}\n\n"


async def follow(
    state: ManagerState,
    principal: Principal,
    *,
    after: int | None,
    types: list[str],
    resource_type: str | None,
    resource_id: str | None,
    still_allowed: Callable[[], Awaitable[bool]],
    keepalive_s: float = 15.0,
    batch: int = 500,
) -> AsyncIterator[str]:
    """The live stream: every visible event after ``after`` (None: from now on), in order,
    each exactly once; a comment line as keep-alive. Ends when ``still_allowed`` says the
    caller's credential no longer holds (checked at each keep-alive)."""
    check_patterns(types)
    h = hub(state)
    cursor = after if after is not None else await newest_id(state.db)
    yield f"retry: 2000\n: nexus events from cursor {cursor}\n\n"
    while True:
        async with state.db.session() as s:
            # every event up to ``seen`` was committed before the page query below ran (ids
            # commit in order): a page that is not full covers all of them, visible or not
            seen = int((await s.execute(select(func.max(Event.id)))).scalar() or 0)
            q = _query(principal, types=types, resource_type=resource_type, resource_id=resource_id)
            q = q.where(Event.id > cursor, Event.id <= seen).order_by(Event.id.asc()).limit(batch)
            rows = list((await s.execute(q)).scalars())
        for ev in rows:
            cursor = ev.id
            yield sse(ev)
        if len(rows) == batch:
            continue
        cursor = max(cursor, seen)
        before = asyncio.get_running_loop().time()
        await h.wait(cursor, keepalive_s)
        if asyncio.get_running_loop().time() - before >= keepalive_s - 0.01:
            if not await still_allowed():
                yield ": credentials expired or revoked; reconnect with a fresh token\n\n"
                return
            yield ": keep-alive\n\n"


async def prune(state: ManagerState) -> int:
    """Delete events older than the retention age or beyond the retention count."""
    cfg = state.settings
    async with state.db.session() as s:
        cutoff = utcnow() - timedelta(days=cfg.events_retention_days)
        res = await s.execute(delete(Event).where(Event.at < cutoff))
        n = int(res.rowcount or 0)  # type: ignore[attr-defined]
        edge = (
            await s.execute(
                select(Event.id)
                .order_by(Event.id.desc())
                .offset(cfg.events_retention_count)
                .limit(1)
            )
        ).scalar()
        if edge is not None:
            res = await s.execute(delete(Event).where(Event.id <= edge))
            n += int(res.rowcount or 0)  # type: ignore[attr-defined]
    if n:
        log.info("events.pruned", count=n)
    return n


async def start(state: ManagerState) -> None:
    """Start-up hook: the hub's poller (every replica) and retention (one leader)."""
    h = hub(state)
    await h.publish(await newest_id(state.db))
    state.spawn(h.run(lambda: newest_id(state.db), state.settings.events_poll_s), name="event-hub")
    state.spawn(run_leased(state, "events-retention", 600.0, prune), name="events-retention")


def to_json(ev: Event) -> dict[str, Any]:
    """An event as the JSON object the API, the stream and webhooks carry."""
    out: dict[str, Any] = json.loads(EventRead.model_validate(ev).model_dump_json())
    return out
