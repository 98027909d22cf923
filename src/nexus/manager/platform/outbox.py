"""The event outbox: every change of a tracked row becomes a typed event in the same transaction.

A feature declares which of its tables are resources with :func:`track` (in its ``models``
module). From then on the ORM does the rest, whoever makes the change — a request, an
operation running in the background, the reconciler:

* ``before_flush`` looks at the new, changed and deleted rows of tracked tables and keeps
  what it saw (type, resource, actor, a small payload) with the session;
* ``before_commit`` writes those as :class:`Event` rows, so they commit with the change or not
  at all (a rollback, also of a savepoint, drops them: no lost and no phantom events). The
  registered *derivers* (notifications) run there too, in the same transaction;
* ``after_commit`` wakes this process's :class:`EventHub` (other replicas notice by polling).

Event ids are the stream's cursor, and a reader that has seen id N must never later find a
smaller id committed. SQLite has one writer at a time, so ids commit in order. On PostgreSQL
ids come from a sequence, which does not order commits: the commit step takes a transaction
advisory lock before it inserts events, so event-writing transactions commit one after the
other (the lock is held only from the insert to the commit, a few milliseconds).

Writes that bypass the ORM's unit of work (``update()`` statements) call :func:`emit`.
Rows deleted by a database cascade (a VM's port forwards) have no events of their own: the
parent's event stands for them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    event,
    inspect,
    text,
)
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column

from nexus.core.db import Base
from nexus.core.timeutil import utcnow
from nexus.manager.platform.context import current_actor, current_request

#: The PostgreSQL advisory lock that orders event-writing commits (an arbitrary constant).
PG_EVENT_LOCK = 0x4E455855  # "NEXU"
_PENDING = "nexus_events_pending"
_WROTE = "nexus_events_wrote"


class Event(Base):
    """One change of one resource. ``id`` is the stream cursor: it only grows."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_resource", "resource_type", "resource_id"),
        Index("ix_events_owner", "owner_user_id", "id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow, nullable=False, index=True)
    type: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String(64))
    resource_name: Mapped[str | None] = mapped_column(String(128))
    actor_user_id: Mapped[str | None] = mapped_column(String(40))
    actor_username: Mapped[str | None] = mapped_column(String(64))
    # who may see it: admins (unless private), the owner, everyone when public
    owner_user_id: Mapped[str | None] = mapped_column(String(40))
    public: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    private: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64))


@dataclass(frozen=True)
class Tracked:
    """How the rows of one table become events.

    ``state_attr``: the column whose change is the resource's life (``vms.state``); a change
    of it is ``<type>.<verb>`` with ``verbs`` mapping a state to its verb (default: the state
    itself). Any other change is ``<type>.updated``, except of the ``ignore`` columns
    (bookkeeping such as heartbeat times). ``payload``: columns copied into every event.
    ``private``: only the owner sees the events (not even admins: a user's notifications).
    """

    resource_type: str
    state_attr: str | None = None
    verbs: Mapping[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    payload: tuple[str, ...] = ()
    name_attr: str | None = "name"
    owner: Callable[[Any], str | None] = lambda row: getattr(row, "created_by_user_id", None)
    public: Callable[[Any], bool] = lambda row: bool(getattr(row, "public", False))
    private: bool = False


_TRACKED: dict[type[Any], Tracked] = {}
ALWAYS_IGNORED = frozenset({"updated_at", "created_at"})

#: Called at commit with the session and the events about to be written; may add rows
#: (notifications) and return further events (for those rows) to write with them.
Deriver = Callable[[Session, list[Event]], Iterable[Event]]
_DERIVERS: list[Deriver] = []


def track(model: type[Any], spec: Tracked) -> None:
    """Make every insert, update and delete of ``model`` rows an event."""
    _TRACKED[model] = spec


def tracked_types() -> list[str]:
    """The resource types that produce events."""
    return sorted({t.resource_type for t in _TRACKED.values()})


def add_deriver(fn: Deriver) -> None:
    """Run ``fn`` at each commit that writes events (once per function)."""
    if fn not in _DERIVERS:
        _DERIVERS.append(fn)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def new_event(
    type_: str,
    *,
    resource_type: str,
    resource_id: str | None,
    resource_name: str | None = None,
    owner_user_id: str | None = None,
    public: bool = False,
    private: bool = False,
    payload: dict[str, Any] | None = None,
) -> Event:
    """An :class:`Event` with the current actor and request id (not yet added anywhere)."""
    actor = current_actor()
    return Event(
        at=utcnow(),
        type=type_[:64],
        resource_type=resource_type[:32],
        resource_id=resource_id[:64] if resource_id else None,
        resource_name=resource_name[:128] if resource_name else None,
        actor_user_id=actor.user_id if actor else None,
        actor_username=actor.username if actor else None,
        owner_user_id=owner_user_id,
        public=public,
        private=private,
        payload={k: _jsonable(v) for k, v in (payload or {}).items()},
        request_id=current_request().request_id,
    )


def emit(session: Session, ev: Event) -> None:
    """Write ``ev`` with the session's transaction (for changes made outside the ORM's unit
    of work). ``session`` is the sync session (``AsyncSession.sync_session``)."""
    _pending(session).append((session.get_nested_transaction(), ev))


def _pending(session: Session) -> list[tuple[SessionTransaction | None, Event]]:
    pending: list[tuple[SessionTransaction | None, Event]] = session.info.setdefault(_PENDING, [])
    return pending


def _event_for(row: Any, spec: Tracked, verb: str, extra: dict[str, Any]) -> Event:
    payload = {name: getattr(row, name, None) for name in spec.payload}
    payload.update(extra)
    return new_event(
        f"{spec.resource_type}.{verb}",
        resource_type=spec.resource_type,
        resource_id=str(getattr(row, "id", "") or "") or None,
        resource_name=str(getattr(row, spec.name_attr)) if spec.name_attr else None,
        owner_user_id=spec.owner(row),
        public=spec.public(row),
        private=spec.private,
        payload=payload,
    )


def _changes(row: Any, spec: Tracked) -> dict[str, tuple[Any, Any]]:
    """Column -> (old, new) for the columns of ``row`` changed in this flush."""
    out: dict[str, tuple[Any, Any]] = {}
    state = inspect(row)
    for attr in state.mapper.column_attrs:
        name = attr.key
        if name in ALWAYS_IGNORED or name in spec.ignore:
            continue
        hist = state.attrs[name].history
        if not hist.has_changes():
            continue
        old = hist.deleted[0] if hist.deleted else None
        new = hist.added[0] if hist.added else None
        if old != new:
            out[name] = (old, new)
    return out


def _capture(session: Session, _ctx: Any, _instances: Any) -> None:
    where = session.get_nested_transaction()
    pending = _pending(session)
    for row in session.new:
        spec = _TRACKED.get(type(row))
        if spec is not None:
            pending.append((where, _event_for(row, spec, "created", {})))
    for row in session.dirty:
        spec = _TRACKED.get(type(row))
        if spec is None or not session.is_modified(row):
            continue
        changes = _changes(row, spec)
        if not changes:
            continue
        if spec.state_attr and spec.state_attr in changes:
            # one event per change: what else changed with the state goes in its payload
            old, new = changes.pop(spec.state_attr)
            verb = spec.verbs.get(str(new), str(new))
            extra: dict[str, Any] = {"state": new, "previous_state": old}
            if changes:
                extra["changed"] = sorted(changes)
            pending.append((where, _event_for(row, spec, verb, extra)))
        elif changes:
            pending.append((where, _event_for(row, spec, "updated", {"changed": sorted(changes)})))
    for row in session.deleted:
        spec = _TRACKED.get(type(row))
        if spec is not None:
            pending.append((where, _event_for(row, spec, "deleted", {})))


def _write(session: Session) -> None:
    session.flush()  # the commit's own flush comes after this hook: capture its changes now
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    events = [ev for _where, ev in pending]
    for derive in _DERIVERS:
        events.extend(derive(session, list(events)))
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_EVENT_LOCK})
    session.add_all(events)
    session.info[_WROTE] = True


