"""Inside a VM's guest: exec, metrics, WebSocket targets (shell, console, metrics streams).

These methods are mixed into ``client.vms`` / ``AsyncClient.vms``::

    res = client.vms.exec(vm.id, ["uname", "-a"])
    print(res.exit_code, res.stdout)
    sample = client.vms.metrics(vm.id)
    url, headers = client.vms.ws_target(vm.id, "shell")   # for a WebSocket client
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal

from nexus.client._base import Resource
from nexus.client._http import AsyncHttp, SyncHttp

WsPurpose = Literal["shell", "console", "metrics"]


class ExecResult(Resource):
    """The outcome of :meth:`Vms.exec`. ``stdout``/``stderr`` are text; :attr:`stdout_bytes`
    and :attr:`stderr_bytes` are the exact bytes."""

    exit_code: int
    stdout: str
    stderr: str
    stdout_base64: str
    stderr_base64: str
    duration_ms: int
    timed_out: bool
    truncated: bool
    signal: int | None = None

    @property
    def stdout_bytes(self) -> bytes:
        return base64.b64decode(self.stdout_base64)

    @property
    def stderr_bytes(self) -> bytes:
        return base64.b64decode(self.stderr_base64)

    @property
    def ok(self) -> bool:
        """Exited 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out


class MetricSample(Resource):
    """One VM metrics sample (host side + guest side; ``None`` where unknown)."""

    vm_id: str
    sampled_at: datetime
    cpu_percent: float | None = None
    cpu_time_s: float | None = None
    rss_bytes: int | None = None
    disk_allocated_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    load1: float | None = None
    mem_total_bytes: int | None = None
    mem_used_bytes: int | None = None
    mem_available_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_used_bytes: int | None = None


class MetricsHistory(Resource):
    """Samples since ``since`` averaged per ``step_s``."""

    vm_id: str
    since: datetime
    step_s: int
    points: list[MetricSample]


class WsTicket(Resource):
    """A single-use WebSocket ticket (``?ticket=``) for clients that cannot send headers."""

    ticket: str
    purpose: WsPurpose
    vm_id: str
    expires_at: datetime
    ws_path: str


def _exec_body(
    command: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdin: str | bytes | None,
    timeout_s: float,
    max_output_bytes: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"command": list(command), "timeout_s": timeout_s}
    if env:
        body["env"] = dict(env)
    if cwd:
        body["cwd"] = cwd
    if isinstance(stdin, bytes):
        body["stdin_base64"] = base64.b64encode(stdin).decode()
    elif stdin is not None:
        body["stdin"] = stdin
    if max_output_bytes is not None:
        body["max_output_bytes"] = max_output_bytes
    return body


def _ws_base(url: str) -> str:
    return url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)


class SyncGuestOps:
    """Guest methods of ``client.vms`` (blocking)."""

    path: ClassVar[str]
    _http: SyncHttp

    def exec(
        self,
        id: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_s: float = 60,
        max_output_bytes: int | None = None,
    ) -> ExecResult:
        """Run ``command`` (an argv list) in the guest and wait for it."""
        body = _exec_body(command, env, cwd, stdin, timeout_s, max_output_bytes)
        resp = self._http.request(
            "POST", f"{self.path}/{id}/exec", json=body, timeout=timeout_s + 60
        )
        return ExecResult.model_validate(resp.json())

    def metrics(self, id: str) -> MetricSample:
        """The newest metrics sample."""
        return MetricSample.model_validate(
            self._http.request("GET", f"{self.path}/{id}/metrics").json()
        )

    def metrics_history(
        self, id: str, *, since: datetime | None = None, step: int = 60
    ) -> MetricsHistory:
        """Stored samples since ``since`` (default: an hour ago), averaged per ``step`` s."""
        params: dict[str, Any] = {"step": step}
        if since is not None:
            params["since"] = since.isoformat()
        resp = self._http.request("GET", f"{self.path}/{id}/metrics/history", params=params)
        return MetricsHistory.model_validate(resp.json())

    def ws_ticket(self, id: str, purpose: WsPurpose = "shell") -> WsTicket:
        """A single-use ticket for ``purpose``'s WebSocket (browsers)."""
        resp = self._http.request(
            "POST", f"{self.path}/{id}/shell/ticket", json={"purpose": purpose}
        )
        return WsTicket.model_validate(resp.json())

    def ws_target(self, id: str, purpose: WsPurpose = "shell") -> tuple[str, dict[str, str]]:
        """``(ws_url, headers)`` for the VM's ``shell``, ``console`` or ``metrics`` WebSocket,
        authenticated with this client's bearer token."""
        token = self._http.creds.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return f"{_ws_base(self._http.url)}{self.path}/{id}/{purpose}/ws", headers


class AsyncGuestOps:
    """Guest methods of ``AsyncClient.vms``."""

    path: ClassVar[str]
    _http: AsyncHttp

    async def exec(
        self,
        id: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_s: float = 60,
        max_output_bytes: int | None = None,
    ) -> ExecResult:
        """Run ``command`` (an argv list) in the guest and wait for it."""
        body = _exec_body(command, env, cwd, stdin, timeout_s, max_output_bytes)
        resp = await self._http.request(
            "POST", f"{self.path}/{id}/exec", json=body, timeout=timeout_s + 60
        )
        return ExecResult.model_validate(resp.json())

    async def metrics(self, id: str) -> MetricSample:
        """The newest metrics sample."""
        resp = await self._http.request("GET", f"{self.path}/{id}/metrics")
        return MetricSample.model_validate(resp.json())

    async def metrics_history(
        self, id: str, *, since: datetime | None = None, step: int = 60
    ) -> MetricsHistory:
        """Stored samples since ``since`` (default: an hour ago), averaged per ``step`` s."""
        params: dict[str, Any] = {"step": step}
        if since is not None:
            params["since"] = since.isoformat()
        resp = await self._http.request("GET", f"{self.path}/{id}/metrics/history", params=params)
        return MetricsHistory.model_validate(resp.json())

    async def ws_ticket(self, id: str, purpose: WsPurpose = "shell") -> WsTicket:
        """A single-use ticket for ``purpose``'s WebSocket (browsers)."""
        resp = await self._http.request(
            "POST", f"{self.path}/{id}/shell/ticket", json={"purpose": purpose}
        )
        return WsTicket.model_validate(resp.json())

    def ws_target(self, id: str, purpose: WsPurpose = "shell") -> tuple[str, dict[str, str]]:
        """``(ws_url, headers)`` for the VM's ``shell``, ``console`` or ``metrics`` WebSocket."""
        token = self._http.creds.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return f"{_ws_base(self._http.url)}{self.path}/{id}/{purpose}/ws", headers
