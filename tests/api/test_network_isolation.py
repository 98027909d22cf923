"""Tenant isolation of networks and port forwards through the API (issue 11 findings 5-7,
issue 12 point 9): host ports non-admins may publish, host listeners, CIDRs that overlap
a host's own subnets, pool allocation, per-user default networks, and 409s that never
name another tenant's network. The host side is in tests/net/test_isolation.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.core.ids import new_id
from nexus.hostapi.agent_client import AgentError
from nexus.manager.features.hosts import service as hosts_service
from nexus.manager.features.networks.models import VmNic
from tests.support.hosts import HOST_FACTS

from .conftest import ADMIN_PASSWORD, UserMaker, import_image, login, register_host, seed_vms

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


class FakeAgent:
    """Stands in for a host's agent: a listener on ``listeners``; ports outside the agent's
    own range refused with 422 (as :mod:`nexus.agent.api.net` does)."""

    def __init__(self, listeners: set[int] = frozenset(), agent_range: range = range(1, 65536)):  # type: ignore[assignment]
        self.listeners = set(listeners)
        self.agent_range = agent_range
        self.added: list[tuple[int, str]] = []

    async def add_port_forward(
        self, vm_id: str, host_port: int, guest_ip: str, guest_port: int, protocol: str
    ) -> None:
        if host_port not in self.agent_range:
            raise AgentError(422, "vm-spec-invalid", f"host port {host_port} is outside")
        if host_port in self.listeners:
            raise AgentError(
                409, "vm-conflict", f"host port {host_port}/{protocol} is in use by a service"
            )
        self.added.append((host_port, protocol))

    async def remove_port_forward(self, vm_id: str, host_port: int, protocol: str) -> None:
        return None


async def _vm_with_nic(client: httpx.AsyncClient, admin: dict[str, str], owner_id: str) -> str:
    """A stopped VM of ``owner_id`` on a registered host, with one NIC."""
    state = client.app.state.nexus  # type: ignore[attr-defined]
    host = await register_host(client, admin, f"h{new_id('x')[-5:].lower()}")
    (vm_id,) = await seed_vms(state, owner_id, ["stopped"], host_id=host["host_id"])
    r = await client.post(
        "/v1/networks", json={"name": "pf", "cidr": "10.64.0.0/24"}, headers=admin
    )
    assert r.status_code == 201, r.text
    async with state.db.session() as s:
        s.add(
            VmNic(
                id=new_id("nic"),
                vm_id=vm_id,
                network_id=r.json()["id"],
                nic_index=0,
                mac="02:00:00:00:00:01",
                ip="10.64.0.2",
                created_by_user_id=owner_id,
            )
        )
    return vm_id


# --- port forwards -------------------------------------------------------------------------


async def test_non_admin_may_only_publish_ports_of_the_range(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    make_user: UserMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent()
    monkeypatch.setattr(hosts_service, "agent_client", lambda _s, _h: agent)
    op_id, op = await make_user("op1", "operator")
    vm = await _vm_with_nic(client, admin, op_id)
    url = f"/v1/vms/{vm}/port-forwards"
    for port, proto in ((22, "tcp"), (5432, "tcp"), (53, "udp"), (6379, "tcp"), (30000, "tcp")):
        r = await client.post(
            url, json={"guest_port": 80, "host_port": port, "protocol": proto}, headers=op
        )
        assert r.status_code == 403, (port, r.text)
        assert "20000-29999" in r.json()["detail"]
    assert agent.added == []  # never reached the host
    r = await client.post(url, json={"guest_port": 80, "host_port": 20022}, headers=op)
    assert r.status_code == 201, r.text
    r = await client.post(url, json={"guest_port": 80}, headers=op)
    assert r.status_code == 201 and r.json()["host_port"] in range(20000, 30000), r.text
    # an admin may ask for any port; the manager passes it on (the agent decides)
    r = await client.post(url, json={"guest_port": 80, "host_port": 2222}, headers=admin)
    assert r.status_code == 201, r.text
    audit = (await client.get("/v1/audit?limit=200", headers=admin)).json()
    items = audit["items"] if isinstance(audit, dict) else audit
    assert any(e["action"] == "vm.port_forward.create" for e in items)


async def test_agent_refusals_reach_the_caller(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    make_user: UserMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent(listeners={20000, 20001, 25432}, agent_range=range(20000, 30000))
    monkeypatch.setattr(hosts_service, "agent_client", lambda _s, _h: agent)
    admin_id = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    vm = await _vm_with_nic(client, admin, admin_id)
    url = f"/v1/vms/{vm}/port-forwards"
    # an admin asking for a port a host service listens on: 409, nothing stored
    r = await client.post(url, json={"guest_port": 80, "host_port": 25432}, headers=admin)
    assert r.status_code == 409, r.text
    assert "in use by a service" in r.json()["detail"]
    # outside the agent's own range: the agent refuses (422), also for an admin
    r = await client.post(url, json={"guest_port": 80, "host_port": 22}, headers=admin)
    assert r.status_code == 422, r.text
    assert (await client.get(url, headers=admin)).json()["items"] == []
    # an automatic pick skips ports with host listeners
    r = await client.post(url, json={"guest_port": 80}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["host_port"] == 20002
    assert [p["host_port"] for p in (await client.get(url, headers=admin)).json()["items"]] == [
        20002
    ]


# --- networks ------------------------------------------------------------------------------


async def _host_with_subnets(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await client.post("/v1/hosts/join-tokens", headers=admin)
    facts = {**HOST_FACTS, "subnets": ["192.0.2.0/24", "192.0.2.1/32", "172.16.8.0/22"]}
    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": r.json()["token"],
            "name": "lan-host",
            "agent_url": "http://lan-host:8081",
            "facts": facts,
        },
    )
    assert r.status_code == 200, r.text


async def test_network_overlapping_a_host_subnet_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    await _host_with_subnets(client, admin)
    _, op = await make_user("op1", "operator")
    for cidr in ("192.0.2.0/24", "192.0.2.128/25", "172.16.10.0/24"):
        r = await client.post("/v1/networks", json={"name": "lan", "cidr": cidr}, headers=op)
        assert r.status_code == 409, (cidr, r.text)
        assert "lan-host" not in r.json()["detail"]  # no host details for tenants
    r = await client.post(
        "/v1/networks", json={"name": "lan", "cidr": "192.0.2.0/24"}, headers=admin
    )
    assert r.status_code == 409 and "lan-host" in r.json()["detail"], r.text
    r = await client.post("/v1/networks", json={"name": "ok", "cidr": "172.16.12.0/24"}, headers=op)
    assert r.status_code == 201, r.text


async def test_overlap_409_does_not_name_another_tenants_network(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    r = await client.post(
        "/v1/networks", json={"name": "alice-secret-lab", "cidr": "10.60.0.0/24"}, headers=alice
    )
    assert r.status_code == 201, r.text
    r = await client.post("/v1/networks", json={"name": "b", "cidr": "10.60.0.0/25"}, headers=bob)
    assert r.status_code == 409, r.text
    assert "alice-secret-lab" not in r.text and "10.60.0.0/24" not in r.text
    assert "another user" in r.json()["detail"]
    # the owner (and an admin) are told which network it is
    r = await client.post("/v1/networks", json={"name": "c", "cidr": "10.60.0.0/16"}, headers=alice)
    assert r.status_code == 409 and "alice-secret-lab" in r.json()["detail"], r.text


async def test_network_without_cidr_comes_from_the_pool(
    app_factory: AppFactory, make_user: UserMaker
) -> None:
    client = await app_factory(network_pool="10.90.0.0/22", network_prefix=24)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    r = await client.post(
        "/v1/users",
        json={"username": "op1", "password": "op1-password-1", "role": "operator"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    op = await login(client, "op1", "op1-password-1")
    r = await client.post(
        "/v1/networks", json={"name": "manual", "cidr": "10.90.1.0/24"}, headers=admin
    )
    assert r.status_code == 201, r.text
    got = []
    for name in ("a", "b", "c"):
        r = await client.post("/v1/networks", json={"name": name}, headers=op)
        assert r.status_code == 201, r.text
        got.append(r.json()["cidr"])
    assert got == ["10.90.0.0/24", "10.90.2.0/24", "10.90.3.0/24"]  # 10.90.1.0/24 is taken
    r = await client.post("/v1/networks", json={"name": "d"}, headers=op)
    assert r.status_code == 409 and "pool" in r.json()["detail"], r.text


async def test_vms_without_networks_get_their_owners_default_network(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker, tmp_path: Path
) -> None:
    await register_host(client, admin, "h1")
    img = await import_image(client, admin, tmp_path)
    r = await client.patch(f"/v1/images/{img['id']}", json={"public": True}, headers=admin)
    assert r.status_code == 200, r.text
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    assert (await client.get("/v1/networks", headers=alice)).json()["items"] == []  # nothing shared

    async def vm(name: str, h: dict[str, str], **kw: Any) -> dict[str, Any]:
        body = {"name": name, "image": "tiny", "start": False, "memory_mib": 128, **kw}
        r = await client.post("/v1/vms", json=body, headers=h)
        assert r.status_code in (200, 201, 202), r.text
        vm_id = r.json().get("resource_id") or r.json()["id"]
        got: dict[str, Any] = (await client.get(f"/v1/vms/{vm_id}", headers=h)).json()
        return got

    a1, a2 = await vm("a1", alice), await vm("a2", alice, networks=["default"])
    b1 = await vm("b1", bob)
    a_nets = (await client.get("/v1/networks", headers=alice)).json()["items"]
    b_nets = (await client.get("/v1/networks", headers=bob)).json()["items"]
    assert [n["name"] for n in a_nets] == ["default"] and not a_nets[0]["shared"]
    assert [n["name"] for n in b_nets] == ["default"]
    assert a_nets[0]["id"] != b_nets[0]["id"] and a_nets[0]["cidr"] != b_nets[0]["cidr"]
    assert a1["nics"][0]["network_id"] == a2["nics"][0]["network_id"] == a_nets[0]["id"]
    assert b1["nics"][0]["network_id"] == b_nets[0]["id"]
    assert a_nets[0]["cidr"].startswith("10.77.") and b_nets[0]["cidr"].startswith("10.77.")
    # bob cannot join alice's default network, by id or by name
    r = await client.post(
        "/v1/vms",
        json={"name": "b2", "image": "tiny", "start": False, "networks": [a_nets[0]["id"]]},
        headers=bob,
    )
    assert r.status_code == 404, r.text
