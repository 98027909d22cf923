"""Inside the guest: exec, WebSocket tickets and authentication, shell/console proxying,
metrics sampling and queries. Authorization and audit for every path live here.

Rules: anyone who may see a VM may read its console and metrics; exec and shells need the
right to modify it (owner operator or admin; viewers never). Exec is audited with its argv,
shells with open/close and duration (never keystrokes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from nexus.core.db import Database
from nexus.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    Unauthorized,
    UpstreamError,
)
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.security import hash_secret, new_secret
from nexus.core.timeutil import utcnow
from nexus.core.tls import pin_error
from nexus.hostapi.agent_client import AgentClient, AgentError, AgentNotFound
from nexus.hostapi.models import AgentExecRequest, AgentExecResult, VmMetrics
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.auth import service as auth_service
from nexus.manager.features.guest.models import GuestTicket, VmMetricSample
from nexus.manager.features.guest.schemas import (
    ExecRequest,
    ExecResult,
    MetricSample,
    MetricsHistory,
    TicketPurpose,
    TicketRead,
)
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.system.service import run_leased
from nexus.manager.features.users.models import User
from nexus.manager.features.vms import ceilings
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform import metrics as prom
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.fanout import spread
from nexus.manager.platform.rbac import Principal, denial, ensure_can_modify, ensure_visible

log = get_logger(__name__)
LEASE = "guest-metrics"
TICKET_PREFIX = "nxt_"
MAX_HISTORY_POINTS = 5000


# --- helpers ---------------------------------------------------------------------------------


async def _visible_vm(db_session: AsyncSession, principal: Principal, vm_id: str) -> Vm:
    return ensure_visible(principal, await db_session.get(Vm, vm_id), "vm", vm_id)


async def _host_of(db_session: AsyncSession, vm: Vm) -> Host:
    host = await db_session.get(Host, vm.host_id) if vm.host_id else None
    if host is None:
        raise Conflict(f"vm '{vm.name}' is not placed on a host")
    return host


def _ensure_running(vm: Vm) -> None:
    if vm.state != "running":
        raise Conflict(f"vm '{vm.name}' is {vm.state}; it must be running")


def _ensure_interactive(principal: Principal, vm: Vm, action: str) -> None:
    """Exec and shells: owner operator or admin, with a token that may write."""
    ensure_can_modify(principal, vm, "vm", action)
    if "write" not in principal.scopes:
        raise Forbidden(
            f"{action} needs a token with the 'write' scope",
            audit=denial(action, "vm", vm.id),
        )


# --- exec ------------------------------------------------------------------------------------


async def _run_exec(
    state: ManagerState, host: Host, vm: Vm, body: ExecRequest, stdin: bytes
) -> AgentExecResult:
    """The agent call of one exec (the caller holds an exec slot)."""
    req = AgentExecRequest(
        argv=body.command,
        env=body.env,
        cwd=body.cwd,
        stdin_b64=base64.b64encode(stdin).decode(),
        timeout_s=body.timeout_s,
        max_output=body.max_output_bytes,
    )
    try:
        return await hosts.agent_client(state, host).exec_vm(vm.id, req)
    except AgentError as exc:
        raise agent_problem(exc, "exec") from exc


async def exec_command(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    body: ExecRequest,
) -> ExecResult:
    """Run ``body.command`` in the guest and wait for it (audited with its argv)."""
    vm = await _visible_vm(db_session, principal, vm_id)
    _ensure_interactive(principal, vm, "vm.exec")
    ceilings.check_exec(
        state.settings, timeout_s=body.timeout_s, max_output_bytes=body.max_output_bytes
    )
    _ensure_running(vm)
    host = await _host_of(db_session, vm)
    if body.stdin_base64 is not None:
        try:
            stdin = base64.b64decode(body.stdin_base64, validate=True)
        except ValueError as exc:
            raise BadRequest(f"stdin_base64 is not valid base64: {exc}") from exc
    else:
        stdin = (body.stdin or "").encode()
    # a refused (429) exec writes no "vm.exec" row: the slot is taken before the audit
    with ceilings.exec_slot(state, principal):
        audit.record(
            db_session,
            actor=principal,
            action="vm.exec",
            resource_type="vm",
            resource_id=vm.id,
            after={
                "argv": body.command,
                "cwd": body.cwd,
                "env_keys": sorted(body.env or {}),
                "stdin_bytes": len(stdin),
                "timeout_s": body.timeout_s,
                "max_output_bytes": body.max_output_bytes,
            },
        )
        # commit now: the audit row must not wait for the command (nor hold a transaction)
        await db_session.commit()
        res = await _run_exec(state, host, vm, body, stdin)
    out, err = base64.b64decode(res.stdout_b64), base64.b64decode(res.stderr_b64)
    return ExecResult(
        exit_code=res.exit_code,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        stdout_base64=res.stdout_b64,
        stderr_base64=res.stderr_b64,
        duration_ms=res.duration_ms,
        timed_out=res.timed_out,
        truncated=res.truncated,
        signal=res.signal,
    )


# --- tickets and WebSocket authentication -----------------------------------------------------


WS_PATHS: dict[str, str] = {
    "shell": "/v1/vms/{id}/shell/ws",
    "console": "/v1/vms/{id}/console/ws",
    "metrics": "/v1/vms/{id}/metrics/ws",
}


def _authorize(principal: Principal, vm: Vm, purpose: str) -> None:
    if purpose == "shell":
        _ensure_interactive(principal, vm, "vm.shell")


async def create_ticket(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    purpose: TicketPurpose,
) -> TicketRead:
    """A single-use ticket for a browser WebSocket (``?ticket=``), valid a few seconds."""
    vm = await _visible_vm(db_session, principal, vm_id)
    _authorize(principal, vm, purpose)
    secret, expires = await issue_ticket(
        db_session=db_session, state=state, principal=principal, vm_id=vm.id, purpose=purpose,
        action=f"vm.{purpose}.ticket", resource_type="vm", resource_id=vm.id,
    )  # fmt: skip
    return TicketRead(
        ticket=secret,
        purpose=purpose,
        vm_id=vm.id,
        expires_at=expires,
        ws_path=WS_PATHS[purpose].format(id=vm.id),
    )


async def issue_ticket(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm_id: str,
    purpose: str,
    action: str,
    resource_type: str,
    resource_id: str,
) -> tuple[str, datetime]:
    """Store (hashed) and audit a single-use WebSocket ticket for ``purpose`` on the VM
    ``vm_id`` (features with WebSockets of their own, e.g. ``container-shell``, use their own
    purpose); the caller has authorized it. Returns the ticket and its expiry."""
    secret = TICKET_PREFIX + new_secret(32)
    expires = utcnow() + timedelta(seconds=state.settings.ws_ticket_ttl_s)
    row = GuestTicket(
        id=new_id("wst"),
        token_hash=hash_secret(secret),
        vm_id=vm_id,
        purpose=purpose,
        expires_at=expires,
        created_by_user_id=principal.user_id,
    )
    db_session.add(row)
    audit.record(
        db_session,
        actor=principal,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        after={"ticket_id": row.id, "expires_at": expires.isoformat()},
    )
    # drop expired tickets of anyone (cheap; keeps the table small)
    await db_session.execute(
        delete(GuestTicket).where(GuestTicket.expires_at < utcnow() - timedelta(minutes=5))
    )
    return secret, expires


def _ws_bearer(ws: WebSocket) -> str | None:
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def _redeem_ticket(db: Database, ticket: str, vm_id: str, purpose: str) -> Principal:
    """Spend ``ticket`` and return its user. The ticket is spent the moment it is presented,
    in a transaction of its own that commits even when the ticket is then refused (wrong VM
    or purpose, expired, a later authorization failure): a ticket is tried once, ever. Only
    one conditional UPDATE can flip ``used_at``, also across replicas."""
    from sqlalchemy import update

    async with db.session() as s:
        res = await s.execute(
            update(GuestTicket)
            .where(GuestTicket.token_hash == hash_secret(ticket), GuestTicket.used_at.is_(None))
            .values(used_at=utcnow())
        )
        spent = bool(res.rowcount)  # type: ignore[attr-defined]
        row = (
            await s.execute(
                select(GuestTicket).where(GuestTicket.token_hash == hash_secret(ticket))
            )
        ).scalar_one_or_none()
        user = await s.get(User, row.created_by_user_id) if row is not None else None
    if row is None or not spent:
        raise Unauthorized("invalid or already used ticket")
    if row.expires_at < utcnow():
        raise Unauthorized("ticket expired")
    if row.vm_id != vm_id or row.purpose != purpose:
        raise Unauthorized(f"this ticket is not valid for the {purpose} of this VM")
    if user is None or user.disabled:
        raise Unauthorized("the ticket's user is disabled")
    return auth_service.principal_for(user)


async def ws_principal(
    state: ManagerState, ws: WebSocket, vm_id: Callable[[], Awaitable[str]], purpose: str
) -> Principal:
    """Who opens a WebSocket (before it is accepted): ``Authorization: Bearer`` or a
    ``?ticket=`` spent for ``purpose`` on the VM ``await vm_id()`` (looked up only for a
    ticket). Raises :class:`Unauthorized`; authorization is the caller's."""
    bearer = _ws_bearer(ws)
    ticket = ws.query_params.get("ticket")
    if bearer is not None:
        async with state.db.session() as s:
            principal = await auth_service.authenticate(
                db_session=s,
                keys=state.signing_keys(),
                bearer=bearer,
                token_max_days=state.settings.api_token_max_lifetime_days,
            )
    elif ticket:
        principal = await _redeem_ticket(state.db, ticket, await vm_id(), purpose)
    else:
        raise Unauthorized("missing credentials (Authorization: Bearer, or ?ticket=)")
    ws.state.principal = principal
    return principal


