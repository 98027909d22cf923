"""The agent's guest endpoints: exec, interactive shell (WebSocket), console follow
(WebSocket) and per-VM metrics. Everything goes through the VM's one shared guest connection
(:mod:`nexus.agent.guestconn`).

    POST /v1/vms/{id}/exec        AgentExecRequest -> AgentExecResult
    GET  /v1/vms/{id}/metrics     -> VmMetrics (host + guest side)
    GET  /v1/metrics/vms          -> [VmMetrics] (every running or paused VM: the sampler)
    WS   /v1/vms/{id}/shell/ws    ?cols=&rows=&command=   (Bearer agent token)
    WS   /v1/vms/{id}/console/ws  ?tail=N                 (Bearer agent token)

Shell WebSocket protocol (the manager's public endpoint speaks the same): binary frames are
terminal data both ways; the client sends text frames ``{"type": "resize", "cols", "rows"}``;
the server ends with a text frame ``{"type": "exit", "exit_code": N}`` and closes (1000).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from nexus.agent.guestconn import GuestUnavailable
from nexus.agent.hostfacts import proc_cpu_s, proc_rss, read_int
from nexus.agent.runtime import AgentRuntime, ManagedVm, RuntimeProblem, VmConflict, VmNotFound
from nexus.agent.storage.disks import ROOT_DISK, DiskError, virtual_size
from nexus.agent.vmm.base import CONSOLE_LOG, console_tail
from nexus.core import tracing
from nexus.core.settings import Settings
from nexus.guest.client import GuestError, GuestRemoteError, GuestTimeoutError
from nexus.hostapi.models import (
    AgentExecRequest,
    AgentExecResult,
    GuestVmMetrics,
    HostVmMetrics,
    VmMetrics,
)

log = logging.getLogger(__name__)

CONSOLE_POLL_S = 0.2
GUEST_METRICS_TIMEOUT_S = 5.0
ALL_METRICS_CONCURRENCY = 8
"""Guests asked for their metrics at once by ``GET /v1/metrics/vms``."""


class GuestNotReady(RuntimeProblem):
    """The guest agent is not connected (VM not running, booting, or an image without it)."""

    status = 409
    type = "guest-unavailable"


class GuestSpawnFailed(RuntimeProblem):
    """The guest could not start the command."""

    status = 422
    type = "spawn-failed"


class GuestFailed(RuntimeProblem):
    """The guest channel failed during the call."""

    status = 502
    type = "guest-error"


def _running(runtime: AgentRuntime, vm_id: str) -> ManagedVm:
    vm = runtime.get(vm_id)
    if vm.state != "running":
        raise VmConflict(f"VM {vm_id} is {vm.state}, not running")
    return vm


async def _client(runtime: AgentRuntime, vm_id: str, timeout: float = 10.0) -> Any:
    try:
        return await runtime.guests.client(vm_id, timeout)
    except GuestUnavailable as exc:
        raise GuestNotReady(str(exc)) from exc


# --- host-side metrics ---------------------------------------------------------------------


def host_metrics(vm: ManagedVm, cpu_prev: dict[str, tuple[float, float]]) -> HostVmMetrics:
    """VMM CPU time (and % since the previous sample), RSS, disk allocation, tap counters."""
    m = HostVmMetrics()
    pid = vm.handle.pid if vm.handle is not None and vm.state in ("running", "paused") else None
    if pid:
        m.vmm_pid = pid
        m.cpu_time_s = proc_cpu_s(pid)
        m.rss_bytes = proc_rss(pid)
        now = time.monotonic()
        if m.cpu_time_s is not None:
            prev = cpu_prev.get(vm.spec.id)
            if prev is not None and now - prev[0] > 0.05 and m.cpu_time_s >= prev[1]:
                m.cpu_percent = round(100.0 * (m.cpu_time_s - prev[1]) / (now - prev[0]), 2)
            cpu_prev[vm.spec.id] = (now, m.cpu_time_s)
    with contextlib.suppress(OSError, DiskError):
        disk = vm.dir / ROOT_DISK
        m.disk_allocated_bytes = disk.stat().st_blocks * 512  # the VM's own blocks
        m.disk_size_bytes = virtual_size(disk)
    rx = tx = 0
    found = False
    for nic in vm.spec.nics:
        tap = nic.tap
        if not tap:
            continue
        stats = Path("/sys/class/net") / str(tap) / "statistics"
        # the tap's tx is what the guest received, and vice versa
        r, t = read_int(stats / "tx_bytes"), read_int(stats / "rx_bytes")
        if r is not None and t is not None:
            rx, tx, found = rx + r, tx + t, True
    if found:
        m.net_rx_bytes, m.net_tx_bytes = rx, tx
    return m


def guest_metrics(raw: dict[str, Any]) -> GuestVmMetrics:
    """Normalise the guest's ``metrics`` answer."""

    def num(key: str) -> Any:
        v = raw.get(key)
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    load = raw.get("load_avg")
    loads = list(load) if isinstance(load, list) and len(load) == 3 else [None, None, None]
    total, avail = num("mem_total_bytes"), num("mem_available_bytes")
    return GuestVmMetrics(
        load1=loads[0],
        load5=loads[1],
        load15=loads[2],
        cpus=num("cpus"),
        mem_total_bytes=total,
        mem_available_bytes=avail,
        mem_used_bytes=(total - avail) if total is not None and avail is not None else None,
        disk_total_bytes=num("disk_total_bytes"),
        disk_used_bytes=num("disk_used_bytes"),
        disk_free_bytes=num("disk_free_bytes"),
        uptime_s=num("uptime_s"),
        procs=num("procs"),
    )


