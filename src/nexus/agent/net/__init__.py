"""Host networking for the agent: bridges, taps, nftables rules, port forwards.

The public surface is this list; everything else is private. See docs/networking.md.

    host = HostNetwork()                      # root namespace, table ``inet nexus``
    host.ensure_network(NetworkSpec(id="net_1", cidr="10.42.0.0/24"))
    tap = host.create_tap("vm_1", 0, "net_1")  # QEMU: -netdev tap,ifname=<tap>,script=no,...
    host.add_port_forward("vm_1", 8022, "10.42.0.2", 22)
"""

from nexus.hostapi.guestboot import kernel_ip_arg, resolv_conf
from nexus.hostapi.mac import generate_mac, is_local_unicast_mac

from .host import AsyncHostNetwork, HostNetwork
from .models import (
    NameCollisionError,
    NetError,
    NetworkInUseError,
    NetworkNotFoundError,
    NetworkOverlapError,
    NetworkSpec,
    NftError,
    PortForward,
    PortForwardConflictError,
    PortForwardRefusedError,
    Protocol,
)
from .names import (
    BRIDGE_PREFIX,
    TAP_PREFIX,
    bridge_name,
    tap_name,
)

__all__ = [
    "BRIDGE_PREFIX",
    "TAP_PREFIX",
    "AsyncHostNetwork",
    "HostNetwork",
    "NameCollisionError",
    "NetError",
    "NetworkInUseError",
    "NetworkNotFoundError",
    "NetworkOverlapError",
    "NetworkSpec",
    "NftError",
    "PortForward",
    "PortForwardConflictError",
    "PortForwardRefusedError",
    "Protocol",
    "bridge_name",
    "generate_mac",
    "is_local_unicast_mac",
    "kernel_ip_arg",
    "resolv_conf",
    "tap_name",
]
