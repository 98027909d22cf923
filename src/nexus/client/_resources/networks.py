"""Guest networks (``/v1/networks``): private IPv4 networks with NAT or isolation."""

from __future__ import annotations

from datetime import datetime

from nexus.client._base import AsyncCollection, Resource, SyncCollection


class Network(Resource):
    """A private IPv4 network; ``gateway`` is the CIDR's first address (the host bridge)."""

    id: str
    name: str
    description: str = ""
    cidr: str
    gateway: str
    nat: bool
    isolated: bool
    shared: bool
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime


def _create_body(
    name: str, cidr: str | None, nat: bool, isolated: bool, description: str | None
) -> dict[str, object]:
    return {
        "name": name,
        "cidr": cidr,  # None: the manager allocates one from its network pool
        "nat": nat,
        "isolated": isolated,
        "description": description,
    }


def _update_body(
    name: str | None, description: str | None, nat: bool | None, isolated: bool | None
) -> dict[str, object]:
    return {"name": name, "description": description, "nat": nat, "isolated": isolated}


class Networks(SyncCollection[Network]):
    """``client.networks``: networks you may see (your own and shared ones like ``default``).

    Example:
        >>> net = client.networks.create("lab", "10.50.0.0/24", isolated=True)
        >>> net.gateway
        '10.50.0.1'
        >>> client.networks.update(net.id, nat=False)
        >>> [n.name for n in client.networks.list()]
        ['default', 'lab']
        >>> client.networks.delete(net.id)       # 409 while VMs are attached
    """

    path = "/v1/networks"
    model = Network

    def create(
        self,
        name: str,
        cidr: str | None = None,
        *,
        nat: bool = True,
        isolated: bool = False,
        description: str | None = None,
    ) -> Network:
        """Create a network (private IPv4, /16 to /29, never overlapping another network or
        a host's own subnets: 409). Without ``cidr`` one is allocated from the admin's pool."""
        net: Network = self._create(_create_body(name, cidr, nat, isolated, description))
        return net

    def update(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        nat: bool | None = None,
        isolated: bool | None = None,
    ) -> Network:
        """Rename/describe; changing ``nat``/``isolated`` re-applies rules on every host."""
        net: Network = self._update(id, _update_body(name, description, nat, isolated))
        return net


class AsyncNetworks(AsyncCollection[Network]):
    """``AsyncClient.networks`` (see :class:`Networks`)."""

    path = "/v1/networks"
    model = Network

    async def create(
        self,
        name: str,
        cidr: str | None = None,
        *,
        nat: bool = True,
        isolated: bool = False,
        description: str | None = None,
    ) -> Network:
        """Create a network; see :meth:`Networks.create`."""
        net: Network = await self._create(_create_body(name, cidr, nat, isolated, description))
        return net

    async def update(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        nat: bool | None = None,
        isolated: bool | None = None,
    ) -> Network:
        """Rename/describe; change ``nat``/``isolated``."""
        net: Network = await self._update(id, _update_body(name, description, nat, isolated))
        return net
