"""What the host itself uses: its listening sockets and its IPv4 subnets.

Port forwards must never shadow a host service (a listener on the same port and
protocol), and a Nexus network must never overlap an address or route of the host
(the bridge would steal the host's own traffic). Both are read here, inside the
namespace the agent works in; Nexus's own bridges are left out of the subnets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .names import BRIDGE_PREFIX
from .nsexec import iproute, run

#: /proc/net/tcp* state of a listening socket; /proc/net/udp* state of a bound one.
_TCP_LISTEN = "0A"
_UDP_BOUND = "07"
#: Routing tables not to report: ``local`` (host addresses, reported as addresses).
_LOCAL_TABLE = 255


def _proc_net(netns: str | None, name: str) -> str:
    path = f"/proc/net/{name}"
    if netns is None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return ""  # no IPv6 on this host
    proc = run(netns, ["cat", path])
    return proc.stdout if proc.returncode == 0 else ""


def listening_ports(netns: str | None, protocol: str) -> set[int]:
    """Ports with a host socket of ``protocol`` (tcp: listening; udp: bound), v4 and v6,
    on any local address."""
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol must be tcp or udp, got {protocol!r}")
    state = _TCP_LISTEN if protocol == "tcp" else _UDP_BOUND
    ports: set[int] = set()
    for name in (protocol, protocol + "6"):
        for line in _proc_net(netns, name).splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def host_subnets(
    netns: str | None = None, exclude_prefixes: Sequence[str] = (BRIDGE_PREFIX,)
) -> list[str]:
    """The host's IPv4 address networks, route destinations and gateways (as /32), sorted;
    links named with ``exclude_prefixes`` (Nexus's own bridges) and the default route are
    left out."""
    out: set[ipaddress.IPv4Network] = set()
    with iproute(netns) as ipr:
        names = {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}

        def ours(index: Any) -> bool:
            return names.get(index, "").startswith(tuple(exclude_prefixes))

        for a in ipr.get_addr(family=2):
            if ours(a["index"]):
                continue
            addr = _attr(a, "IFA_ADDRESS") or _attr(a, "IFA_LOCAL")
            if addr:
                out.add(ipaddress.IPv4Interface(f"{addr}/{a['prefixlen']}").network)
        for r in ipr.get_routes(family=2):
            table = _attr(r, "RTA_TABLE") or r.get("table")
            if table == _LOCAL_TABLE or ours(_attr(r, "RTA_OIF")):
                continue
            dst = _attr(r, "RTA_DST")
            if dst and r["dst_len"] > 0:
                out.add(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
            gw = _attr(r, "RTA_GATEWAY")
            if gw:
                out.add(ipaddress.IPv4Network(f"{gw}/32"))
    return [str(n) for n in sorted(out)]
