"""Hosts (``/v1/hosts``): the machines that run VMs, and join tokens for new ones."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from nexus.client._base import AsyncCollection, Resource, SyncCollection


class Host(Resource):
    """A host running ``nexus-agent``, with health, capacity and allocation."""

    id: str
    name: str
    agent_url: str
    agent_cert_sha256: str | None = None
    """SHA-256 of the https agent's certificate, pinned at registration."""
    status: Literal["healthy", "unhealthy", "draining"]
    drained: bool
    last_heartbeat_at: datetime | None = None
    driver: str
    accel: str
    accel_warning: str | None = None
    vcpus: int
    memory_mib: int
    disk_free_mib: int
    version: str
    vm_count: int = 0
    allocated_vcpus: int = 0
    allocated_memory_mib: int = 0
    created_at: datetime
    updated_at: datetime


class HostMetrics(Resource):
    """A host's latest live facts (from its last heartbeat, ``sampled_at``), its VMs by state,
    what is allocated to them and the vCPU placement limit. Live fields are None when the
    host's agent does not report them."""

    host_id: str
    name: str
    status: Literal["healthy", "unhealthy", "draining"]
    sampled_at: datetime | None = None
    vcpus: int
    memory_mib: int
    mem_available_mib: int | None = None
    disk_free_mib: int
    disk_total_mib: int | None = None
    load_avg: list[float] | None = None
    uptime_s: float | None = None
    vmm_rss_mib: int | None = None
    vm_count: int = 0
    vm_counts: dict[str, int] = {}
    allocated_vcpus: int = 0
    allocated_memory_mib: int = 0
    vcpu_overcommit: int
    vcpu_limit: int


class Leader(Resource):
    """A background loop of the manager and the replica running it."""

    loop: str
    holder: str
    expires_at: datetime
    live: bool
    this_replica: bool


class JoinToken(Resource):
    """A single-use join token (shown once)."""

    id: str
    token: str
    expires_at: datetime


class Hosts(SyncCollection[Host]):
    """``client.hosts``.

    Example:
        >>> tok = client.hosts.join_token()          # then: nexus-agent --join-token ...
        >>> [(h.name, h.status) for h in client.hosts.list()]
        >>> down = list(client.hosts.list(status="unhealthy", name="rack-7"))  # filtered
        >>> [(l.loop, l.holder) for l in client.hosts.leaders()]    # replicas' loops (admin)
        >>> client.hosts.metrics(host.id).load_avg          # [1 min, 5 min, 15 min]
    """

    path = "/v1/hosts"
    model = Host

    def join_token(self, *, expires_in_s: int = 3600) -> JoinToken:
        """Mint a join token for ``nexus-agent --join-token`` (admin)."""
        resp = self._http.request(
            "POST", f"{self.path}/join-tokens", json={"expires_in_s": expires_in_s}
        )
        return JoinToken.model_validate(resp.json())

    def metrics(self, id: str) -> HostMetrics:
        """The host's latest live facts, VMs by state and allocation (any user)."""
        return HostMetrics.model_validate(
            self._http.request("GET", f"{self._item_path(id)}/metrics").json()
        )

    def leaders(self) -> list[Leader]:
        """Which manager replica runs each background loop (admin)."""
        data = self._http.request("GET", "/v1/system/leaders").json()
        return [Leader.model_validate(d) for d in data["items"]]

    def drain(self, id: str) -> Host:
        """Stop placing new VMs on the host (admin)."""
        host: Host = self._action(id, "drain")
        return host

    def undrain(self, id: str) -> Host:
        """Place VMs on the host again (admin)."""
        host: Host = self._action(id, "undrain")
        return host


class AsyncHosts(AsyncCollection[Host]):
    """``AsyncClient.hosts`` (see :class:`Hosts`)."""

    path = "/v1/hosts"
    model = Host

    async def join_token(self, *, expires_in_s: int = 3600) -> JoinToken:
        """Mint a join token (admin)."""
        resp = await self._http.request(
            "POST", f"{self.path}/join-tokens", json={"expires_in_s": expires_in_s}
        )
        return JoinToken.model_validate(resp.json())

    async def metrics(self, id: str) -> HostMetrics:
        """The host's latest live facts, VMs by state and allocation (any user)."""
        resp = await self._http.request("GET", f"{self._item_path(id)}/metrics")
        return HostMetrics.model_validate(resp.json())

    async def leaders(self) -> list[Leader]:
        """Which manager replica runs each background loop (admin)."""
        data = (await self._http.request("GET", "/v1/system/leaders")).json()
        return [Leader.model_validate(d) for d in data["items"]]

    async def drain(self, id: str) -> Any:
        """Stop placing new VMs on the host (admin)."""
        return await self._action(id, "drain")

    async def undrain(self, id: str) -> Any:
        """Place VMs on the host again (admin)."""
        return await self._action(id, "undrain")
