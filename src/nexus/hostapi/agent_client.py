"""Typed async client of the agent HTTP API; the manager talks to agents only through it.

Example::

    async with AgentClient("http://10.0.0.5:8081", token) as agent:
        await agent.put_vm(spec)
        status = await agent.start_vm(spec.id)
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import httpx

from nexus.core import tracing
from nexus.core.tls import CertificatePinError, cert_sha256, pin_error, pinned_ssl_context
from nexus.hostapi.models import (
    AgentExecRequest,
    AgentExecResult,
    CloneResult,
    HostFacts,
    RestoreResult,
    SnapshotInfo,
    VmMetrics,
    VmSpec,
    VmStatus,
)

__all__ = [
    "AgentCertificateMismatch",
    "AgentClient",
    "AgentConflict",
    "AgentError",
    "AgentNotFound",
    "AgentPool",
    "AgentUnauthorized",
    "CertificatePinError",
    "cert_sha256",
    "pinned_ssl_context",
]


class AgentError(Exception):
    """The agent answered with a problem (or could not be reached: ``status`` 0)."""

    def __init__(self, status: int, type_: str, detail: str) -> None:
        super().__init__(f"agent error {status} {type_}: {detail}")
        self.status = status
        self.type = type_
        self.detail = detail


class AgentNotFound(AgentError):
    """404: the VM (or route) does not exist on the agent."""


class AgentConflict(AgentError):
    """409: the operation does not fit the VM's state."""


class AgentUnauthorized(AgentError):
    """401: wrong or missing agent token."""


class AgentCertificateMismatch(AgentError):
    """The agent presented a TLS certificate other than the one it registered with."""


