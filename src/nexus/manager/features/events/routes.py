"""/v1/events: the change log of every resource, as pages and as a live stream."""

from __future__ import annotations

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from nexus.core.errors import Problem
from nexus.core.paging import CURSOR_DOC, LIMIT_DOC
from nexus.manager.features.events import service
from nexus.manager.features.events.schemas import EventPage, EventRead
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State, bearer_token

router = APIRouter(prefix="/v1/events", tags=["events"])

TYPE_DOC = (
    "event type patterns, repeatable: `vm.started`, `vm.*`, `*.failed` (`*` matches any run"
    " of characters); none = every type"
)


@router.get("", response_model=EventPage)
async def list_events(
    db: DbSession,
    principal: CurrentPrincipal,
    after: str | None = Query(
        None, max_length=20, description="oldest first, starting after this event id"
    ),
    before: str | None = Query(
        None, max_length=20, description="newest first, starting before this event id"
    ),
    type: list[str] = Query(default_factory=list, description=TYPE_DOC),
    resource_type: str | None = Query(None, max_length=32, description="e.g. `vm`"),
    resource_id: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=24, description=CURSOR_DOC),
) -> EventPage:
    """Events you may see: of what you own and of what is shared (admins: everyone's, but
    not other users' notifications). Without `after`, or with `before`: newest first. With
    `after`: oldest first from that event; to follow the log, pass the last event's id as
    `after` — or use `GET /v1/events/stream`. `next_cursor` continues in the same direction."""
    c_after, c_before = service.parse_page_cursor(cursor)
    rows, next_cursor = await service.list_events(
        db_session=db,
        principal=principal,
        after=c_after if c_after is not None else service.parse_cursor(after),
        before=c_before if c_before is not None else service.parse_cursor(before, "before"),
        types=type,
        resource_type=resource_type,
        resource_id=resource_id,
        limit=limit,
    )
    return EventPage(items=[EventRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "A `text/event-stream`: each event as `id: <cursor>`, `event: <type>`,"
                " `data: <the event as JSON, as in GET /v1/events>`; a comment line every 15 s"
                " keeps the connection open."
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def stream_events(
    request: Request,
    state: State,
    principal: CurrentPrincipal,
    after: str | None = Query(
        None, max_length=20, description="start after this event id (default: from now on)"
    ),
    type: list[str] = Query(default_factory=list, description=TYPE_DOC),
    resource_type: str | None = Query(None, max_length=32),
    resource_id: str | None = Query(None, max_length=64),
    last_event_id: str | None = Header(
        None,
        max_length=20,
        description="set by a reconnecting EventSource: resume after this event id",
    ),
) -> StreamingResponse:
    """Server-sent events: every event you may see, live, in order. To resume after a
    disconnect without a gap or a duplicate, reconnect with `Last-Event-ID` (EventSource does
    it by itself) or `after` set to the last id you received. The stream ends when your
    token expires or is revoked: reconnect with a fresh one."""
    cursor = service.parse_cursor(last_event_id, "Last-Event-ID")
    if cursor is None:
        cursor = service.parse_cursor(after)
    service.check_patterns(type)
    bearer = bearer_token(request) or ""

    async def still_allowed() -> bool:
        try:
            async with state.db.session() as s:
                await state.authenticate()(
                    db_session=s,
                    keys=state.signing_keys(),
                    bearer=bearer,
                    token_max_days=state.settings.api_token_max_lifetime_days,
                )
        except Problem:
            return False
        return True

    gen = service.follow(
        state,
        principal,
        after=cursor,
        types=type,
        resource_type=resource_type,
        resource_id=resource_id,
        still_allowed=still_allowed,
    )
    return StreamingResponse(
        gen,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