def _forget_rolled_back(session: Session, previous: SessionTransaction) -> None:
    pending = session.info.get(_PENDING)
    if not pending:
        return
    if not previous.nested:
        session.info.pop(_PENDING, None)
        return

    def inside(where: SessionTransaction | None) -> bool:
        while where is not None:
            if where is previous:
                return True
            where = where.parent
        return False

    session.info[_PENDING] = [(w, ev) for w, ev in pending if not inside(w)]


def _after_commit(session: Session) -> None:
    if session.info.pop(_WROTE, False):
        for hub in list(_HUBS):
            hub.poke()


event.listen(Session, "before_flush", _capture)
event.listen(Session, "before_commit", _write)
event.listen(Session, "after_soft_rollback", _forget_rolled_back)
event.listen(Session, "after_commit", _after_commit)


# --- matching --------------------------------------------------------------------------------


def type_matches(event_type: str, patterns: Iterable[str]) -> bool:
    """True when ``event_type`` matches one of the shell-style ``patterns`` (``vm.*``,
    ``*.failed``, ``*``). No patterns match everything."""
    pats = list(patterns)
    return not pats or any(fnmatch.fnmatchcase(event_type, p) for p in pats)


def valid_pattern(pattern: str) -> bool:
    """A pattern is letters, digits, ``_``, ``.`` and ``*`` (1-64 characters)."""
    return 0 < len(pattern) <= 64 and all(c.isalnum() or c in "._*" for c in pattern)


# --- the hub: wake followers when events arrive ----------------------------------------------

_HUBS: weakref.WeakSet[EventHub] = weakref.WeakSet()


class EventHub:
    """Tells the stream followers of this process that new events may be there.

    Commits in this process poke it at once; other replicas' events are noticed by a loop
    that reads the newest id every ``events_poll_s`` (:meth:`run`).
    """

    def __init__(self) -> None:
        self.latest = 0
        self._cond = asyncio.Condition()
        self._poked = asyncio.Event()
        _HUBS.add(self)

    def poke(self) -> None:
        """A local commit wrote events (called from the commit hook, on the loop's thread)."""
        self._poked.set()

    async def publish(self, latest: int) -> None:
        """Record the newest id and wake every follower."""
        async with self._cond:
            if latest > self.latest:
                self.latest = latest
            self._cond.notify_all()

    async def wait(self, after: int, timeout: float) -> None:
        """Return when an event newer than ``after`` may exist, or after ``timeout``."""
        async with self._cond:
            if self.latest > after:
                return
            try:
                await asyncio.wait_for(self._cond.wait(), timeout)
            except TimeoutError:
                pass

    async def run(self, newest: Callable[[], Any], poll_s: float) -> None:
        """Forever: read the newest id (``await newest()``) when poked or every ``poll_s``."""
        while True:
            try:
                await asyncio.wait_for(self._poked.wait(), poll_s)
            except TimeoutError:
                pass
            self._poked.clear()
            latest = await newest()
            await self.publish(int(latest or 0))