async def authenticate_ws(
    state: ManagerState, ws: WebSocket, vm_id: str, purpose: TicketPurpose
) -> tuple[Principal, Vm, Host | None]:
    """Authenticate a WebSocket BEFORE it is accepted: ``Authorization: Bearer`` header or a
    ``?ticket=``; then authorize ``purpose`` on the VM. Raises a :class:`Problem`."""

    async def the_vm() -> str:
        return vm_id

    principal = await ws_principal(state, ws, the_vm, purpose)
    async with state.db.session() as s:
        vm = await _visible_vm(s, principal, vm_id)
        _authorize(principal, vm, purpose)
        host = await s.get(Host, vm.host_id) if vm.host_id else None
        return principal, vm, host


async def audit_ws_denied(
    state: ManagerState, ws: WebSocket, problem: Problem, action: str
) -> None:
    """Record a refused WebSocket (403s always; 401s of shells)."""
    info = problem.audit
    if info is None:
        if problem.status != 401 or not action.endswith(".shell"):
            return
        info = {"action": action, "resource_type": action.partition(".")[0],
                "resource_id": None}  # fmt: skip
    await audit.record_separately(
        state.db,
        actor=getattr(ws.state, "principal", None),
        outcome="denied",
        detail=problem.detail,
        **info,
    )


