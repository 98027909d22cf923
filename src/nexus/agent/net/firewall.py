"""nftables for Nexus: one ``inet`` table, driven with ``nft -j`` (JSON) only.

Layout of the table (``inet nexus`` by default; the name is a parameter so tests can use
their own)::

    chain forward     filter/forward  prio 0    policy accept   (base rules only)
        ct state established,related accept
        jump pf_forward                     # published ports, per VM
        jump net_forward                    # per network
        iifname "nxb-*" oifname "nxb-*" drop  # no traffic between different networks
        (before the jumps) iifname "nxb-*" ip daddr { 169.254.0.0/16, <blocked> } drop
    chain input       filter/input    prio 0    policy accept
        iifname "nxb-*" ip daddr 127.0.0.0/8 ct state established,related accept
        iifname "nxb-*" ip daddr 127.0.0.0/8 drop            # route_localnet guard
        iifname "nxb-*" tcp dport { <protected host ports> } drop
        iifname "nxb-*" ct state established,related accept
        iifname "nxb-*" icmp type echo-request accept        # guests may ping their gateway
        iifname "nxb-*" tcp dport { <guest_host_tcp_ports> } accept
        iifname "nxb-*" drop                                 # default-deny guest -> host
    chain prerouting  nat/prerouting  prio -100
        fib daddr type local jump pf_dnat
    chain output      nat/output      prio -100          (only with capture_host_local)
        fib daddr type local jump pf_dnat
    chain postrouting nat/postrouting prio 100
        jump net_postrouting
        oifname "nxb-*" ip saddr 127.0.0.0/8 masquerade   (only with capture_host_local)
    chain pf_dnat / pf_forward / net_forward / net_postrouting   (regular chains)

and a ``bridge`` table of the same name for per-tap anti-spoofing (every frame a guest
sends passes it, whether bridged to another guest or routed by the host)::

    chain prerouting  filter/prerouting prio -200 policy accept
        iifname "nxt-*" jump nic_guard
        iifname "nxt-*" drop                  # anything a NIC rule did not accept
    chain nic_guard   (regular; two rules per NIC, tagged nexus:nic:<vm>:<index>)
        iifname <tap> ether saddr <mac> ip saddr <ip> accept
        iifname <tap> ether saddr <mac> arp saddr ether <mac> arp saddr ip <ip> accept

Base chains hold only the ``nexus:base`` rules and are rebuilt atomically by
:func:`base_commands`; every other rule carries a comment (``nexus:net:<id>`` or
``nexus:pf:<vm>:<proto>:<host port>:<guest ip>:<guest port>``) so it can be listed and
removed per network or per VM. Every change is one ``nft -f`` transaction: it applies
completely or not at all.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any

from .models import NetworkSpec, NftError, PortForward
from .names import BRIDGE_PREFIX, TAP_PREFIX
from .nsexec import run

Json = dict[str, Any]

FAMILY = "inet"
BRIDGE_FAMILY = "bridge"
BASE_TAG = "nexus:base"
NET_TAG = "nexus:net:"
PF_TAG = "nexus:pf:"
NIC_TAG = "nexus:nic:"
#: Always dropped from guests unless the admin allows it: the cloud metadata / link-local range.
LINK_LOCAL = "169.254.0.0/16"

FILTER_BASE = {
    "forward": ("filter", "forward", 0),
    "input": ("filter", "input", 0),
}
NAT_BASE = {
    "prerouting": ("nat", "prerouting", -100),
    "output": ("nat", "output", -100),
    "postrouting": ("nat", "postrouting", 100),
}
REGULAR = ("pf_dnat", "pf_forward", "net_forward", "net_postrouting")


# ---------------------------------------------------------------------------- expressions
def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(cidr: str) -> Json:
    net = ipaddress.ip_network(cidr, strict=False)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


_ACCEPT: Json = {"accept": None}
_DROP: Json = {"drop": None}
_MASQ: Json = {"masquerade": None}


def _jump(target: str) -> Json:
    return {"jump": {"target": target}}


_FIB_LOCAL = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
_CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", op="in")
_IPV4 = _match(_meta("nfproto"), "ipv4")


# ------------------------------------------------------------------------------- commands
def _rule(table: str, chain: str, expr: list[Json], comment: str, family: str = FAMILY) -> Json:
    return {
        "add": {
            "rule": {
                "family": family,
                "table": table,
                "chain": chain,
                "expr": expr,
                "comment": comment,
            }
        }
    }


def _set_or_one(values: Sequence[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": list(values)}


def base_commands(
    table: str,
    protected_tcp_ports: Sequence[int],
    bridge_prefix: str = BRIDGE_PREFIX,
    *,
    capture_host_local: bool = False,
    blocked_subnets: Sequence[str] = (LINK_LOCAL,),
    guest_host_tcp_ports: Sequence[int] = (),
    tap_prefix: str = TAP_PREFIX,
) -> list[Json]:
    """Create the tables and chains if missing and (re)write the base rules atomically.

    ``capture_host_local``: also DNAT connections the host itself makes to a published port
    (off by default: a forward must never shadow a service the host's own clients use).
    ``blocked_subnets``: destinations guests may never reach through the host (link-local
    metadata, management networks). ``guest_host_tcp_ports``: the only host ports a guest
    may open on the host itself (everything else from a bridge to the host is dropped).
    """
    wild = bridge_prefix + "*"
    cmds: list[Json] = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    # The nat output chain always exists (and is flushed): without capture it stays empty.
    for name, (ctype, hook, prio) in {**FILTER_BASE, **NAT_BASE}.items():
        chain: Json = {
            "family": FAMILY,
            "table": table,
            "name": name,
            "type": ctype,
            "hook": hook,
            "prio": prio,
        }
        if ctype == "filter":
            chain["policy"] = "accept"
        cmds.append({"add": {"chain": chain}})
        cmds.append({"flush": {"chain": {"family": FAMILY, "table": table, "name": name}}})
    for name in REGULAR:
        cmds.append({"add": {"chain": {"family": FAMILY, "table": table, "name": name}}})

    iif_br = _match(_meta("iifname"), wild)
    oif_br = _match(_meta("oifname"), wild)
    t = table
    established = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    cmds.append(_rule(t, "forward", [established, _ACCEPT], BASE_TAG))
    blocked = sorted({str(ipaddress.ip_network(c, strict=False)) for c in blocked_subnets})
    blocked = [c for c in blocked if ipaddress.ip_network(c).version == 4]
    if blocked:
        daddr = _match(_payload("ip", "daddr"), _set_or_one([_prefix(c) for c in blocked]))
        cmds.append(_rule(t, "forward", [iif_br, daddr, _DROP], BASE_TAG))
    cmds += [
        _rule(t, "forward", [_jump("pf_forward")], BASE_TAG),
        _rule(t, "forward", [_jump("net_forward")], BASE_TAG),
        _rule(t, "forward", [iif_br, oif_br, _DROP], BASE_TAG),
        _rule(t, "prerouting", [_FIB_LOCAL, _jump("pf_dnat")], BASE_TAG),
        _rule(t, "postrouting", [_jump("net_postrouting")], BASE_TAG),
    ]
    if capture_host_local:
        cmds += [
            _rule(t, "output", [_FIB_LOCAL, _jump("pf_dnat")], BASE_TAG),
            _rule(
                t,
                "postrouting",
                [oif_br, _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")), _MASQ],
                BASE_TAG,
            ),
        ]
    # Bridges have route_localnet=1 (for 127.0.0.1:<published port>); never let a guest
    # use that to reach services bound to the host's loopback (cf. CVE-2020-8558).
    # Replies to localhost -> published-port connections are de-masqueraded to 127.0.0.1
    # before the input hook, hence the established accept.
    to_lo = _match(_payload("ip", "daddr"), _prefix("127.0.0.0/8"))
    cmds.append(_rule(t, "input", [iif_br, to_lo, established, _ACCEPT], BASE_TAG))
    cmds.append(_rule(t, "input", [iif_br, to_lo, _DROP], BASE_TAG))
    ports = sorted({int(p) for p in protected_tcp_ports})
    if ports:
        cmds.append(
            _rule(
                t,
                "input",
                [iif_br, _match(_payload("tcp", "dport"), _set_or_one(ports)), _DROP],
                BASE_TAG,
            )
        )
    # Default-deny from guests to the host itself: replies, pings of the gateway and the
    # ports the admin lets guests use; nothing else a host process listens on.
    cmds.append(_rule(t, "input", [iif_br, established, _ACCEPT], BASE_TAG))
    echo = _match(_payload("icmp", "type"), "echo-request")
    cmds.append(_rule(t, "input", [iif_br, echo, _ACCEPT], BASE_TAG))
    open_ports = sorted({int(p) for p in guest_host_tcp_ports} - set(ports))
    if open_ports:
        dport = _match(_payload("tcp", "dport"), _set_or_one(open_ports))
        cmds.append(_rule(t, "input", [iif_br, dport, _ACCEPT], BASE_TAG))
    cmds.append(_rule(t, "input", [iif_br, _DROP], BASE_TAG))
    return cmds + bridge_commands(table, tap_prefix)


def bridge_commands(table: str, tap_prefix: str = TAP_PREFIX) -> list[Json]:
    """The ``bridge`` table: every frame from a Nexus tap must match one of its NIC rules."""
    fam = BRIDGE_FAMILY
    chain: Json = {
        "family": fam,
        "table": table,
        "name": "prerouting",
        "type": "filter",
        "hook": "prerouting",
        "prio": -200,
        "policy": "accept",
    }
    iif_tap = _match(_meta("iifname"), tap_prefix + "*")
    return [
        {"add": {"table": {"family": fam, "name": table}}},
        {"add": {"chain": chain}},
        {"flush": {"chain": {"family": fam, "table": table, "name": "prerouting"}}},
        {"add": {"chain": {"family": fam, "table": table, "name": "nic_guard"}}},
        _rule(table, "prerouting", [iif_tap, _jump("nic_guard")], BASE_TAG, fam),
        _rule(table, "prerouting", [iif_tap, _DROP], BASE_TAG, fam),
    ]


def nic_comment(vm_id: str, nic_index: int) -> str:
    return f"{NIC_TAG}{vm_id}:{nic_index}"


def nic_guard_commands(table: str, tap: str, mac: str, ip: str, comment: str) -> list[Json]:
    """Accept from ``tap`` only IPv4 and ARP whose source MAC and IP are the NIC's own."""
    fam = BRIDGE_FAMILY
    iif = _match(_meta("iifname"), tap)
    ether = _match(_payload("ether", "saddr"), mac)
    return [
        _rule(
            table,
            "nic_guard",
            [iif, ether, _match(_payload("ip", "saddr"), ip), _ACCEPT],
            comment,
            fam,
        ),
        _rule(
            table,
            "nic_guard",
            [
                iif,
                ether,
                _match(_payload("arp", "saddr ether"), mac),
                _match(_payload("arp", "saddr ip"), ip),
                _ACCEPT,
            ],
            comment,
            fam,
        ),
    ]


def network_commands(table: str, net: NetworkSpec, bridge: str) -> list[Json]:
    """Rules for one network (forwarding policy and NAT), all tagged ``nexus:net:<id>``."""
    tag = NET_TAG + net.id
    iif = _match(_meta("iifname"), bridge)
    oif = _match(_meta("oifname"), bridge)
    saddr = _match(_payload("ip", "saddr"), _prefix(net.cidr))
    cmds = [_rule(table, "net_forward", [iif, oif, _ACCEPT], tag)]
    if net.isolated:
        cmds.append(_rule(table, "net_forward", [iif, _DROP], tag))
    if net.isolated or net.nat:
        # Unsolicited traffic from elsewhere to the guests (published ports and replies
        # were accepted earlier in the forward chain).
        cmds.append(_rule(table, "net_forward", [oif, _DROP], tag))
    if net.nat and not net.isolated:
        # Only what leaves this network's bridge: another bridge with an overlapping subnet
        # (a network of another host namespace, a stale one) is never masqueraded by it.
        cmds.append(
            _rule(
                table,
                "net_postrouting",
                [iif, saddr, _match(_meta("oifname"), bridge, op="!="), _MASQ],
                tag,
            )
        )
    # Hairpin: a guest reaching a published port of a guest on the same bridge.
    cmds.append(_rule(table, "net_postrouting", [oif, saddr, _CT_DNAT, _MASQ], tag))
    return cmds


def pf_comment(pf: PortForward) -> str:
    return f"{PF_TAG}{pf.vm_id}:{pf.protocol}:{pf.host_port}:{pf.guest_ip}:{pf.guest_port}"


def parse_pf_comment(comment: str) -> PortForward | None:
    if not comment.startswith(PF_TAG):
        return None
    try:
        vm_id, proto, host_port, guest_ip, guest_port = comment[len(PF_TAG) :].rsplit(":", 4)
        if proto not in ("tcp", "udp"):
            return None
        return PortForward(vm_id, int(host_port), guest_ip, int(guest_port), proto)  # type: ignore[arg-type]
    except ValueError:
        return None


def port_forward_commands(table: str, pf: PortForward) -> list[Json]:
    """DNAT (reached from prerouting and output) plus the forward accept."""
    tag = pf_comment(pf)
    return [
        _rule(
            table,
            "pf_dnat",
            [
                _IPV4,
                _match(_payload(pf.protocol, "dport"), pf.host_port),
                {"dnat": {"family": "ip", "addr": pf.guest_ip, "port": pf.guest_port}},
            ],
            tag,
        ),
        _rule(
            table,
            "pf_forward",
            [
                _match(_payload("ip", "daddr"), pf.guest_ip),
                _match(_payload(pf.protocol, "dport"), pf.guest_port),
                _CT_DNAT,
                _ACCEPT,
            ],
            tag,
        ),
    ]


def delete_rule_commands(table: str, rules: Iterable[Json]) -> list[Json]:
    return [
        {
            "delete": {
                "rule": {
                    "family": r.get("family", FAMILY),
                    "table": table,
                    "chain": r["chain"],
                    "handle": r["handle"],
                }
            }
        }
        for r in rules
    ]


# --------------------------------------------------------------------------------- runner
class Nft:
    """``nft -j`` in one namespace, restricted to Nexus's own tables (``inet`` + ``bridge``)."""

    def __init__(self, netns: str | None, table: str) -> None:
        self.netns = netns
        self.table = table

    def apply(self, cmds: list[Json]) -> None:
        """Apply ``cmds`` as one atomic transaction."""
        if not cmds:
            return
        payload = json.dumps({"nftables": cmds})
        proc = run(self.netns, ["nft", "-j", "-f", "-"], input=payload)
        if proc.returncode != 0:
            raise NftError(f"nft failed: {proc.stderr.strip()[:2000]}")

    def table_exists(self, family: str | None = None) -> bool:
        """Whether the table exists (in ``family``; default: in either family)."""
        families = (family,) if family else (FAMILY, BRIDGE_FAMILY)
        return any(self.list_table(f) is not None for f in families)

    def list_table(self, family: str = FAMILY) -> list[Json] | None:
        """The table's objects (``nft -j list table``), or ``None`` if it does not exist."""
        proc = run(self.netns, ["nft", "-j", "list", "table", family, self.table])
        if proc.returncode != 0:
            if "No such file" in proc.stderr or "does not exist" in proc.stderr:
                return None
            raise NftError(f"nft list failed: {proc.stderr.strip()[:2000]}")
        data = json.loads(proc.stdout or "{}")
        return list(data.get("nftables", []))

    def rules(self, family: str = FAMILY) -> list[Json]:
        """All rules of the table in ``family`` (each with chain, handle and comment)."""
        objs = self.list_table(family) or []
        return [o["rule"] for o in objs if "rule" in o]

    def rules_tagged(self, prefix: str, family: str = FAMILY) -> list[Json]:
        """Rules whose comment equals ``prefix`` or starts with it."""
        return [r for r in self.rules(family) if str(r.get("comment", "")).startswith(prefix)]

    def delete_table(self) -> None:
        """Delete both Nexus tables (those that exist) in one transaction."""
        cmds = [
            {"delete": {"table": {"family": f, "name": self.table}}}
            for f in (FAMILY, BRIDGE_FAMILY)
            if self.list_table(f) is not None
        ]
        self.apply(cmds)
