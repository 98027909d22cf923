"""Schedules (issue 15): CRUD and RBAC, runs as operations listed at /runs, one run after
downtime (saying how many it missed), self-disable when the resource is deleted, and the
policy loop running a due schedule within one evaluation period.

The VM engine's agent work is replaced by a fake that records the new state (tests/vm has
the real-VM version)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nexus.core.timeutil import utcnow
from nexus.manager.features.audit.models import AuditEvent
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.schedules import service as schedules
from nexus.manager.features.schedules.models import Schedule
from nexus.manager.features.vms import lifecycle
from nexus.manager.features.vms.models import Vm

from .conftest import UserMaker, seed_vms

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """VM actions succeed at once and record (vm_id, action)."""
    calls: list[tuple[str, str]] = []

    async def run_action(state: Any, vm_id: str, action: str, force: bool, progress: Any):
        calls.append((vm_id, action))
        new = {"stop": "stopped", "start": "running", "reboot": "running"}[action]
        await lifecycle.set_state(state, vm_id, new, desired_state=new)
        return {"vm_id": vm_id, "state": new}

    monkeypatch.setattr(lifecycle, "run_action", run_action)
    return calls


async def make_schedule(
    client: httpx.AsyncClient, headers: dict[str, str], vm_id: str, **kw: Any
) -> dict[str, Any]:
    body = {"resource_id": vm_id, "action": "stop", "cron": "0 19 * * 1-5", **kw}
    r = await client.post("/v1/schedules", json=body, headers=headers)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def clear_of_a_minute_boundary(margin_s: float = 3.0) -> None:
    """Wait until no minute boundary is within ``margin_s`` either side of now: a
    ``* * * * *`` schedule made due a second ago must have missed no other due time."""
    now = utcnow()
    into = now.second + now.microsecond / 1e6
    if into < margin_s:
        await asyncio.sleep(margin_s - into)
    elif into > 60 - margin_s:
        await asyncio.sleep(60 - into + margin_s)


async def make_due(state: Any, sched_id: str, ago: timedelta) -> None:
    async with state.db.session() as s:
        row = await s.get(Schedule, sched_id)
        assert row is not None
        row.next_run_at = utcnow() - ago


async def wait_op(client: httpx.AsyncClient, headers: dict[str, str], op_id: str) -> Any:
    r = await client.get(f"/v1/operations/{op_id}?wait=true&timeout=10", headers=headers)
    for _ in range(100):
        r = await client.get(f"/v1/operations/{op_id}", headers=headers)
        if r.json()["status"] in ("succeeded", "failed", "cancelled"):
            return r.json()
        await asyncio.sleep(0.05)
    raise AssertionError(r.text)


async def test_crud_and_rbac(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    _, bob = await make_user("bob", "operator")
    _, vic = await make_user("vic", "viewer")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, alice_id, ["running"])

    sched = await make_schedule(client, alice, vm_id, timezone="Europe/Berlin", name="nightly")
    assert sched["enabled"] and sched["next_run_at"] and sched["created_by_user_id"] == alice_id
    sid = sched["id"]
    # bob: not his VM (404 on create, no existence leak), not his schedule (404 / not listed)
    r = await client.post(
        "/v1/schedules",
        json={"resource_id": vm_id, "action": "stop", "cron": "* * * * *"},
        headers=bob,
    )
    assert r.status_code == 404
    assert (await client.get(f"/v1/schedules/{sid}", headers=bob)).status_code == 404
    assert (await client.get("/v1/schedules", headers=bob)).json()["items"] == []
    r = await client.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=bob)
    assert r.status_code == 404
    assert (await client.delete(f"/v1/schedules/{sid}", headers=bob)).status_code == 404
    assert (await client.get(f"/v1/schedules/{sid}/runs", headers=bob)).status_code == 404
    # a viewer may not create one; nobody without a token
    r = await client.post(
        "/v1/schedules",
        json={"resource_id": vm_id, "action": "stop", "cron": "* * * * *"},
        headers=vic,
    )
    assert r.status_code == 403
    assert (await client.get("/v1/schedules")).status_code == 401
    # admin sees all
    items = (await client.get("/v1/schedules", headers=admin)).json()["items"]
    assert [s["id"] for s in items] == [sid]
    # validation: cron, time zone, action per resource type, scale args
    for bad in (
        {"cron": "every day"},
        {"cron": "61 * * * *"},
        {"timezone": "Mars/Olympus"},
        {"action": "scale"},
        {"resource_type": "group", "action": "scale", "args": {"desired": -1}},
    ):
        body = {"resource_id": vm_id, "action": "stop", "cron": "* * * * *", **bad}
        r = await client.post("/v1/schedules", json=body, headers=alice)
        assert r.status_code in (404, 422), (bad, r.text)
        if "resource_type" not in bad:
            assert r.status_code == 422, (bad, r.text)
    # update: disable clears next_run_at, enable recomputes it
    r = await client.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=alice)
    assert r.status_code == 200 and r.json()["next_run_at"] is None
    r = await client.patch(
        f"/v1/schedules/{sid}", json={"enabled": True, "cron": "*/5 * * * *"}, headers=alice
    )
    assert r.status_code == 200 and r.json()["next_run_at"] is not None
    assert (await client.delete(f"/v1/schedules/{sid}", headers=alice)).status_code == 204
    assert (await client.get(f"/v1/schedules/{sid}", headers=alice)).status_code == 404
    async with state.db.session() as s:
        actions = {
            e.action
            for e in (
                await s.execute(select(AuditEvent).where(AuditEvent.resource_type == "schedule"))
            ).scalars()
        }
    assert {"schedule.create", "schedule.update", "schedule.delete"} <= actions


async def test_missed_runs_run_once_and_say_so(
    client: httpx.AsyncClient, make_user: UserMaker, fake_engine: list[tuple[str, str]]
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, alice_id, ["running"])
    sched = await make_schedule(client, alice, vm_id, cron="* * * * *")
    # the manager was "down" for ten minutes: ten due times passed
    await make_due(state, sched["id"], timedelta(minutes=10, seconds=1))
    assert await schedules.run_due(state) == 1
    assert await schedules.run_due(state) == 0  # claimed: not again
    runs = (await client.get(f"/v1/schedules/{sched['id']}/runs", headers=alice)).json()["items"]
    assert len(runs) == 1
    run = runs[0]
    assert run["missed"] >= 9 and "missed" in run["detail"] and "ran once" in run["detail"]
    op = await wait_op(client, alice, run["operation_id"])
    assert op["status"] == "succeeded", op
    assert op["kind"] == "schedule.run" and op["result"]["missed"] == run["missed"]
    assert fake_engine == [(vm_id, "stop")]
    runs = (await client.get(f"/v1/schedules/{sched['id']}/runs", headers=alice)).json()["items"]
    assert runs[0]["status"] == "succeeded"
    got = (await client.get(f"/v1/schedules/{sched['id']}", headers=alice)).json()
    assert got["last_operation_id"] == run["operation_id"]
    assert got["next_run_at"] > utcnow().isoformat()
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        assert vm is not None and vm.state == "stopped"
        audited = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "schedule.run"))
        ).scalar_one()
        assert audited.actor_user_id == alice_id and audited.after["missed"] == run["missed"]
        stop = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "vm.stop"))
        ).scalar_one()
        assert stop.actor_user_id == alice_id  # the VM service audited it, as the owner
    # a stop of a stopped VM is a success that did nothing
    await clear_of_a_minute_boundary()  # due a second ago, and no other due time since
    await make_due(state, sched["id"], timedelta(seconds=1))
    assert await schedules.run_due(state) == 1
    runs = (await client.get(f"/v1/schedules/{sched['id']}/runs", headers=alice)).json()["items"]
    op = await wait_op(client, alice, runs[0]["operation_id"])
    assert op["status"] == "succeeded" and "already stopped" in op["result"]["skipped"]
    assert runs[0]["missed"] == 0 and runs[0]["detail"] is None


async def test_a_schedule_on_a_deleted_vm_disables_itself(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    alice_id, alice = await make_user("alice", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, alice_id, ["running"])
    sched = await make_schedule(client, alice, vm_id)
    async with state.db.session() as s:
        await s.delete(await s.get(Vm, vm_id))
    await schedules.run_due(state)
    got = (await client.get(f"/v1/schedules/{sched['id']}", headers=alice)).json()
    assert got["enabled"] is False and got["next_run_at"] is None
    assert vm_id in got["disabled_reason"] and "deleted" in got["disabled_reason"]
    assert got["disabled_at"] is not None
    notes = (await client.get("/v1/notifications", headers=alice)).json()["items"]
    (note,) = [n for n in notes if n["kind"] == "schedule_disabled"]
    assert note["resource_id"] == sched["id"] and vm_id in note["body"]
    evs = await client.get("/v1/events", params={"type": "schedule.disabled"}, headers=alice)
    assert [e["resource_id"] for e in evs.json()["items"]] == [sched["id"]]
    async with state.db.session() as s:
        ev = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "schedule.disable"))
        ).scalar_one()
        assert ev.resource_id == sched["id"]
    # it cannot be enabled again while the VM is gone
    r = await client.patch(f"/v1/schedules/{sched['id']}", json={"enabled": True}, headers=alice)
    assert r.status_code == 404


async def test_the_policy_loop_runs_a_due_schedule_within_one_period(
    app_factory: AppFactory, fake_engine: list[tuple[str, str]]
) -> None:
    client = await app_factory(policy_interval_s=1)
    from .conftest import ADMIN_PASSWORD, login

    admin = await login(client, "admin", ADMIN_PASSWORD)
    r = await client.post(
        "/v1/users",
        json={"username": "carol", "password": "carol-password", "role": "operator"},
        headers=admin,
    )
    carol_id = r.json()["id"]
    carol = await login(client, "carol", "carol-password")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, carol_id, ["running"])
    sched = await make_schedule(client, carol, vm_id, cron="* * * * *")
    await make_due(state, sched["id"], timedelta(seconds=0))
    deadline = asyncio.get_running_loop().time() + 1.0 + 2.0  # one period (+ slack)
    while asyncio.get_running_loop().time() < deadline:
        runs = (await client.get(f"/v1/schedules/{sched['id']}/runs", headers=carol)).json()
        if runs["items"]:
            break
        await asyncio.sleep(0.1)
    assert runs["items"], "the loop did not run the due schedule"
    await wait_op(client, carol, runs["items"][0]["operation_id"])
    assert (vm_id, "stop") in fake_engine
    async with state.db.session() as s:
        ops = (await s.execute(select(Operation).where(Operation.kind == "schedule.run"))).all()
    assert len(ops) == 1
