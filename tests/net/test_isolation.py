"""Tenant isolation on the host (issue 11, findings 5-7), with real netlink + nftables in
throwaway namespaces: port forwards never shadow host services or capture host-local
traffic, guests cannot spoof addresses, reach host ports, link-local or management
subnets, and a network may not overlap the host's own subnets."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from nexus.agent.net import (
    HostNetwork,
    NetworkOverlapError,
    NetworkSpec,
    PortForwardConflictError,
    PortForwardRefusedError,
    bridge_name,
    tap_name,
)

from .conftest import TEST_TABLE, Lab, _run, http_get, ns_run, ping

pytestmark = [pytest.mark.net, pytest.mark.timeout(120)]

NET_A = NetworkSpec(id="net_a", cidr="10.61.0.0/24")


def _host(lab: Lab, **kw: object) -> HostNetwork:
    return HostNetwork(lab.host, table=TEST_TABLE, protected_host_ports=(8080, 8081), **kw)  # type: ignore[arg-type]


@pytest.fixture
def cap(lab: Lab) -> Iterator[HostNetwork]:
    """A host network that captures host-local traffic (the admin setting on)."""
    h = _host(lab, capture_host_local=True)
    try:
        yield h
    finally:
        h.cleanup_all()


def _tap_guest(lab: Lab, vm_id: str, bridge: str, mac: str, ip: str) -> str:
    """A guest namespace behind a veth whose host end has the name of ``vm_id``'s tap 0
    (so the Nexus tap rules apply to it), with ``eth0`` = ``mac``/``ip``."""
    g = lab.add_ns("g")
    port = tap_name(vm_id, 0)
    _run("ip", "-n", lab.host, "link", "add", port, "type", "veth", "peer", "name", "eth0")
    _run("ip", "-n", lab.host, "link", "set", "eth0", "netns", g)
    _run("ip", "-n", lab.host, "link", "set", port, "master", bridge, "up")
    _run("ip", "-n", g, "link", "set", "eth0", "address", mac)
    _run("ip", "-n", g, "addr", "add", f"{ip}/24", "dev", "eth0")
    _run("ip", "-n", g, "link", "set", "eth0", "up")
    _run("ip", "-n", g, "route", "add", "default", "via", "10.61.0.1")
    return g


def _udp_bound(lab: Lab, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0', {port})); print('up', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen(
        ["ip", "netns", "exec", lab.host, "python3", "-c", code], stdout=subprocess.PIPE
    )
    lab.procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == b"up"
    return p


# --- port forwards -------------------------------------------------------------------------


def test_forward_refused_on_a_port_with_a_host_listener(lab: Lab, hn: HostNetwork) -> None:
    outside = lab.add_outside()
    guest = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    lab.http_server(guest, 8000, "guest")
    lab.http_server(lab.host, 20022, "host-sshd", bind="127.0.0.1")
    lab.http_server(lab.host, 20080, "host-web")
    for port in (20022, 20080):
        with pytest.raises(PortForwardConflictError, match="in use by a service on the host"):
            hn.add_port_forward("vm_x", port, "10.61.0.2", 8000)
    _udp_bound(lab, 20053)
    with pytest.raises(PortForwardConflictError, match="service on the host"):
        hn.add_port_forward("vm_x", 20053, "10.61.0.2", 53, "udp")
    assert hn.list_port_forwards() == []
    # nothing was hijacked: the host's services still answer, locally and from outside
    assert http_get(lab.host, "http://127.0.0.1:20022/index.txt") == "host-sshd"
    assert http_get(outside, "http://192.0.2.1:20080/index.txt") == "host-web"
    # a TCP listener does not block the same UDP port (and vice versa)
    hn.add_port_forward("vm_x", 20080, "10.61.0.2", 8000, "udp")


def test_forward_does_not_capture_host_local_traffic(lab: Lab, hn: HostNetwork) -> None:
    outside = lab.add_outside()
    guest = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    lab.http_server(guest, 8000, "guest")
    hn.add_port_forward("vm_x", 20090, "10.61.0.2", 8000)
    assert http_get(outside, "http://192.0.2.1:20090/index.txt") == "guest"
    # the host's own clients are not redirected to the guest...
    assert http_get(lab.host, "http://127.0.0.1:20090/index.txt", 1) is None
    assert http_get(lab.host, "http://192.0.2.1:20090/index.txt", 1) is None
    # ...so a host service that binds the port later keeps its local clients
    lab.http_server(lab.host, 20090, "host-service", bind="127.0.0.1")
    assert http_get(lab.host, "http://127.0.0.1:20090/index.txt") == "host-service"
    sysctl = f"net/ipv4/conf/{bridge_name('net_a')}/route_localnet"
    assert ns_run(lab.host, "cat", f"/proc/sys/{sysctl}").stdout.strip() == "0"


def test_host_local_capture_only_when_enabled(lab: Lab, cap: HostNetwork) -> None:
    guest = lab.add_guest(cap.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    lab.http_server(guest, 8000, "guest")
    cap.add_port_forward("vm_x", 20091, "10.61.0.2", 8000)
    assert http_get(lab.host, "http://127.0.0.1:20091/index.txt") == "guest"
    assert http_get(lab.host, "http://192.0.2.1:20091/index.txt", 1) is None  # no uplink here


def test_forward_outside_allowed_range_refused(lab: Lab) -> None:
    h = _host(lab, allowed_host_ports=range(20000, 30000))
    try:
        h.ensure_network(NET_A)
        for port, proto in ((22, "tcp"), (5432, "tcp"), (53, "udp"), (30000, "tcp")):
            with pytest.raises(PortForwardRefusedError, match="20000-29999"):
                h.add_port_forward("vm_x", port, "10.61.0.2", 80, proto)  # type: ignore[arg-type]
        assert h.add_port_forward("vm_x", 29999, "10.61.0.2", 80).host_port == 29999
    finally:
        h.cleanup_all()


# --- guests -> host --------------------------------------------------------------------------


def test_guest_reaches_no_host_port_unless_allowed(lab: Lab, hn: HostNetwork) -> None:
    outside = lab.add_outside()
    guest = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    lab.http_server(lab.host, 9001, "host-service")
    lab.http_server(guest, 8000, "guest")
    assert http_get(outside, "http://192.0.2.1:9001/index.txt") == "host-service"  # control
    assert http_get(guest, "http://10.61.0.1:9001/index.txt", 1) is None
    assert http_get(guest, "http://192.0.2.1:9001/index.txt", 1) is None
    assert ping(guest, "10.61.0.1")  # the gateway still answers pings
    # the host may still talk to its guests (replies come back as established)
    assert http_get(lab.host, "http://10.61.0.2:8000/index.txt") == "guest"
    # the same table rebuilt with the port opened by the admin
    _host(lab, guest_host_tcp_ports=(9001,)).ensure_network(NET_A)
    assert http_get(guest, "http://10.61.0.1:9001/index.txt") == "host-service"


def test_link_local_and_management_subnets_blocked(lab: Lab, hn: HostNetwork) -> None:
    outside = lab.add_outside()
    ns_run(outside, "ip", "addr", "add", "169.254.169.254/16", "dev", "eth0")
    ns_run(lab.host, "ip", "route", "add", "169.254.0.0/16", "dev", "uplink0")
    lab.http_server(outside, 80, "metadata", bind="169.254.169.254")
    lab.http_server(outside, 9000, "mgmt")
    guest = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    assert http_get(guest, "http://169.254.169.254/index.txt", 1) is None
    assert http_get(guest, "http://192.0.2.2:9000/index.txt") == "mgmt"
    # the same table rebuilt with a management subnet configured
    _host(lab, blocked_subnets=("169.254.0.0/16", "192.0.2.0/24")).ensure_network(NET_A)
    assert http_get(guest, "http://192.0.2.2:9000/index.txt", 1) is None
    assert http_get(guest, "http://169.254.169.254/index.txt", 1) is None
    # positive control (link-local allowed by the admin): the route and the server work
    _host(lab, blocked_subnets=()).ensure_network(NET_A)
    assert http_get(guest, "http://169.254.169.254/index.txt") == "metadata"


# --- anti-spoofing ------------------------------------------------------------------------


def test_spoofed_source_ip_or_mac_does_not_leave_the_tap(lab: Lab, hn: HostNetwork) -> None:
    br = hn.ensure_network(NET_A)
    g1 = _tap_guest(lab, "vm_1", br, "02:00:00:00:00:01", "10.61.0.2")
    g2 = _tap_guest(lab, "vm_2", br, "02:00:00:00:00:02", "10.61.0.3")
    unguarded = _tap_guest(lab, "vm_3", br, "02:00:00:00:00:03", "10.61.0.4")
    hn.guard_nic("vm_1", 0, "02:00:00:00:00:01", "10.61.0.2")
    hn.guard_nic("vm_2", 0, "02:00:00:00:00:02", "10.61.0.3")
    assert ping(g1, "10.61.0.3") and ping(g2, "10.61.0.2") and ping(g1, "10.61.0.1")
    assert not ping(unguarded, "10.61.0.3")  # a Nexus tap without NIC rules passes nothing
    lab.http_server(g2, 8000, "g2")
    assert http_get(g1, "http://10.61.0.3:8000/index.txt") == "g2"
    # another source IP (a neighbour's, or a free one): neither the guest nor the host sees it
    ns_run(g1, "ip", "addr", "flush", "dev", "eth0")
    ns_run(g1, "ip", "addr", "add", "10.61.0.9/24", "dev", "eth0")
    ns_run(g1, "ip", "route", "add", "default", "via", "10.61.0.1")
    assert not ping(g1, "10.61.0.3") and not ping(g1, "10.61.0.1")
    # the right IP with another MAC
    ns_run(g1, "ip", "addr", "flush", "dev", "eth0")
    ns_run(g1, "ip", "addr", "add", "10.61.0.2/24", "dev", "eth0")
    ns_run(g1, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:09")
    assert not ping(g1, "10.61.0.3")
    ns_run(g1, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:01")
    assert ping(g1, "10.61.0.3")  # control: back to its own addresses, it works again
    # the rules go with the tap
    hn.delete_vm_taps("vm_1")
    assert "vm_1" not in ns_run(lab.host, "nft", "list", "table", "bridge", TEST_TABLE).stdout
    assert "vm_2" in ns_run(lab.host, "nft", "list", "table", "bridge", TEST_TABLE).stdout


def test_create_tap_with_addresses_guards_it(lab: Lab, hn: HostNetwork) -> None:
    hn.ensure_network(NET_A)
    tap = hn.create_tap("vm_1", 0, "net_a", mac="02:00:00:00:00:01", ip="10.61.0.2")
    text = ns_run(lab.host, "nft", "list", "table", "bridge", TEST_TABLE).stdout
    assert f'iifname "{tap}" ether saddr 02:00:00:00:00:01 ip saddr 10.61.0.2 accept' in text
    assert "arp saddr ip 10.61.0.2 accept" in text
    hn.delete_tap("vm_1", 0)
    assert "10.61.0.2" not in ns_run(lab.host, "nft", "list", "table", "bridge", TEST_TABLE).stdout
    hn.cleanup_all()
    assert hn.leftovers() == []
    assert ns_run(lab.host, "nft", "list", "ruleset").stdout.strip() == ""


# --- host subnets ---------------------------------------------------------------------------


def test_network_overlapping_a_host_subnet_is_refused(lab: Lab, hn: HostNetwork) -> None:
    lab.add_outside()  # the host gets 192.0.2.1/24 on uplink0
    ns_run(lab.host, "ip", "route", "add", "198.18.0.0/15", "via", "192.0.2.2")
    hn.ensure_network(NET_A)
    subnets = hn.host_subnets()
    assert "192.0.2.0/24" in subnets and "198.18.0.0/15" in subnets
    assert "10.61.0.0/24" not in subnets  # Nexus's own bridges are not host subnets
    for cidr in ("192.0.2.0/24", "192.0.0.0/16", "198.19.0.0/24"):
        with pytest.raises(NetworkOverlapError, match="of this host"):
            hn.ensure_network(NetworkSpec(id="net_bad", cidr=cidr))
    assert not hn.network_exists("net_bad")


def test_listening_ports_per_protocol(lab: Lab) -> None:
    from nexus.agent.net.hostinfo import listening_ports

    lab.http_server(lab.host, 20100, "x")
    assert 20100 in listening_ports(lab.host, "tcp")
    assert 20100 not in listening_ports(lab.host, "udp")
    _udp_bound(lab, 20101)
    assert 20101 in listening_ports(lab.host, "udp")
