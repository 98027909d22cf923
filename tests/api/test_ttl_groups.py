"""TTL (ttl_s/expires_at on create, extend, the warning state change, deletion on time) and
instance groups (desired members from a template, failed ones replaced, scale rules, a
schedule's scale), with the VM engine's agent work faked (tests/vm has real VMs)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nexus.core.timeutil import utcnow
from nexus.manager.features.audit.models import AuditEvent
from nexus.manager.features.groups import service as groups
from nexus.manager.features.guest.models import VmMetricSample
from nexus.manager.features.images.models import Image
from nexus.manager.features.schedules import service as schedules
from nexus.manager.features.schedules.models import Schedule
from nexus.manager.features.ttl import service as ttl
from nexus.manager.features.vms import lifecycle
from nexus.manager.features.vms.models import Vm
from nexus.manager.loops import policies

from .conftest import ADMIN_PASSWORD, UserMaker, import_image, login, register_host, seed_vms

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provisioning makes the VM 'running' at once; removal deletes the row."""

    async def provision(state: Any, vm_id: str, start: bool, progress: Any) -> dict[str, Any]:
        new = "running" if start else "stopped"
        await lifecycle.set_state(state, vm_id, new, desired_state=new)
        return {"vm_id": vm_id, "state": new}

    async def remove(state: Any, vm_id: str, progress: Any) -> dict[str, Any]:
        async with state.db.session() as s:
            row = await s.get(Vm, vm_id)
            if row is not None:
                await s.delete(row)
        return {"vm_id": vm_id, "deleted": True}

    monkeypatch.setattr(lifecycle, "provision", provision)
    monkeypatch.setattr(lifecycle, "remove", remove)


async def settle(state: Any) -> None:
    """Let the operations started by a pass finish."""
    for _ in range(100):
        if not state.extras.get("op_tasks"):
            return
        await asyncio.sleep(0.02)


async def ready_for_vms(client: httpx.AsyncClient, admin: dict[str, str], tmp: Path) -> None:
    await register_host(client, admin, "policy-host")
    img = await import_image(client, admin, tmp)
    async with client.app.state.nexus.db.session() as s:  # type: ignore[attr-defined]
        row = await s.get(Image, img["id"])
        assert row is not None
        row.public = True


# --- TTL ----------------------------------------------------------------------------------


async def test_ttl_on_create_and_extend(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str], tmp_path: Path
) -> None:
    await ready_for_vms(client, admin, tmp_path)
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    base = {"image": "tiny", "start": False}
    r = await client.post("/v1/vms", json={**base, "name": "t", "ttl_s": 30}, headers=alice)
    assert r.status_code == 422  # at least 60 s
    r = await client.post(
        "/v1/vms",
        json={**base, "name": "t", "ttl_s": 600, "expires_at": utcnow().isoformat()},
        headers=alice,
    )
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    r = await client.post("/v1/vms", json={**base, "name": "t", "ttl_s": 10**8}, headers=alice)
    assert r.status_code == 422 and "max_ttl_s" in r.json()["detail"]
    r = await client.post("/v1/vms", json={**base, "name": "t", "ttl_s": 7200}, headers=alice)
    assert r.status_code == 202, r.text
    vm_id = r.json()["resource_id"]
    vm = (await client.get(f"/v1/vms/{vm_id}", headers=alice)).json()
    left = (datetime.fromisoformat(vm["expires_at"]) - utcnow()).total_seconds()
    assert 7100 < left <= 7200 and vm["ttl_warned_at"] is None

    # extend: bob may not (404), exactly one of the fields, by_s adds to the expiry
    r = await client.post(f"/v1/vms/{vm_id}/extend", json={"by_s": 60}, headers=bob)
    assert r.status_code == 404
    r = await client.post(f"/v1/vms/{vm_id}/extend", json={}, headers=alice)
    assert r.status_code == 422
    r = await client.post(f"/v1/vms/{vm_id}/extend", json={"by_s": 60, "ttl_s": 60}, headers=alice)
    assert r.status_code == 422
    r = await client.post(f"/v1/vms/{vm_id}/extend", json={"by_s": 3600}, headers=alice)
    assert r.status_code == 200, r.text
    assert r.json()["expires_at"] > vm["expires_at"]
    r = await client.post(f"/v1/vms/{vm_id}/extend", json={"clear": True}, headers=alice)
    assert r.status_code == 200 and r.json()["expires_at"] is None
    r = await client.post(f"/v1/vms/{vm_id}/extend", json={"ttl_s": 120}, headers=admin)
    assert r.status_code == 200 and r.json()["expires_at"] is not None
    async with client.app.state.nexus.db.session() as s:  # type: ignore[attr-defined]
        n = len((await s.execute(select(AuditEvent).where(AuditEvent.action == "vm.extend"))).all())
    assert n == 3