# --- shell and console proxies ----------------------------------------------------------------


async def open_agent_ws(state: ManagerState, host: Host, path: str) -> ClientConnection:
    """Connect to an agent WebSocket (raises :class:`Problem` when refused)."""
    client: AgentClient = hosts.agent_client(state, host)
    url, headers = client.ws_target(path)
    try:
        return await ws_connect(
            url,
            additional_headers=headers,
            max_size=None,
            open_timeout=15,
            ping_interval=20,
            **client.ws_options(),  # the agent's pinned certificate (https agents)
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(exc.response.body or b"{}").get("detail", ""))
        if status in (404, 409):
            raise Conflict(detail or "the guest is not available") from exc
        raise UpstreamError(f"host agent refused the session ({status}) {detail}") from exc
    except (OSError, WebSocketException, TimeoutError) as exc:
        pin = pin_error(exc)
        if pin is not None:
            raise UpstreamError(
                f"the host agent's TLS certificate is not the one it registered with ({pin}); "
                "nothing was sent. If its certificate was replaced, re-register the agent"
            ) from exc
        raise UpstreamError(f"host agent unreachable: {exc}") from exc


async def proxy(ws: WebSocket, upstream: ClientConnection, *, read_only: bool) -> int | None:
    """Pump frames both ways until either side ends; returns the shell's exit code if seen."""
    exit_code: int | None = None

    async def down() -> None:
        nonlocal exit_code
        async for msg in upstream:
            if isinstance(msg, bytes):
                await ws.send_bytes(msg)
            else:
                if msg.startswith('{"type": "exit"'):
                    with contextlib.suppress(ValueError, TypeError):
                        exit_code = json.loads(msg).get("exit_code")
                await ws.send_text(msg)

    async def up() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if read_only:
                continue
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done:  # upstream ended: end the client's socket the same way
            with contextlib.suppress(Exception):
                await ws.close(code=upstream.close_code or 1000)
    except (WebSocketDisconnect, ConnectionClosed):
        pass
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await upstream.close()
    return exit_code


