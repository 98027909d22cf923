"""Events: every change is an event in the same transaction, filtered by who may see it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from nexus.core.errors import Conflict
from nexus.core.ids import new_id
from nexus.manager.features.networks.models import Network
from nexus.manager.features.operations import service as operations
from nexus.manager.features.vms import lifecycle
from nexus.manager.features.vms.models import Vm
from tests.api.conftest import UserMaker, seed_vms


def _state(client: httpx.AsyncClient) -> Any:
    return client.app.state.nexus  # type: ignore[attr-defined]


async def _events(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[Any]:
    r = await client.get("/v1/events", params={"limit": 1000, **params}, headers=headers)
    assert r.status_code == 200, r.text
    items: list[Any] = r.json()["items"]
    return items


async def test_changes_become_typed_events_with_actor(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    uid, user = await make_user("evan", "operator")
    r = await client.post("/v1/auth/tokens", json={"name": "ci", "scopes": ["read"]}, headers=user)
    assert r.status_code == 201, r.text
    token_id = r.json()["id"]
    r = await client.delete(f"/v1/auth/tokens/{token_id}", headers=user)
    assert r.status_code == 204, r.text

    mine = await _events(client, user, after=0)
    types = [e["type"] for e in mine]
    assert types[:3] == ["user.created", "token.created", "token.updated"], types
    created = mine[1]
    assert created["resource_id"] == token_id and created["actor_username"] == "evan"
    assert created["owner_user_id"] == uid and "token_hash" not in created["payload"]
    assert mine[2]["payload"]["revoked_at"], mine[2]
    # the ids only grow
    assert [e["id"] for e in mine] == sorted(e["id"] for e in mine)
    # the admin saw (and caused) the user's creation
    admin_view = await _events(client, admin, resource_id=uid)
    assert admin_view and admin_view[-1]["actor_username"] == "admin"


async def test_vm_state_changes_are_lifecycle_events(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    uid, user = await make_user("vera", "operator")
    state = _state(client)
    (vm_id,) = await seed_vms(state, uid, ["stopped"])
    await lifecycle.set_state(state, vm_id, "starting", desired_state="running")
    await lifecycle.set_state(state, vm_id, "running", pid=1234)
    await lifecycle.set_state(state, vm_id, "running", pid=4321)  # bookkeeping only: no event
    evs = await _events(client, user, resource_id=vm_id, after=0)
    assert [e["type"] for e in evs] == ["vm.created", "vm.starting", "vm.started"], evs
    started = evs[-1]
    assert started["payload"]["previous_state"] == "starting"
    assert started["payload"]["state"] == "running"
    assert started["payload"]["desired_state"] == "running"
    assert started["actor_user_id"] is None  # the engine, not a person


async def test_rolled_back_changes_leave_no_event(
    client: httpx.AsyncClient, make_user: UserMaker, admin: dict[str, str]
) -> None:
    uid, _user = await make_user("rollo", "operator")
    state = _state(client)
    before = await _events(client, admin, after=0)
    with pytest.raises(RuntimeError):
        async with state.db.session() as s:
            s.add(
                Network(id=new_id("net"), name="ghost", cidr="10.77.0.0/24", created_by_user_id=uid)
            )
            await s.flush()
            raise RuntimeError("boom")
    # a savepoint rolled back inside a transaction that commits
    async with state.db.session() as s:
        try:
            async with s.begin_nested():
                s.add(
                    Network(
                        id=new_id("net"), name="ghost2", cidr="10.78.0.0/24", created_by_user_id=uid
                    )
                )
                await s.flush()
                raise RuntimeError("inner")
        except RuntimeError:
            pass
        s.add(Network(id=new_id("net"), name="real", cidr="10.79.0.0/24", created_by_user_id=uid))
    after = await _events(client, admin, after=before[-1]["id"] if before else 0)
    names = [e["resource_name"] for e in after if e["type"] == "network.created"]
    assert names == ["real"], after


async def test_users_see_only_their_events(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    a_id, _a = await make_user("alice", "operator")
    b_id, b = await make_user("bob", "operator")
    state = _state(client)
    (vm_a,) = await seed_vms(state, a_id, ["stopped"])
    (vm_b,) = await seed_vms(state, b_id, ["stopped"])
    seen_by_b = await _events(client, b, after=0)
    assert vm_b in {e["resource_id"] for e in seen_by_b}
    assert vm_a not in {e["resource_id"] for e in seen_by_b}
    assert all(e["owner_user_id"] == b_id or e["resource_type"] == "image" for e in seen_by_b)
    assert await _events(client, b, resource_id=vm_a) == []
    seen_by_admin = {e["resource_id"] for e in await _events(client, admin, after=0)}
    assert {vm_a, vm_b} <= seen_by_admin
    r = await client.get("/v1/events")
    assert r.status_code == 401


async def test_type_patterns_and_paging(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    uid, user = await make_user("pat", "operator")
    state = _state(client)
    ids = await seed_vms(state, uid, ["stopped"] * 5)
    for vm_id in ids:
        await lifecycle.set_state(state, vm_id, "failed")
    failed = await _events(client, user, type="*.failed", after=0)
    assert {e["resource_id"] for e in failed} == set(ids)
    vm_any = await _events(client, user, type=["vm.created", "vm.failed"], after=0)
    assert len(vm_any) == 10
    # newest first by default, paged with before
    r = await client.get("/v1/events", params={"limit": 3, "type": "vm.*"}, headers=user)
    page1 = r.json()
    assert len(page1["items"]) == 3 and page1["next_cursor"]
    r = await client.get(
        "/v1/events",
        params={"limit": 100, "type": "vm.*", "cursor": page1["next_cursor"]},
        headers=user,
    )
    rest = r.json()["items"]
    all_ids = [e["id"] for e in page1["items"] + rest]
    assert all_ids == sorted(all_ids, reverse=True) and len(all_ids) == 10
    for bad in ({"type": "vm;drop"}, {"after": "x"}, {"after": "1", "before": "2"}):
        r = await client.get("/v1/events", params=bad, headers=user)
        assert r.status_code in (400, 422), (bad, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_operations_emit_their_progress(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    _uid, user = await make_user("opal", "operator")
    state = _state(client)
    me = await _principal(client, user)
    async with state.db.session() as s:
        op = operations.create(s, principal=me, kind="test.fail")
    done: list[int] = []

    async def work(progress: Callable[[int, str | None], Awaitable[None]]) -> None:
        await progress(50, "half way")
        done.append(1)
        raise Conflict("it did not work")

    await operations.start(state, op.id, work)
    evs = await _events(client, user, resource_id=op.id, after=0)
    assert [e["type"] for e in evs] == [
        "operation.created",
        "operation.started",
        "operation.updated",
        "operation.failed",
    ], evs
    assert evs[2]["payload"]["progress"] == 50 and evs[2]["payload"]["message"] == "half way"
    assert evs[3]["payload"]["error"] == "it did not work"
    # ... and the failure is a notification for its creator
    r = await client.get("/v1/notifications/summary", headers=user)
    assert r.json()["unread"] >= 1
    r = await client.get("/v1/notifications", headers=user)
    body = r.json()
    kinds = [n["kind"] for n in body["items"]]
    assert "operation_failed" in kinds


async def _principal(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    from nexus.manager.platform.rbac import Principal

    r = await client.get("/v1/auth/me", headers=headers)
    assert r.status_code == 200, r.text
    me = r.json()["user"]
    return Principal(user_id=me["id"], username=me["username"], role=me["role"])


async def test_notifications_read_unread_and_preferences(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    uid, user = await make_user("nora", "operator")
    _oid, other = await make_user("otto", "operator")
    state = _state(client)
    ids = await seed_vms(state, uid, ["running", "running"])
    await lifecycle.set_state(state, ids[0], "failed")
    async with state.db.session() as s:  # the guest stopped on its own
        vm = await s.get(Vm, ids[1])
        assert vm is not None
        vm.desired_state = "running"
    await lifecycle.set_state(state, ids[1], "stopped")
    r = await client.get("/v1/notifications", headers=user)
    items = r.json()["items"]
    assert [n["kind"] for n in items] == ["vm_stopped_unexpectedly", "vm_failed"], items
    r = await client.get("/v1/notifications/summary", headers=user)
    assert r.json() == {"unread": 2, "total": 2}
    # the stream carries them, to this user only
    evs = await _events(client, user, type="notification.*", after=0)
    assert len(evs) == 2 and all(e["owner_user_id"] == uid for e in evs)
    assert await _events(client, other, type="notification.*", after=0) == []
    # read one; others may not touch it
    nid = items[0]["id"]
    r = await client.patch(f"/v1/notifications/{nid}", json={"read": True}, headers=other)
    assert r.status_code == 404
    r = await client.patch(f"/v1/notifications/{nid}", json={"read": True}, headers=user)
    assert r.status_code == 200 and r.json()["read_at"]
    r = await client.get("/v1/notifications", params={"unread": True}, headers=user)
    assert [n["id"] for n in r.json()["items"]] == [items[1]["id"]]
    r = await client.post("/v1/notifications/read-all", headers=user)
    assert r.json() == {"marked": 1}
    # mute a kind: no new notification of it
    r = await client.put(
        "/v1/notifications/preferences", json={"disabled_kinds": ["vm_failed"]}, headers=user
    )
    assert r.status_code == 200 and r.json()["disabled_kinds"] == ["vm_failed"]
    more = await seed_vms(state, uid, ["running"])
    await lifecycle.set_state(state, more[0], "failed")
    r = await client.get("/v1/notifications", params={"unread": True}, headers=user)
    assert r.json()["items"] == []
    r = await client.put(
        "/v1/notifications/preferences", json={"disabled_kinds": ["nonsense"]}, headers=user
    )
    assert r.status_code == 422
