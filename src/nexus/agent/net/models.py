"""Value types and errors of the host networking library."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Protocol = Literal["tcp", "udp"]


class NetError(Exception):
    """Base class of host-networking failures (the change, if any, was rolled back)."""


class NetworkNotFoundError(NetError):
    """The network's bridge does not exist on this host."""


class NetworkInUseError(NetError):
    """The network still has interfaces attached to its bridge."""


class NetworkOverlapError(NetError):
    """The network's CIDR overlaps an address or route the host itself uses."""


class PortForwardRefusedError(NetError):
    """The host port is outside the ports this host lets forwards use."""


class NameCollisionError(NetError):
    """A derived interface name is already used by something else."""


class PortForwardConflictError(NetError):
    """The host port is taken by another forward or is a protected host port."""


class NftError(NetError):
    """``nft`` rejected a command."""


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """What a Nexus network needs on a host.

    ``cidr`` is an IPv4 network (``10.42.0.0/24``); the bridge gets its first host address
    as the guests' gateway. ``nat`` masquerades guest traffic leaving through any other
    interface. ``isolated`` drops everything from the guests except traffic between the
    network's own ports (and replies to published ports).
    """

    id: str
    cidr: str
    nat: bool = True
    isolated: bool = False
    mtu: int = 1500

    @property
    def network(self) -> ipaddress.IPv4Network:
        net = ipaddress.ip_network(self.cidr, strict=False)
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"only IPv4 networks are supported, got {self.cidr}")
        return net

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The first host address of the CIDR (the bridge's own address)."""
        return next(self.network.hosts())

    def validate(self) -> None:
        """Raise ``ValueError`` for an unusable spec."""
        if not self.id:
            raise ValueError("network id must not be empty")
        if len(self.id) > 80 or any(c in self.id for c in '"\\ \n\t'):
            raise ValueError(f"network id {self.id!r} is too long or has forbidden characters")
        net = self.network
        if net.prefixlen > 30:
            raise ValueError(f"{self.cidr}: prefix must be /30 or shorter")
        if not 68 <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu} out of range")


@dataclass(frozen=True, slots=True)
class PortForward:
    """A published port: ``host_port``/``protocol`` on every host address -> guest."""

    vm_id: str
    host_port: int
    guest_ip: str
    guest_port: int
    protocol: Protocol = "tcp"
