"""Real netlink + nftables inside throwaway network namespaces (see conftest.py)."""

from __future__ import annotations

import pytest

from nexus.agent.net import (
    AsyncHostNetwork,
    HostNetwork,
    NetError,
    NetworkInUseError,
    NetworkNotFoundError,
    NetworkSpec,
    NftError,
    PortForward,
    PortForwardConflictError,
    bridge_name,
    tap_name,
)
from nexus.agent.net import firewall as fw
from nexus.agent.net import host as host_mod

from .conftest import TEST_TABLE, Lab, http_get, ns_run, ping

pytestmark = [pytest.mark.net, pytest.mark.timeout(120)]

NET_A = NetworkSpec(id="net_a", cidr="10.61.0.0/24")
NET_B = NetworkSpec(id="net_b", cidr="10.62.0.0/24")
NET_ISO = NetworkSpec(id="net_iso", cidr="10.63.0.0/24", isolated=True)


def _nft_text(lab: Lab) -> str:
    return ns_run(lab.host, "nft", "list", "ruleset").stdout


def _links(lab: Lab) -> str:
    return ns_run(lab.host, "ip", "-o", "link").stdout


def test_ensure_network_creates_bridge_and_is_idempotent(lab: Lab, hn: HostNetwork) -> None:
    br = hn.ensure_network(NET_A)
    assert br == bridge_name("net_a")
    addr = ns_run(lab.host, "ip", "-o", "-4", "addr", "show", "dev", br).stdout
    assert "10.61.0.1/24" in addr
    assert "UP" in ns_run(lab.host, "ip", "-o", "link", "show", br).stdout
    rules_once = hn.nft.rules()
    assert hn.ensure_network(NET_A) == br
    assert len(hn.nft.rules()) == len(rules_once)
    assert ns_run(lab.host, "ip", "-o", "-4", "addr", "show", "dev", br).stdout.count("inet ") == 1
    # a changed spec is reconciled, not duplicated
    hn.ensure_network(NetworkSpec(id="net_a", cidr="10.61.0.0/24", isolated=True))
    tagged = [r for r in hn.nft.rules() if r.get("comment") == "nexus:net:net_a"]
    text = _nft_text(lab)
    assert f'iifname "{br}" drop' in text
    assert len(tagged) == len(fw.network_commands(TEST_TABLE, NET_ISO, br))
    hn.ensure_network(NET_A)
    assert f'iifname "{br}" drop' not in _nft_text(lab)
    assert hn.network_exists("net_a")


def test_same_network_pings_other_network_does_not(lab: Lab, hn: HostNetwork) -> None:
    br_a, br_b = hn.ensure_network(NET_A), hn.ensure_network(NET_B)
    g1 = lab.add_guest(br_a, "10.61.0.2/24", "10.61.0.1")
    g2 = lab.add_guest(br_a, "10.61.0.3/24", "10.61.0.1")
    g3 = lab.add_guest(br_b, "10.62.0.2/24", "10.62.0.1")
    assert ping(g1, "10.61.0.3")
    assert ping(g2, "10.61.0.2")
    assert ping(g1, "10.61.0.1")  # the gateway (host) answers
    assert ping(g3, "10.62.0.1")
    assert not ping(g1, "10.62.0.2")
    assert not ping(g3, "10.61.0.2")
    # Positive control: without the Nexus table the host routes between the bridges,
    # so the failure above is the isolation rule and not a missing route.
    hn.nft.delete_table()
    assert ping(g1, "10.62.0.2")


def test_nat_reaches_outside_isolated_does_not(lab: Lab, hn: HostNetwork) -> None:
    outside = lab.add_outside()
    lab.http_server(outside, 9000, "outside-ok")
    g_nat = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    g_iso = lab.add_guest(hn.ensure_network(NET_ISO), "10.63.0.2/24", "10.63.0.1")
    # outside has no route back to 10.61/24: this only works through masquerade
    assert http_get(g_nat, "http://192.0.2.2:9000/index.txt") == "outside-ok"
    assert http_get(g_iso, "http://192.0.2.2:9000/index.txt") is None
    assert not ping(g_iso, "192.0.2.2")
    assert ping(g_iso, "10.63.0.1")  # its own gateway still answers
    # unsolicited traffic from outside to a NAT'd guest is dropped
    ns_run(outside, "ip", "route", "add", "10.61.0.0/24", "via", "192.0.2.1")
    assert not ping(outside, "10.61.0.2")