# --- exec ceilings ----------------------------------------------------------------------------


def exec_limits(settings: Settings, body: AgentExecRequest) -> tuple[float, int]:
    """The timeout and per-stream output cap this host applies to an exec: the request's,
    clamped to the host's own ceilings. The agent does not rely on the manager's checks (an
    older or compromised caller) nor on the guest's cap (the guest is not trusted); a
    timeout of 0 ("none") becomes the ceiling."""
    timeout = body.timeout_s or settings.max_exec_timeout_s
    return min(timeout, settings.max_exec_timeout_s), min(
        body.max_output, settings.max_exec_output_bytes
    )


# --- routes ----------------------------------------------------------------------------------


def router(runtime: AgentRuntime, get_token: Callable[[], str]) -> APIRouter:
    """The guest routes over ``runtime`` (HTTP routes inherit the app's bearer auth; the
    WebSockets check ``get_token()`` themselves before accepting)."""
    r = APIRouter()
    cpu_prev: dict[str, tuple[float, float]] = {}

    @r.post(
        "/v1/vms/{vm_id}/exec", response_model=AgentExecResult, summary="Run a command in the guest"
    )
    async def exec_vm(vm_id: str, body: AgentExecRequest) -> AgentExecResult:
        _running(runtime, vm_id)
        try:
            stdin = base64.b64decode(body.stdin_b64, validate=True) if body.stdin_b64 else b""
        except (binascii.Error, ValueError) as exc:
            raise GuestSpawnFailed(f"stdin_b64 is not valid base64: {exc}") from exc
        client = await _client(runtime, vm_id)
        limits = exec_limits(runtime.settings, body)
        try:
            with tracing.span("guest exec", nexus__vm_id=vm_id):  # the guest channel
                res = await client.exec(
                    body.argv,
                    env=body.env,
                    cwd=body.cwd,
                    stdin=stdin,
                    timeout_s=limits[0],
                    max_output=limits[1],
                )
        except GuestRemoteError as exc:
            runtime.guests.note_error(vm_id, exc)
            if exc.code in ("spawn_failed", "bad_request"):
                raise GuestSpawnFailed(exc.message or exc.code) from exc
            raise GuestFailed(str(exc)) from exc
        except GuestTimeoutError as exc:
            raise GuestFailed(f"the guest did not finish the command in time: {exc}") from exc
        except GuestError as exc:
            raise GuestFailed(f"guest channel failed: {exc}") from exc
        return AgentExecResult(
            exit_code=res.exit_code,
            stdout_b64=base64.b64encode(res.stdout).decode(),
            stderr_b64=base64.b64encode(res.stderr).decode(),
            duration_ms=res.duration_ms,
            timed_out=res.timed_out,
            truncated=res.truncated,
            signal=res.signal,
        )

    async def sample(vm: ManagedVm) -> VmMetrics:
        out = VmMetrics(
            vm_id=vm.spec.id,
            sampled_at=datetime.now(UTC),
            state=vm.state,
            host=host_metrics(vm, cpu_prev),
        )
        if vm.state == "running":
            try:
                client = await runtime.guests.client(vm.spec.id, timeout=0.5)
                raw = await asyncio.wait_for(client.metrics(), GUEST_METRICS_TIMEOUT_S)
                out.guest = guest_metrics(raw)
            except (GuestUnavailable, GuestError, TimeoutError) as exc:
                if isinstance(exc, GuestRemoteError):
                    runtime.guests.note_error(vm.spec.id, exc)
                out.guest_error = str(exc) or type(exc).__name__
        return out

    @r.get("/v1/vms/{vm_id}/metrics", response_model=VmMetrics, summary="One metrics sample")
    async def metrics(vm_id: str) -> VmMetrics:
        return await sample(runtime.get(vm_id))

    @r.get(
        "/v1/metrics/vms",
        response_model=list[VmMetrics],
        summary="One metrics sample of every running or paused VM",
    )
    async def all_metrics() -> list[VmMetrics]:
        """The manager's sampler makes one call per host, not one per VM."""
        vms = [runtime.get(st.id) for st in runtime.list() if st.state in ("running", "paused")]
        slots = asyncio.Semaphore(ALL_METRICS_CONCURRENCY)

        async def one(vm: ManagedVm) -> VmMetrics:
            async with slots:
                return await sample(vm)

        return list(await asyncio.gather(*(one(vm) for vm in vms)))

    def authorized(ws: WebSocket) -> bool:
        scheme, _, presented = ws.headers.get("authorization", "").partition(" ")
        expected = get_token()
        return (
            scheme.lower() == "bearer"
            and bool(expected)
            and hmac.compare_digest(presented.strip().encode(), expected.encode())
        )

    async def admit(ws: WebSocket) -> ManagedVm | None:
        """Authenticate and find the VM before accepting; refuse the upgrade otherwise."""
        if not authorized(ws):
            await deny(ws, 401, "a valid agent bearer token is required")
            return None
        try:
            return runtime.get(ws.path_params["vm_id"])
        except VmNotFound as exc:
            await deny(ws, 404, str(exc))
            return None

    async def shell_ws(ws: WebSocket) -> None:
        vm = await admit(ws)
        if vm is None:
            return
        q = ws.query_params
        try:
            cols = max(1, min(int(q.get("cols", "80")), 1000))
            rows = max(1, min(int(q.get("rows", "24")), 1000))
        except ValueError:
            cols, rows = 80, 24
        command = q.get("command") or None
        try:
            if vm.state != "running":
                raise GuestNotReady(f"VM {vm.spec.id} is {vm.state}, not running")
            client = await _client(runtime, vm.spec.id)
            session = await client.open_shell(cols=cols, rows=rows, command=command)
        except (RuntimeProblem, GuestError) as exc:
            if isinstance(exc, GuestRemoteError):
                runtime.guests.note_error(vm.spec.id, exc)
            await deny(ws, 409, str(exc))
            return
        await ws.accept()
        await bridge_shell(ws, session)

    async def console_ws(ws: WebSocket) -> None:
        vm = await admit(ws)
        if vm is None:
            return
        try:
            tail = max(0, min(int(ws.query_params.get("tail", "100")), 100_000))
        except ValueError:
            tail = 100
        await ws.accept()
        await follow_console(ws, vm.dir, tail)

    # plain Starlette routes: the app-wide HTTP auth dependency does not apply; admit() checks
    r.routes.append(WebSocketRoute("/v1/vms/{vm_id}/shell/ws", shell_ws))
    r.routes.append(WebSocketRoute("/v1/vms/{vm_id}/console/ws", console_ws))
    return r


