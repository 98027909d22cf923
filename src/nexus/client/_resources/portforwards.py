"""Port forwards (``/v1/vms/{id}/port-forwards``): guest ports published on the VM's host."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from nexus.client._base import AsyncPager, Resource, SyncPager, async_listing, sync_listing

if TYPE_CHECKING:
    from nexus.client._http import AsyncHttp, SyncHttp

Protocol = Literal["tcp", "udp"]


class PortForward(Resource):
    """``host_port`` on every address of the VM's host → ``guest_ip:guest_port``."""

    id: str
    vm_id: str
    host_id: str
    host_port: int
    guest_ip: str
    guest_port: int
    protocol: str
    created_by_user_id: str
    created_at: datetime


def _path(vm_id: str) -> str:
    return f"/v1/vms/{vm_id}/port-forwards"


def _create_body(guest_port: int, host_port: int | None, protocol: str) -> dict[str, Any]:
    body: dict[str, Any] = {"guest_port": guest_port, "protocol": protocol}
    if host_port is not None:
        body["host_port"] = host_port
    return body


class PortForwards:
    """``client.port_forwards``: a VM's published ports (they are removed with the VM).

    Example:
        >>> pf = client.port_forwards.create(vm.id, 22)              # host port picked
        >>> print(pf.host_port, "->", pf.guest_ip, pf.guest_port)
        >>> client.port_forwards.create(vm.id, 53, host_port=20053, protocol="udp")
        >>> [p.host_port for p in client.port_forwards.list(vm.id)]
        >>> client.port_forwards.delete(vm.id, pf.id)
    """

    def __init__(self, http: SyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    def create(
        self,
        vm_id: str,
        guest_port: int,
        host_port: int | None = None,
        protocol: Protocol = "tcp",
    ) -> PortForward:
        """Publish ``guest_port`` of the VM's first NIC (``host_port`` omitted: picked from
        the ``port_forward_range`` setting; 409 when taken)."""
        body = _create_body(guest_port, host_port, protocol)
        return PortForward.model_validate(
            self._http.request("POST", _path(vm_id), json=body).json()
        )

    def list(self, vm_id: str, *, limit: int | None = None) -> SyncPager[PortForward]:
        """The VM's published ports (every page, or at most ``limit``)."""
        return sync_listing(self._http, _path(vm_id), PortForward, limit=limit)

    def delete(self, vm_id: str, pf_id: str) -> None:
        """Unpublish a port."""
        self._http.request("DELETE", f"{_path(vm_id)}/{pf_id}")


class AsyncPortForwards:
    """``AsyncClient.port_forwards`` (see :class:`PortForwards`)."""

    def __init__(self, http: AsyncHttp, client: Any) -> None:
        self._http = http
        self._client = client

    async def create(
        self,
        vm_id: str,
        guest_port: int,
        host_port: int | None = None,
        protocol: Protocol = "tcp",
    ) -> PortForward:
        """Publish a guest port; see :meth:`PortForwards.create`."""
        body = _create_body(guest_port, host_port, protocol)
        resp = await self._http.request("POST", _path(vm_id), json=body)
        return PortForward.model_validate(resp.json())

    def list(self, vm_id: str, *, limit: int | None = None) -> AsyncPager[PortForward]:
        """The VM's published ports (``async for``)."""
        return async_listing(self._http, _path(vm_id), PortForward, limit=limit)

    async def delete(self, vm_id: str, pf_id: str) -> None:
        """Unpublish a port."""
        await self._http.request("DELETE", f"{_path(vm_id)}/{pf_id}")