def test_port_forward(lab: Lab, hn: HostNetwork) -> None:
    outside = lab.add_outside()
    br_a = hn.ensure_network(NET_A)
    guest = lab.add_guest(br_a, "10.61.0.2/24", "10.61.0.1")
    neighbour = lab.add_guest(br_a, "10.61.0.3/24", "10.61.0.1")
    other_net = lab.add_guest(hn.ensure_network(NET_B), "10.62.0.2/24", "10.62.0.1")
    lab.http_server(guest, 8000, "hello-from-guest", bind="10.61.0.2")

    url = "http://{}:18080/index.txt"
    assert http_get(lab.host, url.format("192.0.2.1")) is None
    pf = hn.add_port_forward("vm_web", 18080, "10.61.0.2", 8000, "tcp")
    assert pf == PortForward("vm_web", 18080, "10.61.0.2", 8000, "tcp")
    assert hn.add_port_forward("vm_web", 18080, "10.61.0.2", 8000) == pf  # idempotent
    assert hn.list_port_forwards() == [pf]
    assert hn.list_port_forwards("other_vm") == []

    # the host's own connections are not captured (only with capture_host_local, see
    # test_isolation.py::test_host_local_capture_only_when_enabled)
    assert http_get(lab.host, url.format("192.0.2.1"), 1) is None
    assert http_get(lab.host, url.format("127.0.0.1"), 1) is None
    # from outside (prerouting DNAT)
    assert http_get(outside, url.format("192.0.2.1")) == "hello-from-guest"
    # hairpin: a guest on the same network via its gateway
    assert http_get(neighbour, url.format("10.61.0.1")) == "hello-from-guest"
    # a published port is public: a guest of another network may use it via the host...
    assert http_get(other_net, url.format("10.62.0.1")) == "hello-from-guest"
    # ...but still cannot reach the guest directly
    assert http_get(other_net, "http://10.61.0.2:8000/index.txt", 1) is None

    with pytest.raises(PortForwardConflictError):
        hn.add_port_forward("vm_other", 18080, "10.61.0.3", 80)
    with pytest.raises(PortForwardConflictError):
        hn.add_port_forward("vm_other", 8081, "10.61.0.3", 80)  # protected host port
    udp = hn.add_port_forward("vm_web", 18080, "10.61.0.2", 5353, "udp")
    hn.add_port_forward("vm_web", 18081, "10.61.0.2", 8000)
    assert len(hn.list_port_forwards("vm_web")) == 3

    assert hn.remove_port_forward("vm_web", 18080, "tcp") is True
    assert hn.remove_port_forward("vm_web", 18080, "tcp") is False
    assert http_get(outside, url.format("192.0.2.1"), 1) is None
    assert udp in hn.list_port_forwards()
    assert hn.remove_vm_port_forwards("vm_web") == 2
    assert hn.list_port_forwards() == []
    assert "nexus:pf:" not in _nft_text(lab)


def test_guest_cannot_reach_protected_host_port(lab: Lab, hn: HostNetwork) -> None:
    # even when the admin opens host ports to guests, the protected ones stay closed
    hn = HostNetwork(lab.host, table=TEST_TABLE, guest_host_tcp_ports=(9001, 8081))
    guest = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    lab.http_server(lab.host, 8081, "agent-api")
    lab.http_server(lab.host, 9001, "public")
    assert http_get(lab.host, "http://127.0.0.1:8081/index.txt") == "agent-api"
    assert http_get(guest, "http://10.61.0.1:9001/index.txt") == "public"  # control
    assert http_get(guest, "http://10.61.0.1:8081/index.txt", 1) is None
    lab_outside = lab.add_outside()
    assert http_get(lab_outside, "http://192.0.2.1:8081/index.txt") == "agent-api"
    # the guest cannot sidestep the rule through another host address either
    assert http_get(guest, "http://192.0.2.1:8081/index.txt", 1) is None