async def deny(ws: WebSocket, status: int, detail: str) -> None:
    """Refuse a WebSocket before accepting it: an HTTP problem response where the server
    supports it (``websocket.http.response``), else a plain close (HTTP 403)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        body = {
            "type": f"https://nexus.dev/problems/ws-{status}",
            "status": status,
            "detail": detail,
        }
        await ws.send_denial_response(
            JSONResponse(body, status_code=status, media_type="application/problem+json")
        )
    else:
        await ws.close(code=4000 + status, reason=detail[:120])


async def _until_disconnect(
    ws: WebSocket, on_message: Callable[[MutableMapping[str, Any]], Awaitable[None]]
) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        await on_message(message)


async def bridge_shell(ws: WebSocket, session: Any) -> None:
    """Pump a guest :class:`~nexus.guest.client.ShellSession` <-> an accepted WebSocket."""

    async def output() -> None:
        async for chunk in session:
            await ws.send_bytes(chunk)

    async def on_message(message: MutableMapping[str, Any]) -> None:
        data = message.get("bytes")
        if data:
            await session.write(data)
            return
        text = message.get("text")
        if not text:
            return
        try:
            ctl = json.loads(text)
        except ValueError:
            ctl = None
        if isinstance(ctl, dict) and ctl.get("type") == "resize":
            with contextlib.suppress(TypeError, ValueError):
                await session.resize(int(ctl["cols"]), int(ctl["rows"]))
        elif isinstance(ctl, dict) and ctl.get("type") == "input":
            await session.write(str(ctl.get("data", "")).encode())
        elif ctl is None:
            await session.write(text.encode())

    out = asyncio.ensure_future(output())
    inp = asyncio.ensure_future(_until_disconnect(ws, on_message))
    try:
        done, _ = await asyncio.wait({out, inp}, return_when=asyncio.FIRST_COMPLETED)
        if out in done:
            with contextlib.suppress(Exception):
                out.result()
            code = session.exit_code
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps({"type": "exit", "exit_code": code}))
                await ws.close(code=1000)
    except (WebSocketDisconnect, GuestError):
        pass
    finally:
        for t in (out, inp):
            t.cancel()
        for t in (out, inp):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await session.close()


async def follow_console(ws: WebSocket, vm_dir: Path, tail: int) -> None:
    """Send the last ``tail`` lines, then new console output as it is written (text)."""
    path = vm_dir / CONSOLE_LOG
    try:
        pos = path.stat().st_size
    except OSError:
        pos = 0
    if tail:
        text = console_tail(vm_dir, tail)
        if text:
            await ws.send_text(text if text.endswith("\n") else text + "\n")

    async def follow() -> None:
        nonlocal pos
        while True:
            try:
                with open(path, "rb") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    if size < pos:  # capped / rotated
                        pos = 0
                    fh.seek(pos)
                    chunk = fh.read(1 << 20)
                    pos += len(chunk)
            except OSError:
                chunk = b""
            if chunk:
                await ws.send_text(chunk.decode("utf-8", errors="replace"))
            else:
                await asyncio.sleep(CONSOLE_POLL_S)

    async def ignore(_message: MutableMapping[str, Any]) -> None:
        return None

    f = asyncio.ensure_future(follow())
    r = asyncio.ensure_future(_until_disconnect(ws, ignore))
    try:
        await asyncio.wait({f, r}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (f, r):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await ws.close()
