"""Host networking for the agent: bridges, taps, nftables rules and port forwards.

One :class:`HostNetwork` per namespace (the agent uses the root namespace, ``netns=None``;
tests pass a throwaway ``ip netns``). Every public method is idempotent where that makes
sense, serialised by a lock, and rolls back its partial work when a step fails.
:class:`AsyncHostNetwork` wraps the same calls with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from . import firewall as fw
from .hostinfo import host_subnets, listening_ports
from .models import (
    NameCollisionError,
    NetError,
    NetworkInUseError,
    NetworkNotFoundError,
    NetworkOverlapError,
    NetworkSpec,
    PortForward,
    PortForwardConflictError,
    PortForwardRefusedError,
    Protocol,
)
from .names import (
    BRIDGE_PREFIX,
    TAP_PREFIX,
    bridge_mac,
    bridge_name,
    tap_name,
    tap_prefix,
)
from .nsexec import check_netns, iproute, read_sysctl, write_sysctl

log = structlog.get_logger("nexus.agent.net")

ALIAS_NET = "nexus:net:"
ALIAS_TAP = "nexus:tap:"
DEFAULT_TABLE = "nexus"
DEFAULT_PROTECTED_PORTS = (8080, 8081)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class _Undo:
    """A stack of compensating actions, run in reverse order on failure."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], Any]] = []

    def push(self, fn: Callable[[], Any]) -> None:
        self._steps.append(fn)

    def run(self) -> None:
        for fn in reversed(self._steps):
            try:
                fn()
            except Exception as exc:
                log.warning("net.rollback_step_failed", error=str(exc))
        self._steps.clear()


def _alias(link: Any) -> str:
    return str(link.get("ifalias") or "")


def _kind(link: Any) -> str:
    return str(link.get(("linkinfo", "kind")) or "")


