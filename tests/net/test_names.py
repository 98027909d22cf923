"""Unit tests: derived names, MACs, kernel ip= arguments, nft rule builders (no root)."""

from __future__ import annotations

import json

import pytest

from nexus.agent.net import (
    NetworkSpec,
    bridge_name,
    generate_mac,
    is_local_unicast_mac,
    kernel_ip_arg,
    resolv_conf,
    tap_name,
)
from nexus.agent.net import firewall as fw
from nexus.agent.net.models import PortForward
from nexus.agent.net.names import tap_prefix


def test_bridge_name_is_deterministic_and_short() -> None:
    a = bridge_name("net_01HZX5ABCDEF")
    assert a == bridge_name("net_01HZX5ABCDEF")
    assert a != bridge_name("net_01HZX5ABCDEG")
    assert a.startswith("nxb-") and len(a) == 12 and len(a) <= 15
    assert a.isascii() and a[4:].isalnum()
    with pytest.raises(ValueError):
        bridge_name("")


def test_tap_names() -> None:
    t0, t1 = tap_name("vm_1", 0), tap_name("vm_1", 1)
    assert t0 != t1 and t0.startswith("nxt-") and t0.startswith(tap_prefix("vm_1"))
    assert len(tap_name("vm_1", 99)) <= 15
    assert tap_name("vm_2", 0) != t0
    with pytest.raises(ValueError):
        tap_name("vm_1", 100)
    with pytest.raises(ValueError):
        tap_name("vm_1", -1)


def test_generate_mac_stable_and_local_unicast() -> None:
    m = generate_mac("vm_1", 0)
    assert m == generate_mac("vm_1", 0)
    assert m != generate_mac("vm_1", 1)
    assert is_local_unicast_mac(m)
    assert int(m[:2], 16) & 1 == 0  # unicast
    assert int(m[:2], 16) & 2 == 2  # locally administered
    # uniqueness check: a taken address is never returned
    other = generate_mac("vm_1", 0, taken={m.upper()})
    assert other != m and is_local_unicast_mac(other)
    randoms = {generate_mac() for _ in range(200)}
    assert len(randoms) == 200 and all(is_local_unicast_mac(x) for x in randoms)
    assert not is_local_unicast_mac("01:00:5e:00:00:01")
    assert not is_local_unicast_mac("nonsense")


def test_kernel_ip_arg() -> None:
    assert (
        kernel_ip_arg("10.42.0.2", 24, "10.42.0.1", "web1")
        == "ip=10.42.0.2::10.42.0.1:255.255.255.0:web1:eth0:off"
    )
    assert (
        kernel_ip_arg("10.42.0.2", 16, None, device="eth1", dns=["1.1.1.1"])
        == "ip=10.42.0.2:::255.255.0.0::eth1:off:1.1.1.1"
    )
    with pytest.raises(ValueError):
        kernel_ip_arg("10.42.0.300", 24, "10.42.0.1")
    with pytest.raises(ValueError):
        kernel_ip_arg("10.42.0.2", 24, "10.42.0.1", "a:b")
    with pytest.raises(ValueError):
        kernel_ip_arg("10.42.0.2", 24, "10.42.0.1", dns=["1.1.1.1", "8.8.8.8", "9.9.9.9"])
    assert resolv_conf(["10.0.0.1"], ["nexus"]) == "search nexus\nnameserver 10.0.0.1\n"


def test_network_spec() -> None:
    spec = NetworkSpec(id="net_1", cidr="10.42.0.0/24")
    assert str(spec.gateway) == "10.42.0.1"
    spec.validate()
    with pytest.raises(ValueError):
        NetworkSpec(id="net_1", cidr="10.42.0.0/31").validate()
    with pytest.raises(ValueError):
        NetworkSpec(id="net_1", cidr="fd00::/64").validate()
    with pytest.raises(ValueError):
        NetworkSpec(id='bad"id', cidr="10.0.0.0/24").validate()


def test_rule_builders_are_tagged_json() -> None:
    spec = NetworkSpec(id="net_1", cidr="10.42.0.0/24", nat=True, isolated=True)
    cmds = fw.network_commands("nexus", spec, bridge_name("net_1"))
    json.dumps(cmds)
    assert all(c["add"]["rule"]["comment"] == "nexus:net:net_1" for c in cmds)
    # NAT only for what comes in from this network's own bridge (not from another bridge
    # that has an overlapping subnet)
    nat = NetworkSpec(id="net_1", cidr="10.42.0.0/24", nat=True, isolated=False)
    rules = [c["add"]["rule"] for c in fw.network_commands("nexus", nat, bridge_name("net_1"))]
    masq = [r for r in rules if "!=" in json.dumps(r["expr"]) and "masquerade" in json.dumps(r)]
    assert len(masq) == 1, rules
    assert masq[0]["expr"][0] == {
        "match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": bridge_name("net_1")}
    }
    pf = PortForward("vm_1", 8022, "10.42.0.2", 22, "tcp")
    assert fw.parse_pf_comment(fw.pf_comment(pf)) == pf
    assert fw.parse_pf_comment("nexus:net:x") is None
    assert fw.parse_pf_comment("nexus:pf:vm:sctp:1:10.0.0.1:2") is None
    base = fw.base_commands("nexus", [8080, 8081])
    assert base[0] == {"add": {"table": {"family": "inet", "name": "nexus"}}}