def test_taps_and_delete_leaves_nothing(lab: Lab, hn: HostNetwork) -> None:
    hn.ensure_network(NET_A)
    hn.ensure_network(NET_B)
    t0 = hn.create_tap("vm_1", 0, "net_a")
    t1 = hn.create_tap("vm_1", 1, "net_b")
    assert hn.create_tap("vm_1", 0, "net_a") == t0 == tap_name("vm_1", 0)  # idempotent
    t_other = hn.create_tap("vm_2", 0, "net_a")
    detail = ns_run(lab.host, "ip", "-d", "link", "show", t0).stdout
    assert f"master {bridge_name('net_a')}" in detail
    assert "tap" in detail and "pi off" in detail and ",UP" in detail
    assert hn.vm_taps("vm_1") == sorted([t0, t1])
    hn.add_port_forward("vm_1", 2222, "10.61.0.2", 22)

    with pytest.raises(NetworkInUseError):
        hn.delete_network("net_a")
    hn.delete_tap("vm_1", 0)
    hn.delete_tap("vm_1", 0)  # already gone: no error
    assert sorted(hn.delete_vm_taps("vm_1")) == [t1]
    assert hn.remove_vm_port_forwards("vm_1") == 1
    hn.delete_vm_taps("vm_2")
    assert t_other not in _links(lab)
    hn.delete_network("net_a")
    hn.delete_network("net_b")
    hn.delete_network("net_b")  # idempotent
    assert "nxb-" not in _links(lab) and "nxt-" not in _links(lab)
    assert "nexus:net:" not in _nft_text(lab)

    hn.cleanup_all()
    assert hn.leftovers() == []
    assert "nxb-" not in _links(lab) and "nxt-" not in _links(lab)
    assert TEST_TABLE not in _nft_text(lab)


def test_cleanup_all_removes_everything(lab: Lab, hn: HostNetwork) -> None:
    hn.ensure_network(NET_A)
    hn.ensure_network(NET_ISO)
    hn.create_tap("vm_1", 0, "net_a")
    hn.add_port_forward("vm_1", 2222, "10.61.0.2", 22)
    assert len(hn.leftovers()) == 4  # two bridges, one tap, the table
    hn.cleanup_all()
    assert hn.leftovers() == []
    assert "nxb-" not in _links(lab) and "nxt-" not in _links(lab)
    assert ns_run(lab.host, "nft", "list", "ruleset").stdout.strip() == ""


def test_create_tap_needs_network(lab: Lab, hn: HostNetwork) -> None:
    with pytest.raises(NetworkNotFoundError):
        hn.create_tap("vm_1", 0, "net_missing")
    assert hn.leftovers() == []