class HostNetwork:
    """Nexus networking in one network namespace.

    :param netns: ``ip netns`` name to work in; ``None`` = the current namespace.
    :param table: name of the ``inet`` nftables table Nexus owns (nothing else is touched).
    :param protected_host_ports: TCP ports on the host that guests may never reach
        (the manager's and agent's APIs).
    :param manage_ip_forward: set ``net.ipv4.ip_forward=1`` when a network is ensured
        (needed for NAT and published ports; it is a namespace-wide switch).
    :param allowed_host_ports: the only host ports a forward may use (``None``: any).
    :param capture_host_local: also DNAT the host's own connections to published ports
        (off: a forward never captures traffic of host-local clients, e.g. to 127.0.0.1).
    :param blocked_subnets: destinations guests may never reach (default: link-local).
    :param guest_host_tcp_ports: host TCP ports guests may open on their gateway
        (everything else a guest sends to the host itself is dropped).
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        table: str = DEFAULT_TABLE,
        protected_host_ports: Sequence[int] = DEFAULT_PROTECTED_PORTS,
        manage_ip_forward: bool = True,
        allowed_host_ports: range | None = None,
        capture_host_local: bool = False,
        blocked_subnets: Sequence[str] = (fw.LINK_LOCAL,),
        guest_host_tcp_ports: Sequence[int] = (),
    ) -> None:
        check_netns(netns)
        if not table.replace("_", "").isalnum():
            raise ValueError(f"bad table name {table!r}")
        self.netns = netns
        self.table = table
        self.protected_host_ports = tuple(int(p) for p in protected_host_ports)
        self.manage_ip_forward = manage_ip_forward
        self.allowed_host_ports = allowed_host_ports
        self.capture_host_local = capture_host_local
        self.blocked_subnets = tuple(str(ipaddress.ip_network(c)) for c in blocked_subnets)
        self.guest_host_tcp_ports = tuple(int(p) for p in guest_host_tcp_ports)
        self.nft = fw.Nft(netns, table)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ helpers (netlink)
    def _links(self) -> list[Any]:
        with iproute(self.netns) as ipr:
            return list(ipr.get_links())

    def _link(self, ipr: Any, name: str) -> Any | None:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        return ipr.get_links(idx[0])[0]

    def _del_link(self, name: str) -> None:
        with iproute(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=name)
            if idx:
                ipr.link("del", index=idx[0])

    def _addr(self, name: str, op: str, address: str, prefixlen: int) -> None:
        with iproute(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=name)
            if idx:
                ipr.addr(op, index=idx[0], address=address, prefixlen=prefixlen)

    def _ensure_base(self) -> None:
        self.nft.apply(
            fw.base_commands(
                self.table,
                self.protected_host_ports,
                BRIDGE_PREFIX,
                capture_host_local=self.capture_host_local,
                blocked_subnets=self.blocked_subnets,
                guest_host_tcp_ports=self.guest_host_tcp_ports,
                tap_prefix=TAP_PREFIX,
            )
        )

    def host_subnets(self) -> list[str]:
        """The host's own IPv4 subnets, routes and gateways (Nexus bridges excluded)."""
        return host_subnets(self.netns)

    def _check_overlap(self, net: NetworkSpec) -> None:
        for cidr in self.host_subnets():
            other = ipaddress.IPv4Network(cidr)
            if other.prefixlen and net.network.overlaps(other):
                raise NetworkOverlapError(
                    f"{net.cidr} overlaps {cidr}, an address or route of this host"
                )

    # ------------------------------------------------------------------------- networks
    def ensure_network(self, net: NetworkSpec) -> str:
        """Create or repair the bridge and rules of ``net``; return the bridge name.

        Idempotent: calling it again with a changed spec (nat, isolated, cidr, mtu) brings
        the bridge and its rules in line. On failure nothing new is left behind.
        """
        net.validate()
        br = bridge_name(net.id)
        gw = str(net.gateway)
        plen = net.network.prefixlen
        with self._lock:
            self._check_overlap(net)
            undo = _Undo()
            try:
                with iproute(self.netns) as ipr:
                    link = self._link(ipr, br)
                    if link is not None and _alias(link) != ALIAS_NET + net.id:
                        raise NameCollisionError(
                            f"{br} exists but is not the bridge of {net.id} ({_alias(link)!r})"
                        )
                    if link is None:
                        ipr.link(
                            "add",
                            ifname=br,
                            kind="bridge",
                            address=bridge_mac(net.id),
                            br_stp_state=0,
                            br_forward_delay=0,
                        )
                        undo.push(lambda: self._del_link(br))
                    idx = ipr.link_lookup(ifname=br)[0]
                    ipr.link("set", index=idx, ifalias=ALIAS_NET + net.id, mtu=net.mtu)
                    present = {
                        (a.get("IFA_ADDRESS"), a["prefixlen"])
                        for a in ipr.get_addr(index=idx, family=2)
                    }
                    for addr, p in present - {(gw, plen)}:
                        ipr.addr("del", index=idx, address=addr, prefixlen=p)
                        undo.push(functools.partial(self._addr, br, "add", addr, p))
                    if (gw, plen) not in present:
                        ipr.addr("add", index=idx, address=gw, prefixlen=plen)
                        undo.push(lambda: self._addr(br, "del", gw, plen))
                    ipr.link("set", index=idx, state="up")
                # Lets a client on the host use 127.0.0.1:<published port> (only when
                # host-local traffic is captured at all).
                localnet = "1" if self.capture_host_local else "0"
                write_sysctl(self.netns, f"net/ipv4/conf/{br}/route_localnet", localnet)
                if self.manage_ip_forward and read_sysctl(self.netns, "net/ipv4/ip_forward") != "1":
                    write_sysctl(self.netns, "net/ipv4/ip_forward", "1")
                self._ensure_base()
                old = [r for r in self.nft.rules() if r.get("comment") == fw.NET_TAG + net.id]
                self.nft.apply(
                    fw.delete_rule_commands(self.table, old)
                    + fw.network_commands(self.table, net, br)
                )
            except BaseException:
                undo.run()
                raise
        log.info("net.network_ensured", network_id=net.id, bridge=br, cidr=net.cidr)
        return br

    def delete_network(self, network_id: str, *, force: bool = False) -> None:
        """Remove the bridge and rules of ``network_id`` (a no-op if already gone).

        Refuses while interfaces are attached unless ``force`` (then they are detached;
        Nexus taps themselves are deleted with their VM).
        """
        br = bridge_name(network_id)
        with self._lock:
            with iproute(self.netns) as ipr:
                link = self._link(ipr, br)
                if link is not None:
                    if _alias(link) != ALIAS_NET + network_id:
                        raise NameCollisionError(f"{br} is not the bridge of {network_id}")
                    ports = [
                        p.get("ifname") for p in ipr.get_links() if p.get("master") == link["index"]
                    ]
                    if ports and not force:
                        raise NetworkInUseError(f"{network_id}: still attached: {ports}")
            if self.nft.table_exists():
                old = [r for r in self.nft.rules() if r.get("comment") == fw.NET_TAG + network_id]
                self.nft.apply(fw.delete_rule_commands(self.table, old))
            self._del_link(br)
        log.info("net.network_deleted", network_id=network_id, bridge=br)

    def network_exists(self, network_id: str) -> bool:
        with iproute(self.netns) as ipr:
            return self._link(ipr, bridge_name(network_id)) is not None

    # ----------------------------------------------------------------------------- taps
    def create_tap(
        self,
        vm_id: str,
        nic_index: int,
        network_id: str,
        *,
        uid: int | None = None,
        gid: int | None = None,
        mac: str | None = None,
        ip: str | None = None,
    ) -> str:
        """Create (or repair) the tap of NIC ``nic_index`` of ``vm_id`` on ``network_id``.

        The tap is persistent, has no packet-info header, is enslaved to the network's
        bridge with the bridge's MTU and is up. Returns the tap name. ``uid``/``gid`` let
        an unprivileged VMM open it. ``mac``/``ip`` are the NIC's own addresses: only
        frames with that source MAC and IPv4/ARP source address leave the tap (see
        :meth:`guard_nic`); a tap created without them passes nothing.
        """
        tap = tap_name(vm_id, nic_index)
        br = bridge_name(network_id)
        alias = f"{ALIAS_TAP}{vm_id}:{nic_index}"
        with self._lock:
            undo = _Undo()
            try:
                with iproute(self.netns) as ipr:
                    bridge = self._link(ipr, br)
                    if bridge is None:
                        raise NetworkNotFoundError(f"network {network_id} has no bridge ({br})")
                    link = self._link(ipr, tap)
                    if link is not None and _alias(link) != alias:
                        raise NameCollisionError(f"{tap} exists and belongs to {_alias(link)!r}")
                    if link is None:
                        kw: dict[str, Any] = {
                            "ifname": tap,
                            "kind": "tuntap",
                            "mode": "tap",
                            "ifr": {
                                "no_pi": True,
                                "one_queue": False,
                                "vnet_hdr": True,
                                "multi_queue": False,
                            },
                        }
                        if uid is not None:
                            kw["uid"] = uid
                        if gid is not None:
                            kw["gid"] = gid
                        ipr.link("add", **kw)
                        undo.push(lambda: self._del_link(tap))
                    idx = ipr.link_lookup(ifname=tap)[0]
                    ipr.link(
                        "set",
                        index=idx,
                        ifalias=alias,
                        mtu=bridge.get("mtu"),
                        master=bridge["index"],
                    )
                    ipr.link("set", index=idx, state="up")
                if mac is not None and ip is not None:
                    self.guard_nic(vm_id, nic_index, mac, ip)
            except BaseException:
                undo.run()
                raise
        log.info("net.tap_created", vm_id=vm_id, nic_index=nic_index, tap=tap, bridge=br)
        return tap

    def guard_nic(self, vm_id: str, nic_index: int, mac: str, ip: str) -> None:
        """(Re)write the anti-spoofing rules of one NIC: frames from its tap must carry
        ``mac`` as source MAC and ``ip`` as IPv4 or ARP sender address; all else from a
        Nexus tap (other addresses, IPv6, other ether types) is dropped."""
        mac = mac.lower()
        if not _MAC_RE.match(mac):
            raise ValueError(f"bad MAC address {mac!r}")
        addr = str(ipaddress.IPv4Address(ip))
        tag = fw.nic_comment(vm_id, nic_index)
        with self._lock:
            self._ensure_base()
            old = [r for r in self.nft.rules(fw.BRIDGE_FAMILY) if r.get("comment") == tag]
            self.nft.apply(
                fw.delete_rule_commands(self.table, old)
                + fw.nic_guard_commands(self.table, tap_name(vm_id, nic_index), mac, addr, tag)
            )

    def _unguard(self, vm_id: str, nic_index: int | None = None) -> None:
        tag = fw.nic_comment(vm_id, nic_index) if nic_index is not None else f"{fw.NIC_TAG}{vm_id}:"
        if self.nft.list_table(fw.BRIDGE_FAMILY) is None:
            return
        rules = [
            r
            for r in self.nft.rules(fw.BRIDGE_FAMILY)
            if (
                r.get("comment") == tag
                if nic_index is not None
                else str(r.get("comment", "")).startswith(tag)
            )
        ]
        self.nft.apply(fw.delete_rule_commands(self.table, rules))

    def delete_tap(self, vm_id: str, nic_index: int) -> None:
        """Delete one tap (a no-op if it is gone)."""
        with self._lock:
            self._del_link(tap_name(vm_id, nic_index))
            self._unguard(vm_id, nic_index)

    def vm_taps(self, vm_id: str) -> list[str]:
        """Names of the taps of ``vm_id`` present on this host."""
        pre = tap_prefix(vm_id)
        alias_pre = f"{ALIAS_TAP}{vm_id}:"
        return sorted(
            str(link.get("ifname"))
            for link in self._links()
            if str(link.get("ifname")).startswith(pre) and _alias(link).startswith(alias_pre)
        )

    def delete_vm_taps(self, vm_id: str) -> list[str]:
        """Delete every tap of ``vm_id``; return the names deleted."""
        with self._lock:
            names = self.vm_taps(vm_id)
            for name in names:
                self._del_link(name)
            self._unguard(vm_id)
        return names

    # ---------------------------------------------------------------------- port forwards
    def list_port_forwards(self, vm_id: str | None = None) -> list[PortForward]:
        """Published ports present in nftables (optionally only those of ``vm_id``)."""
        seen: dict[str, PortForward] = {}
        for r in self.nft.rules():
            if r.get("chain") != "pf_dnat":
                continue
            pf = fw.parse_pf_comment(str(r.get("comment", "")))
            if pf is not None and (vm_id is None or pf.vm_id == vm_id):
                seen[fw.pf_comment(pf)] = pf
        return sorted(seen.values(), key=lambda p: (p.protocol, p.host_port))

    def add_port_forward(
        self,
        vm_id: str,
        host_port: int,
        guest_ip: str,
        guest_port: int,
        protocol: Protocol = "tcp",
    ) -> PortForward:
        """Publish ``guest_ip:guest_port`` on ``host_port`` of every host address.

        Works for connections arriving from outside and from guests (prerouting DNAT);
        connections the host itself makes are captured only with ``capture_host_local``.
        Idempotent for the same forward; raises :class:`PortForwardRefusedError` for a
        port outside ``allowed_host_ports`` and :class:`PortForwardConflictError` if the
        port is taken by another forward, is protected, or has a host listener.
        """
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, got {protocol!r}")
        for p in (host_port, guest_port):
            if not 1 <= int(p) <= 65535:
                raise ValueError(f"port {p} out of range")
        ip = str(ipaddress.IPv4Address(guest_ip))
        if ":" in vm_id or not vm_id:
            raise ValueError(f"bad vm id {vm_id!r}")
        pf = PortForward(vm_id, int(host_port), ip, int(guest_port), protocol)
        allowed = self.allowed_host_ports
        if allowed is not None and pf.host_port not in allowed:
            raise PortForwardRefusedError(
                f"host port {host_port} is outside this host's forward range "
                f"{allowed.start}-{allowed.stop - 1}"
            )
        if protocol == "tcp" and pf.host_port in self.protected_host_ports:
            raise PortForwardConflictError(f"host port {host_port}/tcp is protected")
        with self._lock:
            self._ensure_base()
            for other in self.list_port_forwards():
                if (other.protocol, other.host_port) == (protocol, pf.host_port):
                    if other == pf:
                        return pf
                    raise PortForwardConflictError(
                        f"host port {host_port}/{protocol} already forwarded to "
                        f"{other.guest_ip}:{other.guest_port} (vm {other.vm_id})"
                    )
            if pf.host_port in listening_ports(self.netns, protocol):
                raise PortForwardConflictError(
                    f"host port {host_port}/{protocol} is in use by a service on the host"
                )
            self.nft.apply(fw.port_forward_commands(self.table, pf))
        log.info("net.port_forward_added", vm_id=vm_id, host_port=host_port, guest_ip=ip)
        return pf

    def _pf_rules(self, pred: Callable[[PortForward], bool]) -> list[dict[str, Any]]:
        out = []
        for r in self.nft.rules():
            pf = fw.parse_pf_comment(str(r.get("comment", "")))
            if pf is not None and pred(pf):
                out.append(r)
        return out

    def remove_port_forward(self, vm_id: str, host_port: int, protocol: Protocol = "tcp") -> bool:
        """Remove one forward of ``vm_id``; return whether it existed."""
        with self._lock:
            if not self.nft.table_exists():
                return False
            rules = self._pf_rules(
                lambda p: (p.vm_id, p.host_port, p.protocol) == (vm_id, int(host_port), protocol)
            )
            self.nft.apply(fw.delete_rule_commands(self.table, rules))
        return bool(rules)

    def remove_vm_port_forwards(self, vm_id: str) -> int:
        """Remove every forward of ``vm_id``; return how many were removed."""
        with self._lock:
            if not self.nft.table_exists():
                return 0
            n = len(self.list_port_forwards(vm_id))
            self.nft.apply(
                fw.delete_rule_commands(self.table, self._pf_rules(lambda p: p.vm_id == vm_id))
            )
        return n

    # ---------------------------------------------------------------------- whole host
    def _nexus_links(self) -> list[Any]:
        return [
            link
            for link in self._links()
            if str(link.get("ifname")).startswith((BRIDGE_PREFIX, TAP_PREFIX))
            or _alias(link).startswith((ALIAS_NET, ALIAS_TAP))
        ]

    def leftovers(self) -> list[str]:
        """Every Nexus link and the Nexus table still present (empty after cleanup_all)."""
        out = [
            f"link {link.get('ifname')} ({_kind(link) or '?'}, {_alias(link)})"
            for link in self._nexus_links()
        ]
        if self.nft.table_exists():
            counts = ", ".join(
                f"{f}: {len(self.nft.rules(f))} rules"
                for f in (fw.FAMILY, fw.BRIDGE_FAMILY)
                if self.nft.list_table(f) is not None
            )
            out.append(f"nft table {self.table} ({counts})")
        return out

    def cleanup_all(self) -> None:
        """Remove every Nexus tap and bridge and the Nexus table (uninstall, tests)."""
        with self._lock:
            errors: list[str] = []
            links = sorted(self._nexus_links(), key=lambda lk: _kind(lk) == "bridge")
            for link in links:  # taps first, then bridges
                try:
                    self._del_link(str(link.get("ifname")))
                except NetlinkError as exc:
                    errors.append(f"{link.get('ifname')}: {exc}")
            try:
                self.nft.delete_table()
            except NetError as exc:
                errors.append(str(exc))
            if errors:
                raise NetError("cleanup incomplete: " + "; ".join(errors))