async def test_warning_then_deletion_on_time(
    client: httpx.AsyncClient, make_user: UserMaker, fake_engine: None
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    soon, later, past = await seed_vms(state, alice_id, ["running", "running", "running"])
    async with state.db.session() as s:
        for vm_id, delta in ((soon, 60), (later, 10_000), (past, -1)):
            row = await s.get(Vm, vm_id)
            assert row is not None
            row.expires_at = utcnow() + timedelta(seconds=delta)
    counts = await ttl.expire_due(state)  # ttl_warning_s is 600 by default
    assert counts == {"warned": 2, "expired": 1}
    await settle(state)
    soon_vm = (await client.get(f"/v1/vms/{soon}", headers=alice)).json()
    assert soon_vm["ttl_warned_at"] is not None  # the owner is to be told
    assert (await client.get(f"/v1/vms/{later}", headers=alice)).json()["ttl_warned_at"] is None
    assert (await client.get(f"/v1/vms/{past}", headers=alice)).status_code == 404
    assert await ttl.expire_due(state) == {"warned": 0, "expired": 0}  # warned once only
    # ... and the owner was told, once per VM, with the time it goes
    notes = (await client.get("/v1/notifications", headers=alice)).json()["items"]
    warned = [n for n in notes if n["kind"] == "ttl_warning"]
    assert sorted(n["resource_id"] for n in warned) == sorted([soon, past]), notes
    assert "deleted at 20" in next(n for n in warned if n["resource_id"] == soon)["body"]
    # extending clears the warning: a new one comes before the new expiry
    r = await client.post(f"/v1/vms/{soon}/extend", json={"ttl_s": 3600}, headers=alice)
    assert r.json()["ttl_warned_at"] is None
    notes = (await client.get("/v1/notifications", headers=alice)).json()["items"]
    assert len([n for n in notes if n["kind"] == "ttl_warning"]) == 2  # no warning for that
    async with state.db.session() as s:
        rows = (
            await s.execute(
                select(AuditEvent.action, AuditEvent.resource_id).where(
                    AuditEvent.action.in_(("vm.ttl.warning", "vm.ttl.expire", "vm.delete"))
                )
            )
        ).all()
    assert ("vm.ttl.warning", past) in rows and ("vm.ttl.expire", past) in rows
    assert ("vm.delete", past) in rows and ("vm.ttl.warning", soon) in rows


async def test_the_loop_deletes_a_ttl_vm_on_time(
    app_factory: AppFactory, fake_engine: None
) -> None:
    client = await app_factory(policy_interval_s=1, ttl_warning_s=1)
    admin = await login(client, "admin", ADMIN_PASSWORD)
    r = await client.post(
        "/v1/users",
        json={"username": "dan", "password": "dan-password", "role": "operator"},
        headers=admin,
    )
    dan_id = r.json()["id"]
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, dan_id, ["running"])
    async with state.db.session() as s:
        row = await s.get(Vm, vm_id)
        assert row is not None
        row.expires_at = expires = utcnow() + timedelta(seconds=2)
    while True:
        async with state.db.session() as s:
            row = await s.get(Vm, vm_id)
        if row is None:
            break
        assert utcnow() < expires + timedelta(seconds=3), "not deleted within a period"
        await asyncio.sleep(0.1)
    async with state.db.session() as s:
        warned = (
            await s.execute(
                select(AuditEvent.at).where(
                    AuditEvent.action == "vm.ttl.warning", AuditEvent.resource_id == vm_id
                )
            )
        ).scalar_one()
        expired = (
            await s.execute(
                select(AuditEvent.at).where(
                    AuditEvent.action == "vm.ttl.expire", AuditEvent.resource_id == vm_id
                )
            )
        ).scalar_one()
    assert warned <= expired