async def run_shell(
    state: ManagerState,
    ws: WebSocket,
    principal: Principal,
    vm: Vm,
    host: Host | None,
    *,
    command: str | None = None,
    resource: tuple[str, str] | None = None,
) -> None:
    """Open the guest shell (or ``command``, run by ``/bin/sh -c`` on the guest's PTY)
    through the VM's agent, accept the client, bridge, audit (``<type>.shell.open`` and
    ``.close`` on ``resource``: the VM by default)."""
    if vm.state != "running" or host is None:
        raise Conflict(f"vm '{vm.name}' is {vm.state}; it must be running")
    rtype, rid = resource or ("vm", vm.id)
    q = ws.query_params
    params = [f"{k}={v}" for k in ("cols", "rows") if (v := q.get(k)) is not None and v.isdigit()]
    if command is not None:
        params.append(f"command={quote(command, safe='')}")
    query = "&".join(params)
    upstream = await open_agent_ws(
        state, host, f"/v1/vms/{vm.id}/shell/ws" + (f"?{query}" if query else "")
    )
    await ws.accept()
    started = time.monotonic()
    await audit.record_separately(
        state.db,
        actor=principal,
        action=f"{rtype}.shell.open",
        resource_type=rtype,
        resource_id=rid,
        after={"cols": q.get("cols"), "rows": q.get("rows")},
    )
    exit_code: int | None = None
    try:
        exit_code = await proxy(ws, upstream, read_only=False)
    finally:
        await audit.record_separately(
            state.db,
            actor=principal,
            action=f"{rtype}.shell.close",
            resource_type=rtype,
            resource_id=rid,
            after={"duration_s": round(time.monotonic() - started, 3), "exit_code": exit_code},
        )


async def run_console(ws: WebSocket, state: ManagerState, vm: Vm, host: Host | None) -> None:
    """Follow the serial console (read-only)."""
    if host is None:
        raise Conflict(f"vm '{vm.name}' is not placed on a host")
    tail = ws.query_params.get("tail", "100")
    tail = tail if tail.isdigit() else "100"
    upstream = await open_agent_ws(state, host, f"/v1/vms/{vm.id}/console/ws?tail={tail}")
    await ws.accept()
    await proxy(ws, upstream, read_only=True)


# --- metrics ------------------------------------------------------------------------------------


def _sample_row(m: VmMetrics) -> VmMetricSample:
    return VmMetricSample(**_sample_values(m))


def _sample_values(m: VmMetrics) -> dict[str, Any]:
    g = m.guest
    return dict(
        vm_id=m.vm_id,
        sampled_at=m.sampled_at,
        cpu_percent=m.host.cpu_percent,
        cpu_time_s=m.host.cpu_time_s,
        rss_bytes=m.host.rss_bytes,
        disk_allocated_bytes=m.host.disk_allocated_bytes,
        net_rx_bytes=m.host.net_rx_bytes,
        net_tx_bytes=m.host.net_tx_bytes,
        load1=g.load1 if g else None,
        mem_total_bytes=g.mem_total_bytes if g else None,
        mem_used_bytes=g.mem_used_bytes if g else None,
        mem_available_bytes=g.mem_available_bytes if g else None,
        disk_total_bytes=g.disk_total_bytes if g else None,
        disk_used_bytes=g.disk_used_bytes if g else None,
    )


def _read(row: VmMetricSample) -> MetricSample:
    return MetricSample.model_validate(row)


