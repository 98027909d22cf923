"""nftables for Nexus: one ``inet`` table, driven with ``nft -j`` (JSON) only.

Layout of the table (``inet nexus`` by default; the name is a parameter so tests can use
their own)::

    chain forward     filter/forward  prio 0    policy accept   (base rules only)
        ct state established,related accept
        jump pf_forward                     # published ports, per VM
        jump net_forward                    # per network
        iifname "nxb-*" oifname "nxb-*" drop  # no traffic between different networks
    chain input       filter/input    prio 0    policy accept
        iifname "nxb-*" ip daddr 127.0.0.0/8 ct state established,related accept
        iifname "nxb-*" ip daddr 127.0.0.0/8 drop            # route_localnet guard
        iifname "nxb-*" tcp dport { <protected host ports> } drop
    chain prerouting  nat/prerouting  prio -100
        fib daddr type local jump pf_dnat
    chain output      nat/output      prio -100
        fib daddr type local jump pf_dnat
    chain postrouting nat/postrouting prio 100
        jump net_postrouting
        oifname "nxb-*" ip saddr 127.0.0.0/8 masquerade   # localhost -> published port
    chain pf_dnat / pf_forward / net_forward / net_postrouting   (regular chains)

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
from .names import BRIDGE_PREFIX
from .nsexec import run

Json = dict[str, Any]

FAMILY = "inet"
BASE_TAG = "nexus:base"
NET_TAG = "nexus:net:"
PF_TAG = "nexus:pf:"

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
def _rule(table: str, chain: str, expr: list[Json], comment: str) -> Json:
    return {
        "add": {
            "rule": {
                "family": FAMILY,
                "table": table,
                "chain": chain,
                "expr": expr,
                "comment": comment,
            }
        }
    }


def base_commands(
    table: str,
    protected_tcp_ports: Sequence[int],
    bridge_prefix: str = BRIDGE_PREFIX,
) -> list[Json]:
    """Create the table and chains if missing and (re)write the base rules atomically."""
    wild = bridge_prefix + "*"
    cmds: list[Json] = [{"add": {"table": {"family": FAMILY, "name": table}}}]
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
    cmds += [
        _rule(
            t,
            "forward",
            [_match({"ct": {"key": "state"}}, ["established", "related"], op="in"), _ACCEPT],
            BASE_TAG,
        ),
        _rule(t, "forward", [_jump("pf_forward")], BASE_TAG),
        _rule(t, "forward", [_jump("net_forward")], BASE_TAG),
        _rule(t, "forward", [iif_br, oif_br, _DROP], BASE_TAG),
        _rule(t, "prerouting", [_FIB_LOCAL, _jump("pf_dnat")], BASE_TAG),
        _rule(t, "output", [_FIB_LOCAL, _jump("pf_dnat")], BASE_TAG),
        _rule(t, "postrouting", [_jump("net_postrouting")], BASE_TAG),
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
    established = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    cmds.append(_rule(t, "input", [iif_br, to_lo, established, _ACCEPT], BASE_TAG))
    cmds.append(_rule(t, "input", [iif_br, to_lo, _DROP], BASE_TAG))
    ports = sorted({int(p) for p in protected_tcp_ports})
    if ports:
        right: Any = ports[0] if len(ports) == 1 else {"set": ports}
        cmds.append(
            _rule(t, "input", [iif_br, _match(_payload("tcp", "dport"), right), _DROP], BASE_TAG)
        )
    return cmds


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
        cmds.append(
            _rule(
                table,
                "net_postrouting",
                [saddr, _match(_meta("oifname"), bridge, op="!="), _MASQ],
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
                    "family": FAMILY,
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
    """``nft -j`` in one namespace, restricted to one table."""

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

    def table_exists(self) -> bool:
        return self.list_table() is not None

    def list_table(self) -> list[Json] | None:
        """The table's objects (``nft -j list table``), or ``None`` if it does not exist."""
        proc = run(self.netns, ["nft", "-j", "list", "table", FAMILY, self.table])
        if proc.returncode != 0:
            if "No such file" in proc.stderr or "does not exist" in proc.stderr:
                return None
            raise NftError(f"nft list failed: {proc.stderr.strip()[:2000]}")
        data = json.loads(proc.stdout or "{}")
        return list(data.get("nftables", []))

    def rules(self) -> list[Json]:
        """All rules of the table (each with chain, handle and comment)."""
        objs = self.list_table() or []
        return [o["rule"] for o in objs if "rule" in o]

    def rules_tagged(self, prefix: str) -> list[Json]:
        """Rules whose comment equals ``prefix`` or starts with it."""
        return [r for r in self.rules() if str(r.get("comment", "")).startswith(prefix)]

    def delete_table(self) -> None:
        if self.table_exists():
            self.apply([{"delete": {"table": {"family": FAMILY, "name": self.table}}}])
