"""Networks, port forwards and volumes end to end: a real all-in-one manager, real guests
(the busybox test image, whose init serves CGI helpers on port 80: ``/cgi-bin/ping?ADDR``,
``/cgi-bin/vol?write=TEXT|read`` on /dev/vdb), real bridges, taps and nftables rules.

Addresses come from 10.213.0.0/16 (a private test range unused on this host); everything is
deleted at the end and the host is checked for Nexus leftovers.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nexus.agent.net import bridge_name, tap_name
from tests.support.aio import all_in_one
from tests.support.server import LiveServer

pytestmark = pytest.mark.vm
PW = "net-admin-pw-123"
CREATED: dict[str, list[str]] = {"vms": [], "networks": []}


def _cleanup_host() -> None:
    """After a failed run: remove the taps, forwards and bridges of what this module made
    (the manager was killed, so nobody else will)."""
    from nexus.agent.net import HostNetwork
    from nexus.agent.net.models import NetError

    host = HostNetwork()
    for vm_id in CREATED["vms"]:
        with contextlib.suppress(NetError, OSError):
            host.remove_vm_port_forwards(vm_id)
            host.delete_vm_taps(vm_id)
    for net_id in CREATED["networks"]:
        with contextlib.suppress(NetError, OSError):
            host.delete_network(net_id, force=True)


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    env = {
        "NEXUS_STOP_TIMEOUT_S": "10",
        "NEXUS_NETWORK_POOL": "10.213.240.0/20",
        # the end-to-end test reaches its forwards from the host itself (127.0.0.1)
        "NEXUS_PORT_FORWARD_HOST_LOCAL": "true",
    }
    state = tmp_path_factory.mktemp("netaio") / "state"
    try:
        with all_in_one(state, admin_password=PW, env=env, image="test") as a:
            yield a.srv, a.h
    finally:
        _cleanup_host()


def _call(srv: LiveServer, h: dict[str, str], method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{srv.url}{path}", headers=h, timeout=600, **kw)


def _guest(url: str, tries: int = 40) -> str:
    last: Exception | None = None
    for _ in range(tries):
        try:
            return httpx.get(url, timeout=30).text.strip()
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"{url}: {last}")


def _vm(srv: LiveServer, h: dict[str, str], name: str, nets: list[str]) -> dict[str, Any]:
    body = {"name": name, "image": "test", "memory_mib": 128, "networks": nets}
    r = _call(srv, h, "POST", "/v1/vms?wait=true", json=body)
    assert r.status_code == 200, r.text
    vm: dict[str, Any] = r.json()
    CREATED["vms"].append(vm["id"])
    assert vm["state"] == "running", vm
    return vm


def _links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout


def test_networks_port_forwards_volumes_end_to_end(
    aio: tuple[LiveServer, dict[str, str]],
) -> None:
    srv, h = aio
    r = _call(srv, h, "POST", "/v1/networks", json={"name": "na", "cidr": "10.213.7.0/24"})
    assert r.status_code == 201, r.text
    na = r.json()
    CREATED["networks"].append(na["id"])
    r = _call(srv, h, "POST", "/v1/networks", json={"name": "nb", "cidr": "10.213.8.0/24"})
    nb = r.json()
    CREATED["networks"].append(nb["id"])
    a = _vm(srv, h, "net-a", ["na"])
    b = _vm(srv, h, "net-b", [na["id"]])
    c = _vm(srv, h, "net-c", ["nb"])
    ip_a, ip_b, ip_c = (v["nics"][0]["ip"] for v in (a, b, c))
    assert (ip_a, ip_b, ip_c) == ("10.213.7.2", "10.213.7.3", "10.213.8.2")
    assert len({v["nics"][0]["mac"] for v in (a, b, c)}) == 3
    assert _call(srv, h, "DELETE", f"/v1/networks/{na['id']}").status_code == 409

    # same network: reachable; other network: not
    assert _guest(f"http://{ip_a}/") == "net-a"
    assert _guest(f"http://{ip_a}/cgi-bin/ping?{ip_b}") == "ok"
    assert _guest(f"http://{ip_c}/cgi-bin/ping?{ip_a}") == "fail"

    # port forward: host client -> DNAT -> busybox httpd in the guest
    r = _call(srv, h, "POST", f"/v1/vms/{a['id']}/port-forwards", json={"guest_port": 80})
    assert r.status_code == 201, r.text
    pf = r.json()
    assert 20000 <= pf["host_port"] <= 29999 and pf["guest_ip"] == ip_a
    assert _guest(f"http://127.0.0.1:{pf['host_port']}/") == "net-a"
    r = _call(
        srv,
        h,
        "POST",
        f"/v1/vms/{b['id']}/port-forwards",
        json={"guest_port": 80, "host_port": pf["host_port"]},
    )
    assert r.status_code == 409, r.text
    assert len(_call(srv, h, "GET", f"/v1/vms/{a['id']}/port-forwards").json()["items"]) == 1

    # volume: written by a, read by b after re-attach
    vol = _call(srv, h, "POST", "/v1/volumes", json={"name": "data", "size_mib": 32}).json()
    att = {"volume_id": vol["id"]}
    assert _call(srv, h, "POST", f"/v1/vms/{a['id']}/volumes", json=att).status_code == 409
    assert _call(srv, h, "POST", f"/v1/vms/{a['id']}/stop?wait=true").status_code == 200
    r = _call(srv, h, "POST", f"/v1/vms/{a['id']}/volumes", json=att)
    assert r.status_code == 201 and r.json()["device"] == "/dev/vdb", r.text
    assert _call(srv, h, "POST", f"/v1/vms/{a['id']}/start?wait=true").status_code == 200
    assert _guest(f"http://{ip_a}/cgi-bin/vol?write=persisted-42") == "written"
    assert _call(srv, h, "DELETE", f"/v1/volumes/{vol['id']}").status_code == 409
    r = _call(srv, h, "DELETE", f"/v1/vms/{a['id']}?wait=true")
    assert r.status_code == 200, r.text
    assert _call(srv, h, "GET", f"/v1/vms/{a['id']}/port-forwards").status_code == 404
    assert _call(srv, h, "POST", f"/v1/vms/{b['id']}/stop?wait=true").status_code == 200
    r = _call(srv, h, "POST", f"/v1/vms/{b['id']}/volumes", json={**att, "read_only": True})
    assert r.status_code == 201, r.text
    assert _call(srv, h, "POST", f"/v1/vms/{b['id']}/start?wait=true").status_code == 200
    assert _guest(f"http://{ip_b}/cgi-bin/vol?read") == "persisted-42"
    assert _guest(f"http://{ip_b}/cgi-bin/vol?write=nope") != "written"  # read-only

    # a's address was released: a new VM on na gets it again
    d = _vm(srv, h, "net-d", ["na"])
    assert d["nics"][0]["ip"] == ip_a

    # delete everything -> nothing of ours left on the host
    for vm in (b, c, d):
        assert _call(srv, h, "DELETE", f"/v1/vms/{vm['id']}?wait=true").status_code == 200
    assert _call(srv, h, "DELETE", f"/v1/volumes/{vol['id']}").status_code == 204
    for net in (na, nb):
        assert _call(srv, h, "DELETE", f"/v1/networks/{net['id']}").status_code == 204
    links = _links()
    for net in (na, nb):
        assert bridge_name(net["id"]) not in links
    for vm in (a, b, c, d):
        assert tap_name(vm["id"], 0)[:-2] not in links
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    for vm in (a, b, c, d):
        assert vm["id"] not in rules
    for net in (na, nb):
        assert net["id"] not in rules
    # (dot files are the agent's own, e.g. the sandbox's uid allocation lock)
    assert [p for p in (srv.state_dir / "vms").iterdir() if not p.name.startswith(".")] == []
    assert list((srv.state_dir / "volumes").iterdir()) == []


def _exec(srv: LiveServer, h: dict[str, str], vm_id: str, script: str) -> dict[str, Any]:
    """Run ``script`` with the default image's busybox sh in the guest."""
    r = _call(
        srv,
        h,
        "POST",
        f"/v1/vms/{vm_id}/exec",
        json={"command": ["/usr/local/bin/busybox", "sh", "-c", script], "timeout_s": 60},
    )
    assert r.status_code == 200, r.text
    res: dict[str, Any] = r.json()
    return res


