"""/v1/functions: serverless handlers in microVMs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as FastPath
from fastapi.responses import JSONResponse

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, cursor_offset
from nexus.core.paging import next_offset_cursor as next_cursor
from nexus.manager.features.functions import service
from nexus.manager.features.functions.schemas import (
    ALIAS_PATTERN,
    AliasSet,
    FunctionCreate,
    FunctionPage,
    FunctionRead,
    FunctionUpdate,
    FunctionVersionPage,
    FunctionVersionRead,
    InvocationLogs,
    InvocationPage,
    InvocationRead,
    InvokeRequest,
)
from nexus.manager.features.operations import service as operations
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/functions", tags=["functions"])
NOT_YOURS: dict[int | str, dict[str, Any]] = {
    403: problem("a viewer, or not your function"),
    404: problem("no such function (or not one you may see)"),
}
WAIT_DOC = "wait until the version is built (ready or failed)"
BUILD_WAIT_S = 900.0


async def _answer(
    state: Any, principal: Any, fn_id: str, op_id: str | None, wait: bool, status: int
) -> JSONResponse:
    if wait and op_id:
        await operations.wait(state=state, principal=principal, op_id=op_id, timeout_s=BUILD_WAIT_S)
    async with state.db.session() as s:
        fn = await service.get_function(db_session=s, principal=principal, function_id=fn_id)
        body = await service.read(s, state, fn)
    return JSONResponse(body.model_dump(mode="json"), status)


@router.post(
    "",
    status_code=201,
    response_model=FunctionRead,
    responses={
        403: problem("viewers may not create functions"),
        409: problem("you already have a function of that name"),
        413: problem("the code is larger than 512 KiB"),
        422: problem("bad code (syntax error, not a zip), handler, env or limits"),
    },
    dependencies=[CreateLimit],
)
async def create_function(
    body: FunctionCreate,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
) -> JSONResponse:
    """Create a function. Its version 1 is built at once by a `function.deploy` operation
    (`version.operation_id`): a VM boots from the default image, the runner imports the
    handler, and a memory snapshot is taken at "ready to handle"; cold starts restore it.
    `version.state` is `building`, then `ready` (or `failed` with `state_reason`, e.g. the
    handler's import error); with `?wait=true` the answer comes when it is built."""
    fn, op = await service.create_function(
        db_session=db, state=state, principal=principal, body=body
    )
    return await _answer(state, principal, fn.id, op.id, wait, 201)


@router.get("", response_model=FunctionPage)
async def list_functions(
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> FunctionPage:
    """Functions you may see (admin: all), newest first."""
    offset = cursor_offset(cursor)
    rows, total = await service.list_functions(
        db_session=db, principal=principal, limit=limit, offset=offset
    )
    return FunctionPage(
        items=[await service.read(db, state, f) for f in rows],
        next_cursor=next_cursor(offset, len(rows), limit, offset + limit < total),
    )


@router.get("/{function_id}", response_model=FunctionRead, responses={404: NOT_YOURS[404]})
async def get_function(
    function_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> FunctionRead:
    """One function (by id or name) with its newest version."""
    fn = await service.get_function(db_session=db, principal=principal, function_id=function_id)
    return await service.read(db, state, fn)


@router.patch(
    "/{function_id}",
    response_model=FunctionRead,
    responses={
        **NOT_YOURS,
        413: problem("the code is larger than 512 KiB"),
        422: problem("bad code, handler, env or limits"),
    },
)
async def update_function(
    function_id: str,
    body: FunctionUpdate,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    wait: bool = Query(False, description=WAIT_DOC),
) -> JSONResponse:
    """Change a function. New code, handler, runtime, env, memory_mib or timeout_s make a new
    immutable version (built like the first; `latest` moves to it when it is ready, and
    invocations in flight finish on the version they started on). Scaling settings
    (`concurrency`, `min_warm`, `max_instances`, `max_queue`, `idle_s`) change in place."""
    fn, op = await service.update_function(
        db_session=db, state=state, principal=principal, function_id=function_id, body=body
    )
    return await _answer(state, principal, fn.id, op.id if op else None, wait, 200)


@router.delete("/{function_id}", status_code=204, responses=NOT_YOURS)
async def delete_function(
    function_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Delete a function, its VMs, snapshots, versions and invocation records."""
    await service.delete_function(
        db_session=db, state=state, principal=principal, function_id=function_id
    )
    return Response(status_code=204)


@router.get(
    "/{function_id}/versions", response_model=FunctionVersionPage, responses={404: NOT_YOURS[404]}
)
async def list_versions(
    function_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> FunctionVersionPage:
    """A function's versions, newest first (each immutable)."""
    offset = cursor_offset(cursor)
    rows, total = await service.list_versions(
        db_session=db, principal=principal, function_id=function_id, limit=limit, offset=offset
    )
    return FunctionVersionPage(
        items=[FunctionVersionRead.model_validate(v) for v in rows],
        next_cursor=next_cursor(offset, len(rows), limit, offset + limit < total),
    )


AliasName = Annotated[str, FastPath(pattern=ALIAS_PATTERN, description="alias name")]


@router.put(
    "/{function_id}/aliases/{alias}",
    response_model=FunctionRead,
    responses={**NOT_YOURS, 409: problem("the version is not ready")},
)
async def set_alias(
    function_id: str,
    alias: AliasName,
    body: AliasSet,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
) -> FunctionRead:
    """Point an alias (e.g. `prod`) at a ready version; invoke it with `?alias=prod`."""
    fn = await service.set_alias(
        db_session=db,
        principal=principal,
        function_id=function_id,
        alias=alias,
        version=body.version,
    )
    return await service.read(db, state, fn)


@router.delete("/{function_id}/aliases/{alias}", response_model=FunctionRead, responses=NOT_YOURS)
async def delete_alias(
    function_id: str, alias: AliasName, db: DbSession, state: State, principal: CurrentPrincipal
) -> FunctionRead:
    """Remove a named alias (`latest` stays: it follows the newest ready version)."""
    fn = await service.delete_alias(
        db_session=db, principal=principal, function_id=function_id, alias=alias
    )
    return await service.read(db, state, fn)


@router.post(
    "/{function_id}/invoke",
    response_model=InvocationRead,
    responses={
        **NOT_YOURS,
        202: {"description": "async: the queued invocation (poll its id)"},
        409: problem("no ready version (still building, or it failed)"),
        413: problem("the event (over 256 KiB of JSON) or the result (over 1 MiB) is too large"),
        429: problem("at the concurrency limit with a full queue; retry after Retry-After"),
        502: problem("the runtime failed (no VM could start, or it did not answer)"),
    },
)
async def invoke(
    function_id: str,
    body: InvokeRequest,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    version: int | None = Query(None, ge=1, le=2**31 - 1, description="run this version"),
    alias: str | None = Query(
        None, pattern=ALIAS_PATTERN, description="run the version of this alias (default latest)"
    ),
    asynchronous: bool = Query(
        False, alias="async", description="return the queued invocation at once (202)"
    ),
) -> Any:
    """Invoke the function with `event`. The answer has `result`, `duration_ms`,
    `cold_start` (a VM was restored from the version's ready snapshot), `version` and
    `logs_tail`. An exception in the handler is `status: error` with `error.type`,
    `error.message` and the guest's `error.traceback` (HTTP 200); a handler running past
    `timeout_s` is killed with its VM, which is replaced (`status: timed_out`). With
    `?async=true` the answer is 202 with the invocation's id at once."""
    out = await service.invoke(
        db_session=db,
        state=state,
        principal=principal,
        function_id=function_id,
        event=body.event,
        version=version,
        alias=alias,
        asynchronous=asynchronous,
    )
    if asynchronous:
        return JSONResponse(out.model_dump(mode="json"), 202)
    return out


@router.get(
    "/{function_id}/invocations", response_model=InvocationPage, responses={404: NOT_YOURS[404]}
)
async def list_invocations(
    function_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    status: str | None = Query(None, max_length=16, description="only this status"),
    limit: int = Query(50, ge=1, le=500, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> InvocationPage:
    """A function's invocations, newest first."""
    offset = cursor_offset(cursor)
    rows, total = await service.list_invocations(
        db_session=db,
        principal=principal,
        function_id=function_id,
        status=status,
        limit=limit,
        offset=offset,
    )
    return InvocationPage(
        items=[service.invocation_read(r) for r in rows],
        next_cursor=next_cursor(offset, len(rows), limit, offset + limit < total),
    )


@router.get(
    "/{function_id}/invocations/{invocation_id}",
    response_model=InvocationRead,
    responses={404: problem("no such function or invocation")},
)
async def get_invocation(
    function_id: str, invocation_id: str, db: DbSession, principal: CurrentPrincipal
) -> InvocationRead:
    """One invocation: its status and, once done, its result or error."""
    return service.invocation_read(
        await service.get_invocation(
            db_session=db,
            principal=principal,
            function_id=function_id,
            invocation_id=invocation_id,
        )
    )


@router.get(
    "/{function_id}/invocations/{invocation_id}/logs",
    response_model=InvocationLogs,
    responses={404: problem("no such function or invocation")},
)
async def get_invocation_logs(
    function_id: str, invocation_id: str, db: DbSession, principal: CurrentPrincipal
) -> InvocationLogs:
    """An invocation's captured stdout and stderr (at most 64 KiB)."""
    row = await service.get_invocation(
        db_session=db, principal=principal, function_id=function_id, invocation_id=invocation_id
    )
    return InvocationLogs(id=row.id, logs=row.logs)
