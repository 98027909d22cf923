"""Inside the guest: exec, shell (WebSocket + tickets), console follow, metrics.

WebSockets authenticate BEFORE the upgrade (``Authorization: Bearer`` or ``?ticket=`` from
``POST /v1/vms/{id}/shell/ticket``); a refused upgrade answers an HTTP problem (401, 403,
404, 409) instead of switching protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from fastapi import APIRouter, Body, Query, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from nexus.core.errors import PROBLEM_CONTENT_TYPE, Problem
from nexus.core.logging import get_logger
from nexus.manager.features.guest import service
from nexus.manager.features.guest.schemas import (
    ExecRequest,
    ExecResult,
    MetricSample,
    MetricsHistory,
    TicketCreate,
    TicketRead,
)
from nexus.manager.features.vms.ceilings import problem
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.deps import CurrentPrincipal, DbSession, State

log = get_logger(__name__)
router = APIRouter(prefix="/v1/vms", tags=["guest"])


@router.post(
    "/{vm_id}/exec",
    response_model=ExecResult,
    responses={
        422: problem("`timeout_s` or `max_output_bytes` over the administrator's ceiling"),
        429: problem("you already run `max_concurrent_execs_per_user` execs"),
    },
)
async def exec_command(
    vm_id: str, body: ExecRequest, db: DbSession, state: State, principal: CurrentPrincipal
) -> ExecResult:
    """Run a command in the running VM's guest and wait for it. Output is capped per stream
    at ``max_output_bytes`` (``truncated`` is set), by the host whatever the guest sends;
    after ``timeout_s`` the guest kills the command's whole process group (``timed_out``).
    Both are bounded by the administrator's ``max_exec_output_bytes`` and
    ``max_exec_timeout_s`` (422 above them), and a user runs at most
    ``max_concurrent_execs_per_user`` execs at once (429). Owners (operator) and admins
    only; audited with the argv."""
    return await service.exec_command(
        db_session=db, state=state, principal=principal, vm_id=vm_id, body=body
    )


@router.post("/{vm_id}/shell/ticket", response_model=TicketRead, status_code=201)
async def create_ticket(
    vm_id: str,
    db: DbSession,
    state: State,
    principal: CurrentPrincipal,
    body: TicketCreate | None = Body(default=None),
) -> TicketRead:
    """A short-lived, single-use ticket for browsers, which cannot set headers on a
    WebSocket: open ``ws_path?ticket=<ticket>`` within ``expires_at``. ``purpose``:
    ``shell`` (default; owners and admins), ``console`` or ``metrics`` (anyone who sees the
    VM)."""
    return await service.create_ticket(
        db_session=db,
        state=state,
        principal=principal,
        vm_id=vm_id,
        purpose=(body or TicketCreate()).purpose,
    )


@router.get("/{vm_id}/metrics", response_model=MetricSample)
async def latest_metrics(
    vm_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> MetricSample:
    """The newest metrics sample: host side (VMM CPU, RSS, disk allocation, tap I/O) and
    guest side (load, memory, disk usage)."""
    return await service.latest_metrics(
        db_session=db, state=state, principal=principal, vm_id=vm_id
    )


@router.get("/{vm_id}/metrics/history", response_model=MetricsHistory)
async def metrics_history(
    vm_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    since: datetime | None = Query(None, description="ISO 8601; default: one hour ago"),
    step: int = Query(60, ge=1, le=86400, description="bucket width in seconds (averages)"),
) -> MetricsHistory:
    """Stored samples since ``since``, averaged into ``step``-second buckets (samples are
    kept for ``metrics_retention_s``)."""
    return await service.metrics_history(
        db_session=db, principal=principal, vm_id=vm_id, since=since, step_s=step
    )


async def deny(ws: WebSocket, problem: Problem) -> None:
    """Refuse an upgrade with an HTTP problem response (or a close where unsupported)."""
    if ws.application_state != WebSocketState.CONNECTING:
        await ws.close(code=1011, reason=problem.detail[:120])
        return
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        rid = ws.scope.get("state", {}).get("request_id")
        body = problem.body(instance=ws.url.path, request_id=rid)
        await ws.send_denial_response(
            JSONResponse(
                body,
                status_code=problem.status,
                headers=problem.headers,
                media_type=PROBLEM_CONTENT_TYPE,
            )
        )
    else:
        await ws.close(code=1008, reason=problem.detail[:120])


Session = Callable[[ManagerState, WebSocket, str], Awaitable[None]]


async def _serve(ws: WebSocket, vm_id: str, session: Session, action: str) -> None:
    state: ManagerState = ws.app.state.nexus
    try:
        await session(state, ws, vm_id)
    except Problem as problem:
        await service.audit_ws_denied(state, ws, problem, action)
        await deny(ws, problem)


@router.websocket("/{vm_id}/shell/ws")
async def shell_ws(websocket: WebSocket, vm_id: str) -> None:
    """Interactive shell: binary frames are terminal data; send text frames
    ``{"type": "resize", "cols": C, "rows": R}``; ends with ``{"type": "exit",
    "exit_code": N}``. Query: ``cols``, ``rows``, ``ticket``."""
    await _serve(websocket, vm_id, service.shell_session, "vm.shell")


@router.websocket("/{vm_id}/console/ws")
async def console_ws(websocket: WebSocket, vm_id: str) -> None:
    """Follow the serial console (text frames; read-only). Query: ``tail``, ``ticket``."""
    await _serve(websocket, vm_id, service.console_session, "vm.console")


@router.websocket("/{vm_id}/metrics/ws")
async def metrics_ws(websocket: WebSocket, vm_id: str) -> None:
    """Metrics samples as JSON text frames, the latest first. Query: ``ticket``."""
    await _serve(websocket, vm_id, service.metrics_session, "vm.metrics")