# --- groups -------------------------------------------------------------------------------


async def test_group_crud_rbac_and_validation(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    _, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    _, vic = await make_user("vic", "viewer")
    body = {"name": "web", "template": {"image": "tiny"}, "min": 1, "max": 3, "desired": 2}
    assert (await client.post("/v1/groups", json=body, headers=vic)).status_code == 403
    assert (await client.post("/v1/groups", json=body)).status_code == 401
    bad = {**body, "min": 4}
    assert (await client.post("/v1/groups", json=bad, headers=alice)).status_code == 422
    bad = {**body, "scale_rule": {"metric": "memory", "target_percent": 50}}
    assert (await client.post("/v1/groups", json=bad, headers=alice)).status_code == 422
    r = await client.post("/v1/groups", json=body, headers=alice)
    assert r.status_code == 201, r.text
    g = r.json()
    assert g["desired"] == 2 and g["members"] == []
    assert (await client.post("/v1/groups", json=body, headers=alice)).status_code == 409
    assert (await client.get(f"/v1/groups/{g['id']}", headers=bob)).status_code == 404
    assert (await client.get("/v1/groups", headers=bob)).json()["items"] == []
    r = await client.post(f"/v1/groups/{g['id']}/scale", json={"desired": 3}, headers=bob)
    assert r.status_code == 404
    assert (await client.delete(f"/v1/groups/{g['id']}", headers=bob)).status_code == 404
    r = await client.post(f"/v1/groups/{g['id']}/scale", json={"desired": 9}, headers=alice)
    assert r.status_code == 200 and r.json()["desired"] == 3  # clamped to max
    r = await client.patch(f"/v1/groups/{g['id']}", json={"max": 2}, headers=alice)
    assert r.status_code == 200 and r.json()["desired"] == 2 and r.json()["max"] == 2
    r = await client.patch(f"/v1/groups/{g['id']}", json={"desired": 5}, headers=alice)
    assert r.status_code == 422
    assert len((await client.get("/v1/groups", headers=admin)).json()["items"]) == 1
    assert (await client.delete(f"/v1/groups/{g['id']}", headers=alice)).status_code == 204


async def test_group_keeps_desired_replaces_failed_and_scales(
    client: httpx.AsyncClient,
    make_user: UserMaker,
    admin: dict[str, str],
    tmp_path: Path,
    fake_engine: None,
) -> None:
    await ready_for_vms(client, admin, tmp_path)
    alice_id, alice = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    body = {
        "name": "web",
        "template": {"image": "tiny", "memory_mib": 128},
        "min": 1,
        "max": 3,
        "desired": 2,
        "scale_rule": {"metric": "cpu", "target_percent": 50, "window_s": 60, "cooldown_s": 0},
    }
    gid = (await client.post("/v1/groups", json=body, headers=alice)).json()["id"]
    counts = await groups.reconcile_all(state)
    assert counts["created"] == 2
    await settle(state)
    g = (await client.get(f"/v1/groups/{gid}", headers=alice)).json()
    assert len(g["members"]) == 2 and g["running"] == 2
    vms = [(await client.get(f"/v1/vms/{m}", headers=alice)).json() for m in g["members"]]
    assert sorted(v["name"] for v in vms) == ["web-1", "web-2"]
    assert all(v["group_id"] == gid and v["created_by_user_id"] == alice_id for v in vms)

    # a member fails (its VMM was killed): it is deleted and a new one made
    async with state.db.session() as s:
        row = await s.get(Vm, g["members"][0])
        assert row is not None
        row.state = "failed"
    counts = await groups.reconcile_all(state)
    assert counts["replaced"] == 1 and counts["created"] == 1
    await settle(state)
    g2 = (await client.get(f"/v1/groups/{gid}", headers=alice)).json()
    assert g["members"][0] not in g2["members"] and len(g2["members"]) == 2
    assert g2["running"] == 2

    # busy CPU (90% against a 50% target): ceil(2 * 90 / 50) = 4, clamped to max 3
    async with state.db.session() as s:
        for m in g2["members"]:
            s.add(VmMetricSample(vm_id=m, sampled_at=utcnow(), cpu_percent=90.0))
    await groups.reconcile_all(state)
    await settle(state)
    g3 = (await client.get(f"/v1/groups/{gid}", headers=alice)).json()
    assert g3["desired"] == 3 and len(g3["members"]) == 3
    async with state.db.session() as s:
        ev = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "group.autoscale"))
        ).scalar_one()
        assert ev.after["desired"] == 3 and ev.before["desired"] == 2

    # a schedule sets desired; the next pass removes the newest members
    r = await client.post(
        "/v1/schedules",
        json={
            "resource_type": "group",
            "resource_id": gid,
            "action": "scale",
            "cron": "0 20 * * *",
            "args": {"desired": 1},
        },
        headers=alice,
    )
    assert r.status_code == 201, r.text
    sched_id = r.json()["id"]
    await client.patch(f"/v1/groups/{gid}", json={"scale_rule": None}, headers=alice)
    async with state.db.session() as s:
        sched = await s.get(Schedule, sched_id)
        assert sched is not None
        sched.next_run_at = utcnow() - timedelta(seconds=1)
    assert await schedules.run_due(state) == 1
    await settle(state)
    assert (await client.get(f"/v1/groups/{gid}", headers=alice)).json()["desired"] == 1
    counts = await groups.reconcile_all(state)
    assert counts["deleted"] == 2
    await settle(state)
    g4 = (await client.get(f"/v1/groups/{gid}", headers=alice)).json()
    assert g4["members"] == [g3["members"][0]]

    # deleting the group deletes its members on the next pass
    assert (await client.delete(f"/v1/groups/{gid}", headers=alice)).status_code == 204
    counts = await policies.policies_once(state)
    assert counts["group_deleted"] == 1
    await settle(state)
    assert (await client.get(f"/v1/vms/{g4['members'][0]}", headers=alice)).status_code == 404
    # and the group schedule disabled itself
    got = (await client.get(f"/v1/schedules/{sched_id}", headers=alice)).json()
    assert got["enabled"] is False and "group" in got["disabled_reason"]


async def test_group_members_count_against_the_quota(
    client: httpx.AsyncClient,
    make_user: UserMaker,
    admin: dict[str, str],
    tmp_path: Path,
    fake_engine: None,
) -> None:
    await ready_for_vms(client, admin, tmp_path)
    alice_id, alice = await make_user("alice", "operator")
    await client.put(f"/v1/quotas/{alice_id}", json={"limits": {"vms": 1}}, headers=admin)
    body = {"name": "web", "template": {"image": "tiny"}, "min": 2, "max": 2}
    gid = (await client.post("/v1/groups", json=body, headers=alice)).json()["id"]
    state = client.app.state.nexus  # type: ignore[attr-defined]
    counts = await groups.reconcile_all(state)
    assert counts["created"] == 1
    g = (await client.get(f"/v1/groups/{gid}", headers=alice)).json()
    assert "quota vms exceeded" in g["state_reason"]