async def latest_metrics(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, vm_id: str
) -> MetricSample:
    """The newest stored sample; a live one from the host when none is stored yet."""
    vm = await _visible_vm(db_session, principal, vm_id)
    row = (
        await db_session.execute(
            select(VmMetricSample)
            .where(VmMetricSample.vm_id == vm.id)
            .order_by(VmMetricSample.sampled_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if row is not None:
        return _read(row)
    if vm.state == "running" and vm.host_id:
        host = await _host_of(db_session, vm)
        try:
            return _read(_sample_row(await hosts.agent_client(state, host).vm_metrics(vm.id)))
        except AgentError as exc:
            raise agent_problem(exc, "metrics") from exc
    raise NotFound(f"no metrics for vm '{vm.name}' yet (it is {vm.state})")


NUMERIC = [f for f in MetricSample.model_fields if f not in ("vm_id", "sampled_at")]


def downsample(rows: Sequence[VmMetricSample], step_s: int) -> list[MetricSample]:
    """Average samples into ``step_s`` buckets (timestamp = bucket start)."""
    buckets: dict[int, list[VmMetricSample]] = {}
    for r in rows:
        buckets.setdefault(int(r.sampled_at.timestamp()) // step_s, []).append(r)
    points = []
    for key in sorted(buckets):
        group = buckets[key]
        values: dict[str, Any] = {}
        for f in NUMERIC:
            nums = [getattr(r, f) for r in group if getattr(r, f) is not None]
            if not nums:
                values[f] = None
            elif isinstance(nums[0], int) and "percent" not in f and "load" not in f:
                values[f] = int(sum(nums) / len(nums))
            else:
                values[f] = round(sum(nums) / len(nums), 4)
        points.append(
            MetricSample(
                vm_id=group[0].vm_id,
                sampled_at=datetime.fromtimestamp(key * step_s, UTC),
                **values,
            )
        )
    return points


async def metrics_history(
    *,
    db_session: AsyncSession,
    principal: Principal,
    vm_id: str,
    since: datetime | None,
    step_s: int,
) -> MetricsHistory:
    """Samples since ``since`` (default: the last hour), averaged per ``step_s``."""
    vm = await _visible_vm(db_session, principal, vm_id)
    start = since or utcnow() - timedelta(hours=1)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    rows = (
        (
            await db_session.execute(
                select(VmMetricSample)
                .where(VmMetricSample.vm_id == vm.id, VmMetricSample.sampled_at >= start)
                .order_by(VmMetricSample.sampled_at)
                .limit(200_000)
            )
        )
        .scalars()
        .all()
    )
    points = downsample(rows, step_s)[-MAX_HISTORY_POINTS:]
    return MetricsHistory(vm_id=vm.id, since=start, step_s=step_s, points=points)


async def sample_once(state: ManagerState, spread_s: float = 0.0) -> int:
    """Poll every healthy host with running VMs once — one call per host for all its VMs
    (per VM for an agent older than ``GET /v1/metrics/vms``), the calls' starts spread over
    ``spread_s`` — store the samples, apply retention."""
    async with state.db.session() as s:
        pairs = list(
            (
                await s.execute(
                    select(Vm.id, Host)
                    .join(Host, Host.id == Vm.host_id)
                    .where(Vm.state == "running")
                )
            ).all()
        )
    timeout = state.settings.host_heartbeat_timeout_s
    per_call = max(5.0, state.settings.metrics_interval_s)
    by_host: dict[str, tuple[Host, list[str]]] = {}
    for vm_id, host in pairs:
        if hosts.is_healthy(host, timeout):
            by_host.setdefault(host.id, (host, []))[1].append(vm_id)

    async def one_vm(client: AgentClient, vm_id: str) -> VmMetrics | None:
        try:
            return await client.vm_metrics(vm_id)
        except AgentError as exc:
            log.debug("metrics.sample_failed", vm_id=vm_id, error=str(exc))
            return None

    async def one_host(entry: tuple[Host, list[str]]) -> list[VmMetrics]:
        host, vm_ids = entry
        client = hosts.agent_client(state, host)
        try:
            try:
                mine = set(vm_ids)  # a host speaks for its own VMs only
                got_all = await asyncio.wait_for(client.all_vm_metrics(), per_call)
                return [m for m in got_all if m.vm_id in mine]
            except AgentNotFound:  # an older agent: one call per VM
                got = await asyncio.wait_for(
                    asyncio.gather(*(one_vm(client, v) for v in vm_ids)), per_call
                )
                return [m for m in got if m is not None]
        except (AgentError, TimeoutError) as exc:
            log.debug("metrics.sample_failed", host=host.name, error=str(exc))
            return []

    # a bounded number of calls in flight, their starts spread (the loop: over half the
    # interval): a thousand hosts are a steady trickle of calls, not a burst
    per_host = await spread(
        list(by_host.values()),
        one_host,
        concurrency=state.settings.loop_concurrency,
        period_s=spread_s,
        gauge="guest-metrics",
    )
    results = [m for got in per_host if got for m in got]
    samples = [r for r in results if r is not None and r.state in ("running", "paused")]
    cutoff = utcnow() - timedelta(seconds=state.settings.metrics_retention_s)
    async with state.db.session() as s:
        existing = set((await s.execute(select(Vm.id))).scalars())
    rows = [_sample_values(m) for m in samples if m.vm_id in existing]
    # bulk inserts in short transactions: two thousand samples never hold the event loop
    # (and the heartbeats it serves) for long
    for i in range(0, len(rows), SAMPLE_WRITE_CHUNK):
        async with state.db.session() as s:
            await s.execute(insert(VmMetricSample), rows[i : i + SAMPLE_WRITE_CHUNK])
        await asyncio.sleep(0)
    async with state.db.session() as s:
        await s.execute(delete(VmMetricSample).where(VmMetricSample.sampled_at < cutoff))
    return len(samples)


SAMPLE_WRITE_CHUNK = 200
"""Metric samples written per transaction by the sampler."""


async def run_sampler(state: ManagerState) -> None:
    """The loop: every ``metrics_interval_s``, sample in the replica holding the lease."""
    interval = state.settings.metrics_interval_s
    await run_leased(state, LEASE, interval, functools.partial(sample_once, spread_s=interval / 2))


async def start_sampler(state: ManagerState) -> None:
    """Start-up hook: run the sampler in the background."""
    state.spawn(run_sampler(state), name="guest-metrics")


async def stream_metrics(ws: WebSocket, state: ManagerState, vm: Vm) -> None:
    """Send the latest sample, then every new one as JSON text frames."""
    await ws.accept()
    last: datetime | None = None
    poll = min(2.0, state.settings.metrics_interval_s)

    async def push() -> None:
        nonlocal last
        while True:
            async with state.db.session() as s:
                q = select(VmMetricSample).where(VmMetricSample.vm_id == vm.id)
                if last is not None:
                    q = q.where(VmMetricSample.sampled_at > last)
                q = q.order_by(VmMetricSample.sampled_at.desc()).limit(1 if last is None else 100)
                rows = list((await s.execute(q)).scalars())
            for row in reversed(rows):
                await ws.send_text(_read(row).model_dump_json())
                last = row.sampled_at
            await asyncio.sleep(poll)

    async def until_closed() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.ensure_future(push()), asyncio.ensure_future(until_closed())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await ws.close()


# --- WebSocket entry points (authenticate before accept, then serve) -------------------------


async def shell_session(state: ManagerState, ws: WebSocket, vm_id: str) -> None:
    """``/v1/vms/{id}/shell/ws``: an interactive PTY in the guest."""
    principal, vm, host = await authenticate_ws(state, ws, vm_id, "shell")
    with prom.WEBSOCKETS.labels("shell").track_inprogress():
        await run_shell(state, ws, principal, vm, host)


async def console_session(state: ManagerState, ws: WebSocket, vm_id: str) -> None:
    """``/v1/vms/{id}/console/ws``: follow the serial console (read-only)."""
    _principal, vm, host = await authenticate_ws(state, ws, vm_id, "console")
    with prom.WEBSOCKETS.labels("console").track_inprogress():
        await run_console(ws, state, vm, host)


async def metrics_session(state: ManagerState, ws: WebSocket, vm_id: str) -> None:
    """``/v1/vms/{id}/metrics/ws``: stream metrics samples as they are taken."""
    _principal, vm, _host = await authenticate_ws(state, ws, vm_id, "metrics")
    with prom.WEBSOCKETS.labels("metrics").track_inprogress():
        await stream_metrics(ws, state, vm)
