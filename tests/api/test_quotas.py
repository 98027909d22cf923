"""Quotas (issue 15): per-user limits with per-role defaults, checked atomically at create,
start, resize, clone, restore and volume grow; 403 ``quota-exceeded`` naming the limit, the
usage and the request; ``GET /v1/quotas/me``, admin ``GET/PUT /v1/quotas/{user}``.

Runs on SQLite and (``make test-pg``) on PostgreSQL: the concurrent-create test is the one
that proves the check is atomic on each.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from nexus.core.settings import QUOTA_ROLE_DEFAULTS
from nexus.manager.features.audit.models import AuditEvent
from nexus.manager.features.images.models import Image
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.quotas.models import QuotaUsage
from nexus.manager.features.vms.models import Vm

from .conftest import UserMaker, import_image, register_host, seed_vms

PROBLEM = "application/problem+json"


def quota_problem(r: httpx.Response, name: str) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["type"].endswith("/quota-exceeded")
    assert body["quota"] == name and name in body["detail"]
    return body


async def public_image(client: httpx.AsyncClient, admin: dict[str, str], tmp: Path) -> None:
    """The tiny test image, made public so operators may boot it."""
    img = await import_image(client, admin, tmp)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.session() as s:
        row = await s.get(Image, img["id"])
        assert row is not None
        row.public = True


async def set_limits(client: httpx.AsyncClient, admin: dict[str, str], user: str, **limits: int):
    r = await client.put(f"/v1/quotas/{user}", json={"limits": limits}, headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


async def test_me_shows_role_defaults_and_usage(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    r = await client.get("/v1/quotas/me", headers=alice)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == alice_id and body["role"] == "operator"
    assert body["limits"] == QUOTA_ROLE_DEFAULTS["operator"]
    assert body["overrides"] == {}
    assert body["usage"]["vms"] == 0 and body["usage"]["networks"] == 0
    state = client.app.state.nexus  # type: ignore[attr-defined]
    await seed_vms(state, alice_id, ["stopped", "running"], vcpus=2)
    usage = (await client.get("/v1/quotas/me", headers=alice)).json()["usage"]
    assert usage["vms"] == 2 and usage["vcpus"] == 4 and usage["memory_mib"] == 512
    # admin: unlimited by default
    r = await client.get("/v1/quotas/me", headers=admin)
    assert set(r.json()["limits"].values()) == {-1}


async def test_only_admins_set_quotas_and_others_see_only_their_own(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    bob_id, bob = await make_user("bob", "viewer")
    # bob may not see alice's quota (404, not 403: no existence leak), nor set anyone's
    assert (await client.get(f"/v1/quotas/{alice_id}", headers=bob)).status_code == 404
    assert (await client.get("/v1/quotas/alice", headers=bob)).status_code == 404
    r = await client.put(f"/v1/quotas/{bob_id}", json={"limits": {"vms": 99}}, headers=bob)
    assert r.status_code == 403
    r = await client.put(f"/v1/quotas/{alice_id}", json={"limits": {"vms": 99}}, headers=alice)
    assert r.status_code == 403
    assert (await client.get("/v1/quotas/me")).status_code == 401
    # but each sees their own by id too
    assert (await client.get(f"/v1/quotas/{bob_id}", headers=bob)).status_code == 200
    # an admin sets overrides by username; null goes back to the role default
    body = await set_limits(client, admin, "alice", vms=3, memory_mib=-1)
    assert body["limits"]["vms"] == 3 and body["limits"]["memory_mib"] == -1
    assert body["overrides"] == {"vms": 3, "memory_mib": -1}
    r = await client.put("/v1/quotas/alice", json={"limits": {"vms": None}}, headers=admin)
    assert r.json()["limits"]["vms"] == QUOTA_ROLE_DEFAULTS["operator"]["vms"]
    # bad names and values are 422
    r = await client.put("/v1/quotas/alice", json={"limits": {"gpus": 1}}, headers=admin)
    assert r.status_code == 422
    r = await client.put("/v1/quotas/alice", json={"limits": {"vms": -2}}, headers=admin)
    assert r.status_code == 422
    assert (await client.get("/v1/quotas/nobody", headers=admin)).status_code == 404
    # audited, the denials too
    state = client.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.session() as s:
        rows = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "quota.update"))
        ).scalars()
        outcomes = sorted(e.outcome for e in rows)
    assert outcomes.count("success") == 2 and outcomes.count("denied") == 2


async def test_two_concurrent_creates_at_the_edge_exactly_one_passes(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str], tmp_path: Path
) -> None:
    await register_host(client, admin, "quota-host")
    await public_image(client, admin, tmp_path)
    alice_id, alice = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    await seed_vms(state, alice_id, ["stopped"])
    await set_limits(client, admin, alice_id, vms=2)

    async def create(name: str) -> httpx.Response:
        body = {"name": name, "image": "tiny", "start": False}
        return await client.post("/v1/vms", json=body, headers=alice)

    for attempt in range(3):  # a few rounds: each must have exactly one winner
        results = await asyncio.gather(create(f"a{attempt}"), create(f"b{attempt}"))
        ok = [r for r in results if r.status_code in (200, 202)]
        refused = [r for r in results if r.status_code == 403]
        assert len(ok) == 1 and len(refused) == 1, [r.text for r in results]
        body = quota_problem(refused[0], "vms")
        assert body["limit"] == 2 and body["usage"] == 2 and body["requested"] == 1
        # make room again for the next round
        async with state.db.session() as s:
            await s.delete(await s.get(Vm, ok[0].json()["resource_id"]))

    # five at once with room for two: exactly two pass
    await set_limits(client, admin, alice_id, vms=3)
    results = await asyncio.gather(*(create(f"c{i}") for i in range(5)))
    assert sorted(r.status_code for r in results) == [202, 202, 403, 403, 403], [
        r.text for r in results
    ]


async def test_resize_past_the_memory_quota_is_403_naming_memory_mib(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, alice_id, ["stopped"])  # 256 MiB
    await set_limits(client, admin, alice_id, memory_mib=512, vcpus=2)
    r = await client.patch(f"/v1/vms/{vm_id}", json={"memory_mib": 1024}, headers=alice)
    body = quota_problem(r, "memory_mib")
    assert body["limit"] == 512 and body["usage"] == 256 and body["requested"] == 768
    assert "256 MiB of 512 MiB" in body["detail"]
    r = await client.patch(f"/v1/vms/{vm_id}", json={"vcpus": 3}, headers=alice)
    quota_problem(r, "vcpus")
    r = await client.patch(f"/v1/vms/{vm_id}", json={"memory_mib": 512}, headers=alice)
    assert r.status_code == 200, r.text
    # shrinking is always allowed, even over the limit
    await set_limits(client, admin, alice_id, memory_mib=128)
    r = await client.patch(f"/v1/vms/{vm_id}", json={"memory_mib": 256}, headers=alice)
    assert r.status_code == 200, r.text
    # an admin resizing alice's VM is checked against alice's quota
    r = await client.patch(f"/v1/vms/{vm_id}", json={"memory_mib": 2048}, headers=admin)
    quota_problem(r, "memory_mib")
    # and over the limit, the VM may not start
    r = await client.post(f"/v1/vms/{vm_id}/start", headers=alice)
    body = quota_problem(r, "memory_mib")
    assert body["requested"] == 0


async def test_create_is_refused_on_each_vm_limit(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str], tmp_path: Path
) -> None:
    await register_host(client, admin, "quota-host")
    await public_image(client, admin, tmp_path)
    alice_id, alice = await make_user("alice", "operator")
    base = {"image": "tiny", "start": False}
    await set_limits(client, admin, alice_id, vcpus=2, memory_mib=1024, disk_mib=20)
    r = await client.post("/v1/vms", json={**base, "name": "x", "vcpus": 3}, headers=alice)
    quota_problem(r, "vcpus")
    r = await client.post("/v1/vms", json={**base, "name": "x", "memory_mib": 2048}, headers=alice)
    quota_problem(r, "memory_mib")
    r = await client.post("/v1/vms", json={**base, "name": "x", "disk_size_mib": 64}, headers=alice)
    body = quota_problem(r, "disk_mib")
    assert body["requested"] == 64
    r = await client.post("/v1/vms", json={**base, "name": "x"}, headers=alice)  # 8 MiB image
    assert r.status_code == 202, r.text
    assert (await client.get("/v1/quotas/me", headers=alice)).json()["usage"]["disk_mib"] == 8


async def test_volumes_networks_and_tokens_count(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    await set_limits(client, admin, alice_id, volumes=1, disk_mib=100, networks=1, api_tokens=1)
    r = await client.post("/v1/volumes", json={"name": "big", "size_mib": 200}, headers=alice)
    quota_problem(r, "disk_mib")
    r = await client.post("/v1/volumes", json={"name": "v1", "size_mib": 64}, headers=alice)
    assert r.status_code == 201, r.text
    vol_id = r.json()["id"]
    r = await client.post("/v1/volumes", json={"name": "v2", "size_mib": 8}, headers=alice)
    quota_problem(r, "volumes")
    r = await client.patch(f"/v1/volumes/{vol_id}", json={"size_mib": 128}, headers=alice)
    body = quota_problem(r, "disk_mib")
    assert body["usage"] == 64 and body["requested"] == 64
    r = await client.patch(f"/v1/volumes/{vol_id}", json={"size_mib": 100}, headers=alice)
    assert r.status_code == 200, r.text

    r = await client.post("/v1/networks", json={"name": "n1"}, headers=alice)
    assert r.status_code == 201, r.text
    r = await client.post("/v1/networks", json={"name": "n2"}, headers=alice)
    quota_problem(r, "networks")

    r = await client.post("/v1/auth/tokens", json={"name": "t1"}, headers=alice)
    assert r.status_code == 201, r.text
    r = await client.post("/v1/auth/tokens", json={"name": "t2"}, headers=alice)
    quota_problem(r, "api_tokens")
    usage = (await client.get("/v1/quotas/me", headers=alice)).json()["usage"]
    assert usage == {**usage, "volumes": 1, "disk_mib": 100, "networks": 1, "api_tokens": 1}


async def test_recount_stores_drifted_usage_and_audits_it(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    alice_id, _ = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    await seed_vms(state, alice_id, ["stopped", "stopped"])
    await quotas.recount_all(state.db)
    async with state.db.session() as s:
        row = await s.get(QuotaUsage, alice_id)
        assert row is not None and row.usage["vms"] == 2
        vm = (await s.execute(select(Vm))).scalars().first()
        await s.delete(vm)
    assert await quotas.recount_all(state.db) == 1
    assert await quotas.recount_all(state.db) == 0  # nothing drifted since
    async with state.db.session() as s:
        row = await s.get(QuotaUsage, alice_id, populate_existing=True)
        assert row is not None and row.usage["vms"] == 1