def test_failed_ensure_network_rolls_back(
    lab: Lab, hn: HostNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(table: str, net: NetworkSpec, bridge: str) -> list[dict[str, object]]:
        return [
            {
                "add": {
                    "rule": {
                        "family": "inet",
                        "table": table,
                        "chain": "no_such_chain",
                        "expr": [{"accept": None}],
                    }
                }
            }
        ]

    monkeypatch.setattr(fw, "network_commands", broken)
    with pytest.raises(NftError):
        hn.ensure_network(NET_A)
    assert bridge_name("net_a") not in _links(lab)
    assert [x for x in hn.leftovers() if x.startswith("link")] == []


def test_failed_ensure_network_on_existing_bridge_restores_address(
    lab: Lab, hn: HostNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    br = hn.ensure_network(NET_A)
    monkeypatch.setattr(fw, "network_commands", lambda *a: [{"add": {"bogus": {}}}])
    with pytest.raises(NftError):
        hn.ensure_network(NetworkSpec(id="net_a", cidr="10.99.0.0/24"))
    addr = ns_run(lab.host, "ip", "-o", "-4", "addr", "show", "dev", br).stdout
    assert "10.61.0.1/24" in addr and "10.99." not in addr
    assert any(r.get("comment") == "nexus:net:net_a" for r in hn.nft.rules())


def test_failed_create_tap_rolls_back(
    lab: Lab, hn: HostNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    hn.ensure_network(NET_A)
    real = host_mod.iproute

    class Failing:
        def __init__(self, netns: str | None) -> None:
            self.ipr = real(netns)

        def __enter__(self) -> Failing:
            self.ipr.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.ipr.__exit__(*exc)

        def __getattr__(self, name: str) -> object:
            return getattr(self.ipr, name)

        def link(self, cmd: str, **kw: object) -> object:
            if cmd == "set" and kw.get("state") == "up" and str(kw.get("index")) != "":
                name = self.ipr.get_links(kw["index"])[0].get("ifname")
                if str(name).startswith("nxt-"):
                    raise NetError("injected failure")
            return self.ipr.link(cmd, **kw)

    monkeypatch.setattr(host_mod, "iproute", Failing)
    with pytest.raises(NetError, match="injected"):
        hn.create_tap("vm_1", 0, "net_a")
    assert tap_name("vm_1", 0) not in _links(lab)


async def test_async_wrapper(lab: Lab, hn: HostNetwork) -> None:
    ah = AsyncHostNetwork(hn)
    br = await ah.ensure_network(NET_A)
    tap = await ah.create_tap("vm_1", 0, "net_a")
    await ah.add_port_forward("vm_1", 2222, "10.61.0.2", 22)
    assert [p.host_port for p in await ah.list_port_forwards()] == [2222]
    assert await ah.remove_vm_port_forwards("vm_1") == 1
    assert await ah.delete_vm_taps("vm_1") == [tap]
    await ah.delete_network("net_a")
    await ah.cleanup_all()
    assert await ah.leftovers() == []
    assert br not in _links(lab)


def test_guest_cannot_reach_host_loopback(lab: Lab, hn: HostNetwork) -> None:
    """route_localnet on the bridge (set when host-local traffic is captured) must not
    expose the host's 127.0.0.1 services."""
    hn = HostNetwork(lab.host, table=TEST_TABLE, capture_host_local=True)
    guest = lab.add_guest(hn.ensure_network(NET_A), "10.61.0.2/24", "10.61.0.1")
    lab.http_server(lab.host, 9002, "loopback-only", bind="127.0.0.1")
    # make the guest send 127.0.0.0/8 to its gateway (a hostile guest can do this)
    ns_run(guest, "ip", "addr", "flush", "dev", "lo")
    ns_run(guest, "ip", "link", "set", "lo", "down")
    ns_run(guest, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet")
    ns_run(guest, "ip", "route", "add", "127.0.0.0/8", "via", "10.61.0.1", "dev", "eth0")
    assert http_get(guest, "http://127.0.0.1:9002/index.txt", 1) is None
    # positive control: without the Nexus rules the attack works
    hn.nft.delete_table()
    assert http_get(guest, "http://127.0.0.1:9002/index.txt", 2) == "loopback-only"


def test_qemu_can_attach_to_tap(lab: Lab, hn: HostNetwork) -> None:
    import shutil
    import subprocess
    import time

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    from nexus.agent.net import generate_mac

    hn.ensure_network(NET_A)
    tap = hn.create_tap("vm_q", 0, "net_a")
    argv = [
        "ip", "netns", "exec", lab.host, "qemu-system-x86_64", "-M", "microvm", "-accel", "tcg",
        "-m", "64", "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-device,netdev=n0,mac={generate_mac('vm_q', 0)}",
    ]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.poll() is None:
            if "LOWER_UP" in ns_run(lab.host, "ip", "-o", "link", "show", tap).stdout:
                break
            time.sleep(0.1)
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        assert "LOWER_UP" in ns_run(lab.host, "ip", "-o", "link", "show", tap).stdout
    finally:
        p.terminate()
        p.wait(timeout=10)
    hn.delete_vm_taps("vm_q")


async def test_netwire_gives_an_unprivileged_vmm_its_taps(lab: Lab, hn: HostNetwork) -> None:
    """A jailed Firecracker (no CAP_NET_ADMIN) can only open taps it owns: the runtime
    passes the driver's ``tap_owner`` and the taps are created with that uid/gid."""
    from nexus.agent.netwire import NetWire
    from nexus.core.settings import Settings
    from nexus.hostapi.models import NetworkRef, NicConfig

    wire = NetWire(Settings(state_dir=lab.tmp / "state"), host=hn)
    net = NetworkRef(id="net_a", cidr="10.61.0.0/24", nat=False, isolated=False)
    nics = [NicConfig(id="net0", mac="52:54:00:00:00:01", ip="10.61.0.5", network=net)]
    await wire.prepare("vm_j", nics, owner=(64000, 64001))
    detail = ns_run(lab.host, "ip", "-d", "link", "show", str(nics[0].tap)).stdout
    assert "user 64000" in detail and "group 64001" in detail, detail
    plain = [NicConfig(id="net0", mac="52:54:00:00:00:02", ip="10.61.0.6", network=net)]
    await wire.prepare("vm_p", plain)
    assert "user " not in ns_run(lab.host, "ip", "-d", "link", "show", str(plain[0].tap)).stdout
    await wire.release("vm_j", nics)
    await wire.release("vm_p", plain)
