"""Templates and snapshots API: validation, RBAC (401/403/404), public templates, audit.

No host runs here: VM rows are inserted directly so snapshot/clone authorization can be
checked without booting anything (the real flows are in tests/vm/test_snapshots.py).
"""

from __future__ import annotations

from typing import Any

import httpx

from nexus.core.ids import new_id
from nexus.manager.features.images.models import Image
from nexus.manager.features.vms.models import Vm

from .conftest import UserMaker

SPEC = {"vcpus": 1, "memory_mib": 256, "image": "default", "labels": {"env": "dev"}}


async def _tpl(client: httpx.AsyncClient, h: dict[str, str], **kw: Any) -> dict[str, Any]:
    body = {"name": "web", "spec": SPEC, **kw}
    r = await client.post("/v1/templates", json=body, headers=h)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_template_crud_and_validation(client: httpx.AsyncClient, admin: dict) -> None:
    t = await _tpl(client, admin, description="a web box")
    assert t["spec"]["memory_mib"] == 256 and t["public"] is False
    assert (await client.get(f"/v1/templates/{t['id']}", headers=admin)).json()["name"] == "web"
    assert (await client.get("/v1/templates/web", headers=admin)).json()["id"] == t["id"]
    r = await client.post("/v1/templates", json={"name": "web", "spec": SPEC}, headers=admin)
    assert r.status_code == 409
    for bad in (
        {"name": "Bad Name", "spec": SPEC},
        {"name": "x", "spec": {**SPEC, "vcpus": 0}},
        {"name": "x", "spec": {**SPEC, "memory_mib": 1}},
        {"name": "x", "spec": {**SPEC, "bogus": 1}},
        {"name": "x"},
    ):
        r = await client.post("/v1/templates", json=bad, headers=admin)
        assert r.status_code == 422, (bad, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.patch(
        f"/v1/templates/{t['id']}", json={"spec": {**SPEC, "vcpus": 2}}, headers=admin
    )
    assert r.status_code == 200 and r.json()["spec"]["vcpus"] == 2
    page = (await client.get("/v1/templates", headers=admin)).json()
    assert len(page["items"]) == 1 and page["next_cursor"] is None
    assert (await client.delete(f"/v1/templates/{t['id']}", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/templates/{t['id']}", headers=admin)).status_code == 404
    actions = {
        e["action"] for e in (await client.get("/v1/audit?limit=50", headers=admin)).json()["items"]
    }
    assert {"template.create", "template.update", "template.delete"} <= actions


async def test_template_rbac_and_public(
    client: httpx.AsyncClient, admin: dict, make_user: UserMaker
) -> None:
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    _, vic = await make_user("vic", "viewer")
    assert (await client.get("/v1/templates")).status_code == 401
    assert (await client.post("/v1/templates", json={"name": "a", "spec": SPEC})).status_code == 401
    r = await client.post("/v1/templates", json={"name": "v", "spec": SPEC}, headers=vic)
    assert r.status_code == 403
    private = await _tpl(client, alice, name="private")
    # publishing needs an admin (issue 12): alice makes it, the admin publishes it
    public = await _tpl(client, alice, name="shared")
    r = await client.patch(f"/v1/templates/{public['id']}", json={"public": True}, headers=admin)
    assert r.status_code == 200 and r.json()["public"] is True
    # bob sees only the public one; the private one is 404 (no existence leak)
    names = {t["name"] for t in (await client.get("/v1/templates", headers=bob)).json()["items"]}
    assert names == {"shared"}
    assert (await client.get(f"/v1/templates/{private['id']}", headers=bob)).status_code == 404
    assert (await client.get(f"/v1/templates/{public['id']}", headers=vic)).status_code == 200
    # visible but not his: 403 to change or delete
    r = await client.patch(f"/v1/templates/{public['id']}", json={"description": "x"}, headers=bob)
    assert r.status_code == 403
    assert (await client.delete(f"/v1/templates/{public['id']}", headers=bob)).status_code == 403
    # a viewer may not instantiate (403), bob may try (no host here -> 409 from placement)
    r = await client.post(
        f"/v1/templates/{public['id']}/instantiate", json={"name": "x"}, headers=vic
    )
    assert r.status_code == 403
    r = await client.post(
        f"/v1/templates/{public['id']}/instantiate", json={"name": "Bad!"}, headers=bob
    )
    assert r.status_code == 422
    # admin may change anyone's template
    r = await client.patch(
        f"/v1/templates/{private['id']}", json={"description": "by admin"}, headers=admin
    )
    assert r.status_code == 200 and r.json()["description"] == "by admin"


async def _vm_row(client: httpx.AsyncClient, owner_id: str, name: str = "vm1") -> str:
    state = client.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.session() as s:
        img = Image(id=new_id("img"), name="default", source="build:default", public=True,
                    kernel_sha256="k" * 64, rootfs_sha256="r" * 64, path="/nonexistent",
                    created_by_user_id=owner_id)  # fmt: skip
        vm = Vm(id=new_id("vm"), name=name, vcpus=1, memory_mib=256, image_id=img.id,
                state="stopped", created_by_user_id=owner_id)  # fmt: skip
        s.add_all([img, vm])
        await s.flush()
        return vm.id


async def test_snapshot_and_clone_rbac(
    client: httpx.AsyncClient, admin: dict, make_user: UserMaker
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    _, vic = await make_user("vic", "viewer")
    vm_id = await _vm_row(client, alice_id)
    snap = {"name": "s1"}
    assert (await client.post(f"/v1/vms/{vm_id}/snapshots", json=snap)).status_code == 401
    # not visible to bob: 404; viewer: 404 too (not his)
    r = await client.post(f"/v1/vms/{vm_id}/snapshots", json=snap, headers=bob)
    assert r.status_code == 404
    r = await client.post(f"/v1/vms/{vm_id}/clone", json={"name": "c"}, headers=bob)
    assert r.status_code == 404
    r = await client.post(f"/v1/vms/{vm_id}/clone", json={"name": "c"}, headers=vic)
    assert r.status_code in (403, 404)
    # validation
    r = await client.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "NO"}, headers=alice)
    assert r.status_code == 422
    r = await client.post(
        f"/v1/vms/{vm_id}/clone", json={"name": "c", "overrides": {"vcpus": 0}}, headers=alice
    )
    assert r.status_code == 422
    # the owner may, but the VM has no host yet: a clear 409
    r = await client.post(f"/v1/vms/{vm_id}/snapshots", json=snap, headers=alice)
    assert r.status_code == 409 and "no host" in r.json()["detail"]
    # snapshots: list is empty, unknown ids are 404, from_snapshot unknown is 404
    assert (await client.get("/v1/snapshots", headers=alice)).json()["items"] == []
    assert (await client.get("/v1/snapshots/snap_nope", headers=alice)).status_code == 404
    assert (await client.delete("/v1/snapshots/snap_nope", headers=alice)).status_code == 404
    r = await client.post("/v1/snapshots/snap_nope/restore", headers=alice)
    assert r.status_code == 404
    r = await client.post(
        "/v1/vms", json={"name": "n", "from_snapshot": "snap_nope"}, headers=alice
    )
    assert r.status_code == 404
    r = await client.post("/v1/vms", json={"name": "n", "from_snapshot": "snap_x"}, headers=vic)
    assert r.status_code == 403
    denied = [
        e
        for e in (await client.get("/v1/audit?limit=100", headers=admin)).json()["items"]
        if e["outcome"] == "denied"
    ]
    assert denied