class AgentClient:
    """Async client for one agent. ``transport`` lets tests pass an ASGI transport.

    ``cert_sha256``: the agent's certificate fingerprint learned at registration; for an
    https agent every connection must present exactly that certificate (pinning).
    Without it an https agent is verified against the system CAs.

    ``observe(outcome, seconds)`` is called after every call (``ok``, ``error`` for a problem
    answer, ``unreachable``): the manager's metrics. Every call carries the current
    ``X-Request-ID`` and, with tracing on, a W3C ``traceparent`` (a client span per call)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        cert_sha256: str | None = None,
        observe: Callable[[str, float], None] | None = None,
        host_id: str | None = None,
        http: httpx.AsyncClient | None = None,
        max_concurrency: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.observe = observe
        self.host_id = host_id
        self.ssl_context: ssl.SSLContext | None = None
        self._auth = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout
        # at most ``max_concurrency`` calls in flight to this agent (0: unbounded)
        self._slots = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None
        if cert_sha256 and self.base_url.startswith("https://"):
            self.ssl_context = pinned_ssl_context(cert_sha256)
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            verify=self.ssl_context if self.ssl_context is not None else True,
        )

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (a shared pool's owner closes it, not this client)."""
        if self._owns_http:
            await self._http.aclose()

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with tracing.span(
            f"agent {method}",
            client=True,
            url__path=path,
            http__request__method=method,
            nexus__host_id=self.host_id,
        ) as sp:
            began = time.perf_counter()
            outcome = "unreachable"
            try:
                resp = await self._send(method, path, **kw)
                outcome = "ok"
                return resp
            except AgentError as exc:
                if exc.status:
                    outcome = "error"
                if sp is not None:
                    sp.set_attribute("http.response.status_code", exc.status)
                raise
            finally:
                if self.observe is not None:
                    self.observe(outcome, time.perf_counter() - began)

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = tracing.outgoing_headers()
        if headers:
            kw["headers"] = {**headers, **(kw.get("headers") or {})}
        kw["headers"] = {**self._auth, **(kw.get("headers") or {})}
        kw.setdefault("timeout", self._timeout)
        try:
            async with self._slot():
                resp = await self._http.request(method, self.base_url + path, **kw)
        except httpx.HTTPError as exc:
            pin = pin_error(exc)
            if pin is not None:
                raise AgentCertificateMismatch(
                    0,
                    "certificate-mismatch",
                    f"{self.base_url}: the agent's TLS certificate is not the one it registered "
                    f"with ({pin}); nothing was sent. If the agent's certificate was replaced, "
                    "re-register the agent (nexus-agent --join-token <new token>)",
                ) from exc
            raise AgentError(0, "unreachable", f"{self.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                type_ = str(body.get("type", "")).rsplit("/", 1)[-1] or "error"
                detail = str(body.get("detail", resp.text))
            except ValueError:
                type_, detail = "error", resp.text
            cls = {404: AgentNotFound, 409: AgentConflict, 401: AgentUnauthorized}.get(
                resp.status_code, AgentError
            )
            raise cls(resp.status_code, type_, detail)
        return resp

    async def _status(self, method: str, path: str, **kw: Any) -> VmStatus:
        return VmStatus.model_validate((await self._request(method, path, **kw)).json())

    async def info(self) -> HostFacts:
        """``GET /v1/info``."""
        return HostFacts.model_validate((await self._request("GET", "/v1/info")).json())

    async def list_vms(self) -> list[VmStatus]:
        """``GET /v1/vms``."""
        data = (await self._request("GET", "/v1/vms")).json()
        return [VmStatus.model_validate(d) for d in data]

    async def put_vm(self, spec: VmSpec) -> VmStatus:
        """``PUT /v1/vms/{id}``: idempotent create/update (state dir + private disk)."""
        return await self._status("PUT", f"/v1/vms/{spec.id}", json=spec.model_dump(mode="json"))

    async def get_vm(self, vm_id: str) -> VmStatus:
        """``GET /v1/vms/{id}``; raises :class:`AgentNotFound`."""
        return await self._status("GET", f"/v1/vms/{vm_id}")

    async def start_vm(self, vm_id: str) -> VmStatus:
        """``POST /v1/vms/{id}/start``; a failed boot returns state ``failed`` + error."""
        return await self._status("POST", f"/v1/vms/{vm_id}/start")

    async def stop_vm(
        self, vm_id: str, *, force: bool = False, timeout_s: float | None = None
    ) -> VmStatus:
        """``POST /v1/vms/{id}/stop``: ACPI power-off, then kill after ``timeout_s``."""
        params: dict[str, Any] = {"force": str(force).lower()}
        if timeout_s is not None:
            params["timeout_s"] = timeout_s
        return await self._status("POST", f"/v1/vms/{vm_id}/stop", params=params)

    async def reboot_vm(self, vm_id: str) -> VmStatus:
        """``POST /v1/vms/{id}/reboot``."""
        return await self._status("POST", f"/v1/vms/{vm_id}/reboot")

    async def pause_vm(self, vm_id: str) -> VmStatus:
        """``POST /v1/vms/{id}/pause``."""
        return await self._status("POST", f"/v1/vms/{vm_id}/pause")

    async def resume_vm(self, vm_id: str) -> VmStatus:
        """``POST /v1/vms/{id}/resume``."""
        return await self._status("POST", f"/v1/vms/{vm_id}/resume")

    async def delete_vm(self, vm_id: str) -> None:
        """``DELETE /v1/vms/{id}``: kills the VMM, removes disk, sockets and state dir."""
        await self._request("DELETE", f"/v1/vms/{vm_id}")

    async def console(self, vm_id: str, tail: int = 100) -> str:
        """``GET /v1/vms/{id}/console?tail=N``: last N lines of the serial log."""
        return (await self._request("GET", f"/v1/vms/{vm_id}/console", params={"tail": tail})).text

    # --- snapshots / restore / clone ----------------------------------------------------

    async def snapshot_vm(
        self, vm_id: str, snapshot_id: str, include_memory: bool = True
    ) -> SnapshotInfo:
        """``POST /v1/vms/{id}/snapshots`` -> ``SnapshotInfo``."""

        body = {"snapshot_id": snapshot_id, "include_memory": include_memory}
        resp = await self._request("POST", f"/v1/vms/{vm_id}/snapshots", json=body)
        return SnapshotInfo.model_validate(resp.json())

    async def restore_vm(self, vm_id: str, snapshot_id: str) -> RestoreResult:
        """``POST /v1/vms/{id}/restore`` -> ``RestoreResult`` (roll back in place)."""

        body = {"snapshot_id": snapshot_id}
        resp = await self._request("POST", f"/v1/vms/{vm_id}/restore", json=body)
        return RestoreResult.model_validate(resp.json())

    async def restore_as_new(
        self, snapshot_id: str, spec: VmSpec, start: bool = True
    ) -> RestoreResult:
        """``POST /v1/snapshots/{sid}/vms`` -> ``RestoreResult`` (a new VM ``spec.id``)."""

        body = {"spec": spec.model_dump(mode="json"), "start": start}
        resp = await self._request("POST", f"/v1/snapshots/{snapshot_id}/vms", json=body)
        return RestoreResult.model_validate(resp.json())

    async def clone_vm(self, src_id: str, spec: VmSpec) -> CloneResult:
        """``POST /v1/vms/{src}/clone`` -> ``CloneResult`` (new stopped VM ``spec.id``)."""

        body = {"spec": spec.model_dump(mode="json")}
        resp = await self._request("POST", f"/v1/vms/{src_id}/clone", json=body)
        return CloneResult.model_validate(resp.json())

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """``DELETE /v1/snapshots/{sid}``."""
        await self._request("DELETE", f"/v1/snapshots/{snapshot_id}")

    # --- guest (exec, metrics, WebSockets): the agent's guest routes --------------------------

    async def exec_vm(self, vm_id: str, req: AgentExecRequest) -> AgentExecResult:
        """``POST /v1/vms/{id}/exec``: run a command in the guest and wait for its result."""
        resp = await self._request(
            "POST",
            f"/v1/vms/{vm_id}/exec",
            json=req.model_dump(mode="json"),
            timeout=(req.timeout_s or 86400) + 60,
        )
        return AgentExecResult.model_validate(resp.json())

    async def vm_metrics(self, vm_id: str) -> VmMetrics:
        """``GET /v1/vms/{id}/metrics``: one host + guest metrics sample."""
        resp = await self._request("GET", f"/v1/vms/{vm_id}/metrics")
        return VmMetrics.model_validate(resp.json())

    async def all_vm_metrics(self) -> list[VmMetrics]:
        """``GET /v1/metrics/vms``: one sample of every running or paused VM of the host
        (:class:`AgentNotFound` from an agent older than this route)."""
        resp = await self._request("GET", "/v1/metrics/vms", timeout=30.0)
        return [VmMetrics.model_validate(d) for d in resp.json()]

    def ws_target(self, path: str) -> tuple[str, dict[str, str]]:
        """``(ws_url, headers)`` to open an agent WebSocket at ``path`` (shell, console);
        pass :meth:`ws_options` to the WebSocket client too (the certificate pin)."""
        url = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return url + path, dict(self._auth)

    def ws_options(self) -> dict[str, Any]:
        """Extra keyword arguments for ``websockets`` ``connect``: the pinned TLS context of an
        https agent (``{}`` for plain http, where ``ssl=`` is refused)."""
        return {"ssl": self.ssl_context} if self.ssl_context is not None else {}

    # --- networks, port forwards, volumes: the agent's net routes -------------------------

    async def update_network(self, network_id: str, cidr: str, nat: bool, isolated: bool) -> bool:
        """``PUT /v1/networks/{id}``: re-apply rules if the bridge exists; True if present."""
        body = {"cidr": cidr, "nat": nat, "isolated": isolated}
        resp = await self._request("PUT", f"/v1/networks/{network_id}", json=body)
        return bool(resp.json().get("present"))

    async def delete_network(self, network_id: str) -> None:
        """``DELETE /v1/networks/{id}`` (409 while taps are attached)."""
        await self._request("DELETE", f"/v1/networks/{network_id}")

    async def add_port_forward(
        self, vm_id: str, host_port: int, guest_ip: str, guest_port: int, protocol: str
    ) -> None:
        """``POST /v1/port-forwards`` (409 if the host port is taken or protected)."""
        body = {
            "vm_id": vm_id,
            "host_port": host_port,
            "guest_ip": guest_ip,
            "guest_port": guest_port,
            "protocol": protocol,
        }
        await self._request("POST", "/v1/port-forwards", json=body)

    async def remove_port_forward(self, vm_id: str, host_port: int, protocol: str) -> None:
        """``DELETE /v1/port-forwards/{protocol}/{host_port}?vm_id=``."""
        await self._request(
            "DELETE", f"/v1/port-forwards/{protocol}/{host_port}", params={"vm_id": vm_id}
        )

    async def put_volume(self, volume_id: str, size_mib: int, filesystem: str) -> None:
        """``PUT /v1/volumes/{id}``: create (sparse + mkfs) or grow the volume file."""
        body = {"size_mib": size_mib, "filesystem": filesystem}
        await self._request("PUT", f"/v1/volumes/{volume_id}", json=body)

    async def delete_volume(self, volume_id: str) -> None:
        """``DELETE /v1/volumes/{id}`` (409 while a running VM uses it)."""
        await self._request("DELETE", f"/v1/volumes/{volume_id}")


class AgentPool:
    """The manager's one set of connections to every agent: bounded httpx pools sharing one
    TLS context for all plain-http and CA-verified agents, one extra pool per pinned
    certificate (a pin is part of the TLS context, so agents pinned to the same certificate
    share it), per-agent concurrency limits and a connect timeout.

    Creating an ``httpx.AsyncClient`` costs ~17 ms of CPU and ~0.8 MB (its TLS context): at a
    thousand hosts one per host is a second of CPU and most of a gigabyte. Clients made by
    :meth:`client` are cheap views over the shared pools. The shared connections are split
    over :data:`SHARDS` pools by agent (each agent always in the same one): httpcore walks
    every connection of a pool on each request, so one pool of hundreds of connections costs
    more CPU per call than the call itself.
    """

    SHARDS = 8

    def __init__(
        self,
        *,
        max_connections: int = 256,
        max_keepalive: int = 128,
        per_host: int = 8,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.per_host = per_host
        self.timeout_s = timeout_s
        shards = 1 if transport is not None else self.SHARDS
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_keepalive
        )
        self._shard_limits = httpx.Limits(
            max_connections=max(1, max_connections // shards),
            max_keepalive_connections=max(1, max_keepalive // shards),
        )
        self._nshards = shards
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._transport = transport
        self._shards: list[httpx.AsyncClient] = []
        self._pinned: dict[str, httpx.AsyncClient] = {}

    def _pool(self, base_url: str, cert_sha256: str | None) -> httpx.AsyncClient:
        if cert_sha256 and base_url.startswith("https://"):
            pin = cert_sha256.lower()
            http = self._pinned.get(pin)
            if http is None:
                http = self._pinned[pin] = httpx.AsyncClient(
                    limits=self._limits,
                    timeout=self._timeout,
                    transport=self._transport,
                    verify=pinned_ssl_context(pin),
                )
            return http
        if not self._shards:
            tls = httpx.create_ssl_context()  # one TLS context for every shard
            self._shards = [
                httpx.AsyncClient(
                    limits=self._shard_limits,
                    timeout=self._timeout,
                    transport=self._transport,
                    verify=tls,
                )
                for _ in range(self._nshards)
            ]
        return self._shards[zlib.crc32(base_url.encode()) % self._nshards]

    def client(
        self,
        base_url: str,
        token: str,
        *,
        cert_sha256: str | None = None,
        observe: Callable[[str, float], None] | None = None,
        host_id: str | None = None,
    ) -> AgentClient:
        """A client for one agent over the shared pools (closing it closes nothing)."""
        return AgentClient(
            base_url,
            token,
            timeout=self.timeout_s,
            cert_sha256=cert_sha256,
            observe=observe,
            host_id=host_id,
            http=self._pool(base_url.rstrip("/"), cert_sha256),
            max_concurrency=self.per_host,
        )

    async def aclose(self) -> None:
        """Close every pool."""
        pools = [*self._pinned.values(), *self._shards]
        self._pinned.clear()
        self._shards = []
        for http in pools:
            await http.aclose()