class AsyncHostNetwork:
    """The same API as :class:`HostNetwork`, each call run in a worker thread."""

    def __init__(self, host: HostNetwork) -> None:
        self.host = host

    async def ensure_network(self, net: NetworkSpec) -> str:
        return await asyncio.to_thread(self.host.ensure_network, net)

    async def delete_network(self, network_id: str, *, force: bool = False) -> None:
        await asyncio.to_thread(self.host.delete_network, network_id, force=force)

    async def create_tap(self, vm_id: str, nic_index: int, network_id: str, **kw: Any) -> str:
        return await asyncio.to_thread(self.host.create_tap, vm_id, nic_index, network_id, **kw)

    async def delete_tap(self, vm_id: str, nic_index: int) -> None:
        await asyncio.to_thread(self.host.delete_tap, vm_id, nic_index)

    async def delete_vm_taps(self, vm_id: str) -> list[str]:
        return await asyncio.to_thread(self.host.delete_vm_taps, vm_id)

    async def add_port_forward(
        self,
        vm_id: str,
        host_port: int,
        guest_ip: str,
        guest_port: int,
        protocol: Protocol = "tcp",
    ) -> PortForward:
        return await asyncio.to_thread(
            self.host.add_port_forward, vm_id, host_port, guest_ip, guest_port, protocol
        )

    async def remove_port_forward(
        self, vm_id: str, host_port: int, protocol: Protocol = "tcp"
    ) -> bool:
        return await asyncio.to_thread(self.host.remove_port_forward, vm_id, host_port, protocol)

    async def remove_vm_port_forwards(self, vm_id: str) -> int:
        return await asyncio.to_thread(self.host.remove_vm_port_forwards, vm_id)

    async def list_port_forwards(self, vm_id: str | None = None) -> list[PortForward]:
        return await asyncio.to_thread(self.host.list_port_forwards, vm_id)

    async def cleanup_all(self) -> None:
        await asyncio.to_thread(self.host.cleanup_all)

    async def host_subnets(self) -> list[str]:
        return await asyncio.to_thread(self.host.host_subnets)

    async def leftovers(self) -> list[str]:
        return await asyncio.to_thread(self.host.leftovers)
