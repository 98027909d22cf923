"""Networks, volumes and port forwards through the API (no agent): validation, RBAC, audit,
conflicts. Real host wiring is tested in tests/vm/test_networking.py."""

from __future__ import annotations

import httpx

from .conftest import UserMaker


async def _audit_actions(client: httpx.AsyncClient, admin: dict[str, str]) -> list[str]:
    page = (await client.get("/v1/audit?limit=200", headers=admin)).json()
    items = page["items"] if isinstance(page, dict) else page
    return [e["action"] for e in items]


async def test_no_shared_default_network(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    """Tenants do not share a bridge: there is no shared ``default`` network; each user's
    is made on first use (tests/api/test_network_isolation.py)."""
    assert (await client.get("/v1/networks", headers=admin)).json()["items"] == []
    _, op = await make_user("op1", "operator")
    _, viewer = await make_user("view1", "viewer")
    for h in (op, viewer):
        assert (await client.get("/v1/networks", headers=h)).json()["items"] == []


async def test_network_crud_validation_and_rbac(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    _, op = await make_user("op1", "operator")
    _, op2 = await make_user("op2", "operator")
    _, viewer = await make_user("view1", "viewer")
    for bad in ("10.0.0.1/24", "8.8.8.0/24", "10.0.0.0/8", "10.0.0.0/30", "fd00::/64", "x"):
        r = await client.post("/v1/networks", json={"name": "n", "cidr": bad}, headers=op)
        assert r.status_code == 422, (bad, r.text)
    r = await client.post(
        "/v1/networks", json={"name": "n1", "cidr": "10.60.0.0/24"}, headers=viewer
    )
    assert r.status_code == 403
    r = await client.post(
        "/v1/networks", json={"name": "n1", "cidr": "10.60.0.0/24", "isolated": True}, headers=op
    )
    assert r.status_code == 201, r.text
    net = r.json()
    assert net["nat"] is True and net["isolated"] is True and not net["shared"]
    # overlap with any network (also another user's) -> 409
    for cidr in ("10.60.0.0/25", "10.60.0.0/16"):
        r = await client.post("/v1/networks", json={"name": "n2", "cidr": cidr}, headers=op2)
        assert r.status_code == 409, (cidr, r.text)
    r = await client.post("/v1/networks", json={"name": "n1", "cidr": "10.61.0.0/24"}, headers=op)
    assert r.status_code == 409  # duplicate name for the same owner
    # others: 404; owner can patch; admin sees all
    assert (await client.get(f"/v1/networks/{net['id']}", headers=op2)).status_code == 404
    assert (await client.delete(f"/v1/networks/{net['id']}", headers=op2)).status_code == 404
    r = await client.patch(
        f"/v1/networks/{net['id']}", json={"description": "d", "isolated": False}, headers=op
    )
    assert r.status_code == 200 and r.json()["isolated"] is False
    r = await client.patch(f"/v1/networks/{net['id']}", json={"cidr": "10.62.0.0/24"}, headers=op)
    assert r.status_code == 422
    assert len((await client.get("/v1/networks", headers=admin)).json()["items"]) == 1
    assert (await client.delete(f"/v1/networks/{net['id']}", headers=op)).status_code == 204
    assert (await client.get(f"/v1/networks/{net['id']}", headers=op)).status_code == 404
    actions = await _audit_actions(client, admin)
    for a in ("network.create", "network.update", "network.delete"):
        assert a in actions


async def test_volume_crud_grow_and_rbac(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    _, op = await make_user("op1", "operator")
    _, op2 = await make_user("op2", "operator")
    _, viewer = await make_user("view1", "viewer")
    for bad in (
        {"name": "v", "size_mib": 0},
        {"name": "v", "size_mib": 4, "filesystem": "ext4"},
        {"name": "v", "size_mib": 64, "filesystem": "xfs"},
        {"name": "V!", "size_mib": 64},
    ):
        assert (await client.post("/v1/volumes", json=bad, headers=op)).status_code == 422, bad
    body = {"name": "data", "size_mib": 64, "filesystem": "ext4"}
    assert (await client.post("/v1/volumes", json=body, headers=viewer)).status_code == 403
    r = await client.post("/v1/volumes", json=body, headers=op)
    assert r.status_code == 201, r.text
    vol = r.json()
    assert vol["host_id"] is None and vol["attachment"] is None
    assert (await client.post("/v1/volumes", json=body, headers=op)).status_code == 409
    raw = await client.post(
        "/v1/volumes", json={"name": "raw", "size_mib": 1, "filesystem": "raw"}, headers=op
    )
    assert raw.status_code == 201
    assert (await client.get(f"/v1/volumes/{vol['id']}", headers=op2)).status_code == 404
    assert (await client.get("/v1/volumes/data", headers=op)).json()["id"] == vol["id"]
    assert [v["name"] for v in (await client.get("/v1/volumes", headers=op2)).json()["items"]] == []
    r = await client.patch(f"/v1/volumes/{vol['id']}", json={"size_mib": 128}, headers=op)
    assert r.status_code == 200 and r.json()["size_mib"] == 128
    r = await client.patch(f"/v1/volumes/{vol['id']}", json={"size_mib": 100}, headers=op)
    assert r.status_code == 409  # grow only
    r = await client.patch(f"/v1/volumes/{vol['id']}", json={"size_mib": 256}, headers=admin)
    assert r.status_code == 200
    assert (await client.delete(f"/v1/volumes/{vol['id']}", headers=op2)).status_code == 404
    assert (await client.delete(f"/v1/volumes/{vol['id']}", headers=op)).status_code == 204
    actions = await _audit_actions(client, admin)
    for a in ("volume.create", "volume.update", "volume.delete"):
        assert a in actions


async def test_vm_scoped_routes_hide_other_vms(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for method, path, body in (
        ("POST", "/v1/vms/vm_nope/port-forwards", {"guest_port": 80}),
        ("GET", "/v1/vms/vm_nope/port-forwards", None),
        ("DELETE", "/v1/vms/vm_nope/port-forwards/pf_x", None),
        ("POST", "/v1/vms/vm_nope/volumes", {"volume_id": "x"}),
        ("GET", "/v1/vms/vm_nope/volumes", None),
        ("DELETE", "/v1/vms/vm_nope/volumes/x", None),
    ):
        r = await client.request(method, path, json=body, headers=admin)
        assert r.status_code == 404, (method, path, r.text)
    r = await client.post(
        "/v1/vms/vm_nope/port-forwards", json={"guest_port": 80, "protocol": "icmp"}, headers=admin
    )
    assert r.status_code == 422
    r = await client.post("/v1/vms", json={"name": "a", "networks": ["nope"]}, headers=admin)
    assert r.status_code in (404, 409)  # unknown network (or no host/image in this test)