# A TCP connect from the guest (python3 of the default image): "connected", "refused" (the
# host answered with a reset) or "timeout" (dropped on the way).
_CONNECT = (
    "/usr/bin/python3 -c 'import socket\n"
    'try:\n socket.create_connection(("{addr}", {port}), 3); print("connected")\n'
    'except ConnectionRefusedError: print("refused")\n'
    'except OSError: print("timeout")\''
)


def test_guest_cannot_spoof_or_reach_the_host(aio: tuple[LiveServer, dict[str, str]]) -> None:
    """Issue 11 finding 7 on real guests: a spoofed source IP from one guest does not reach
    another (its real address does); a guest reaches no host port on its gateway and not
    169.254.169.254; and (finding 5) a port a host service listens on cannot be published."""
    srv, h = aio
    r = _call(srv, h, "POST", "/v1/images/build", json={"name": "default"})
    assert r.status_code == 202, r.text
    op = _call(srv, h, "GET", f"/v1/operations/{r.json()['id']}?wait=true&timeout=600").json()
    assert op["status"] == "succeeded", op
    r = _call(srv, h, "POST", "/v1/networks", json={"name": "spoof", "cidr": "10.213.9.0/24"})
    assert r.status_code == 201, r.text
    net = r.json()
    CREATED["networks"].append(net["id"])
    victim = _vm(srv, h, "victim", ["spoof"])  # the busybox test image: httpd + ping CGI
    body = {"name": "attacker", "image": op["result"]["image_id"], "memory_mib": 256}
    r = _call(srv, h, "POST", "/v1/vms?wait=true", json={**body, "networks": ["spoof"]})
    assert r.status_code == 200, r.text
    attacker = r.json()
    CREATED["vms"].append(attacker["id"])
    v_ip, a_ip = victim["nics"][0]["ip"], attacker["nics"][0]["ip"]
    bb = "/usr/local/bin/busybox"

    # real source: reaches the victim (ping and its web server)
    res = _exec(
        srv, h, attacker["id"], f"{bb} ping -c 2 -W 2 {v_ip} && {bb} wget -q -O - http://{v_ip}/"
    )
    assert res["exit_code"] == 0 and "victim" in res["stdout"], res
    # a free address of the network as source, and the victim's own gateway's: nothing arrives
    for spoofed in ("10.213.9.200", net["gateway"]):
        res = _exec(
            srv,
            h,
            attacker["id"],
            f"{bb} ip addr add {spoofed}/32 dev eth0 && "
            f"{bb} ping -c 2 -W 2 -I {spoofed} {v_ip}; rc=$?; "
            f"{bb} ip addr del {spoofed}/32 dev eth0; exit $rc",
        )
        assert res["exit_code"] != 0, (spoofed, res)
    # control: after the attempts the real addresses still work both ways
    assert _guest(f"http://{v_ip}/cgi-bin/ping?{a_ip}") == "ok"

    # guest -> host: a real host listener on all addresses is not reachable from the guest
    srv_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv_sock.bind(("0.0.0.0", 0))
    srv_sock.listen(8)
    port = srv_sock.getsockname()[1]
    try:
        with socket.create_connection((net["gateway"], port), timeout=5):
            pass  # control: the listener answers on the bridge address (from the host)
        for addr, p in ((net["gateway"], port), ("169.254.169.254", 80)):
            res = _exec(srv, h, attacker["id"], _CONNECT.format(addr=addr, port=p))
            assert res["exit_code"] == 0 and res["stdout"].strip() == "timeout", (addr, res)
    finally:
        srv_sock.close()

    # a host port with a listener in the forward range cannot be published, even by an admin
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        for candidate in range(29990, 30000):
            try:
                busy.bind(("127.0.0.1", candidate))
                break
            except OSError:
                continue
        busy.listen(1)
        port = busy.getsockname()[1]
        r = _call(
            srv,
            h,
            "POST",
            f"/v1/vms/{victim['id']}/port-forwards",
            json={"guest_port": 80, "host_port": port},
        )
        assert r.status_code == 409 and "service on the host" in r.json()["detail"], r.text
    finally:
        busy.close()

    for vm in (attacker, victim):
        assert _call(srv, h, "DELETE", f"/v1/vms/{vm['id']}?wait=true").status_code == 200
    assert _call(srv, h, "DELETE", f"/v1/networks/{net['id']}").status_code == 204
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    for vm in (attacker, victim):
        assert vm["id"] not in rules
