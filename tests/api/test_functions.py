"""Functions (issue 17) through the API, on a fake backend (no VMs; tests/vm has the real
ones): versions and aliases, invoke sync and async, structured errors, the timeout, size
limits, the concurrency limit with its bounded queue (429), scale to zero, RBAC, audit
and events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from nexus.manager.features.functions import pool as pools
from nexus.manager.features.functions import runtime
from nexus.manager.features.functions import service as functions
from nexus.manager.features.vms.models import Vm
from tests.support.fakefunctions import FakeBackend

from .conftest import UserMaker, seed_vms

DOUBLE = "def handler(event, context):\n    return event['x'] * 2\n"
RAISES = "def handler(event, context):\n    return 1 / 0\n"
SLEEPY = (
    "import time\n"
    "def handler(event, context):\n"
    "    time.sleep(event.get('sleep', 0))\n"
    "    return event.get('tag')\n"
)


@pytest.fixture
def fake(client: httpx.AsyncClient) -> FakeBackend:
    be = FakeBackend()
    client.app.state.nexus.extras[runtime.BACKEND_KEY] = be  # type: ignore[attr-defined]
    return be


async def make_fn(
    client: httpx.AsyncClient, h: dict[str, str], name: str, source: str = DOUBLE, **kw: Any
) -> Any:
    r = await client.post(
        "/v1/functions?wait=true",
        json={"name": name, "code": {"source": source}, **kw},
        headers=h,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_create_invoke_warm_and_versions(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker, fake: FakeBackend
) -> None:
    _, op = await make_user("ops", "operator")
    fn = await make_fn(client, op, "double")
    assert fn["version"]["state"] == "ready" and fn["aliases"] == {"latest": 1}
    assert fn["version"]["boot_ready_ms"] == 200 and fn["version"]["snapshot_id"]
    r = await client.post(f"/v1/functions/{fn['id']}/invoke", json={"event": {"x": 21}}, headers=op)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["result"] == 42 and first["cold_start"] is True and first["version"] == 1
    assert first["status"] == "succeeded" and first["logs_tail"] == "ran\n"
    r = await client.post("/v1/functions/double/invoke", json={"event": {"x": 1}}, headers=op)
    assert r.json()["result"] == 2 and r.json()["cold_start"] is False
    assert len(fake.started) == 1
    # a code change is a new immutable version; latest moves; version 1 stays invocable
    r = await client.patch(
        f"/v1/functions/{fn['id']}?wait=true",
        json={"code": {"source": DOUBLE.replace("* 2", "* 3")}},
        headers=op,
    )
    assert r.status_code == 200 and r.json()["latest_version"] == 2, r.text
    assert r.json()["aliases"]["latest"] == 2
    r = await client.post(f"/v1/functions/{fn['id']}/invoke", json={"event": {"x": 2}}, headers=op)
    assert r.json()["result"] == 6 and r.json()["version"] == 2
    r = await client.post(
        f"/v1/functions/{fn['id']}/invoke?version=1", json={"event": {"x": 2}}, headers=op
    )
    assert r.json()["result"] == 4 and r.json()["version"] == 1
    # a named alias
    r = await client.put(f"/v1/functions/{fn['id']}/aliases/prod", json={"version": 1}, headers=op)
    assert r.status_code == 200 and r.json()["aliases"] == {"latest": 2, "prod": 1}, r.text
    r = await client.post(
        f"/v1/functions/{fn['id']}/invoke?alias=prod", json={"event": {"x": 5}}, headers=op
    )
    assert r.json()["result"] == 10
    r = await client.delete(f"/v1/functions/{fn['id']}/aliases/latest", headers=op)
    assert r.status_code == 400
    r = await client.get(f"/v1/functions/{fn['id']}/versions", headers=op)
    assert [v["version"] for v in r.json()["items"]] == [2, 1]
    # scaling settings change in place: no new version
    r = await client.patch(f"/v1/functions/{fn['id']}", json={"concurrency": 2}, headers=op)
    assert r.json()["latest_version"] == 2 and r.json()["concurrency"] == 2
    # invocations and their logs
    r = await client.get(f"/v1/functions/{fn['id']}/invocations", headers=op)
    items = r.json()["items"]
    assert len(items) == 5 and items[-1]["id"] == first["id"]
    r = await client.get(f"/v1/functions/{fn['id']}/invocations/{first['id']}/logs", headers=op)
    assert r.json()["logs"] == "ran\n"
    # events and audit
    r = await client.get("/v1/events", params={"limit": 500, "type": "function*"}, headers=admin)
    types = {e["type"] for e in r.json()["items"]}
    assert {"function.created", "function_version.ready", "function_invocation.created"} <= types
    r = await client.get("/v1/audit", params={"action": "function.invoke"}, headers=admin)
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    # delete: VMs and snapshots go
    r = await client.delete(f"/v1/functions/{fn['id']}", headers=op)
    assert r.status_code == 204
    for _ in range(500):
        if not fake.code:
            break
        await asyncio.sleep(0.02)
    assert not fake.code and set(fake.started) <= set(fake.destroyed)
    assert (await client.get(f"/v1/functions/{fn['id']}", headers=op)).status_code == 404


async def test_errors_timeouts_and_sizes(
    client: httpx.AsyncClient, make_user: UserMaker, fake: FakeBackend
) -> None:
    _, op = await make_user("ops", "operator")
    fn = await make_fn(client, op, "boom", RAISES)
    r = await client.post(f"/v1/functions/{fn['id']}/invoke", json={"event": {}}, headers=op)
    assert r.status_code == 200, r.text
    err = r.json()["error"]
    assert r.json()["status"] == "error" and err["type"] == "ZeroDivisionError"
    assert "Traceback" in err["traceback"] and "in handler" in err["traceback"]
    # the VM survives a user exception
    assert fake.destroyed == []
    # oversize event: 413 problem+json
    big = {"blob": "x" * (functions.MAX_EVENT_BYTES + 10)}
    r = await client.post(f"/v1/functions/{fn['id']}/invoke", json={"event": big}, headers=op)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert "256" in r.text or str(functions.MAX_EVENT_BYTES) in r.json()["detail"]
    # oversize result: 413 too, recorded
    huge = "def handler(event, context):\n    return 'y' * (2 * 1024 * 1024)\n"
    fn2 = await make_fn(client, op, "huge", huge)
    r = await client.post(f"/v1/functions/{fn2['id']}/invoke", json={}, headers=op)
    assert r.status_code == 413 and "result" in r.json()["detail"], r.text
    assert r.json()["invocation_id"].startswith("inv_")
    # the timeout kills the handler and replaces its VM
    fn3 = await make_fn(client, op, "sleepy", SLEEPY, timeout_s=1)
    r = await client.post(
        f"/v1/functions/{fn3['id']}/invoke", json={"event": {"sleep": 3}}, headers=op
    )
    assert r.status_code == 200 and r.json()["status"] == "timed_out", r.text
    assert r.json()["error"]["type"] == "Timeout"
    vm = fake.started[-1]
    for _ in range(500):
        if vm in fake.destroyed:
            break
        await asyncio.sleep(0.02)
    assert vm in fake.destroyed
    r = await client.post(
        f"/v1/functions/{fn3['id']}/invoke", json={"event": {"tag": 1}}, headers=op
    )
    assert r.json()["result"] == 1 and r.json()["cold_start"] is True
    # bad code is refused before any VM; a failing import fails the version
    r = await client.post(
        "/v1/functions", json={"name": "bad", "code": {"source": "def ("}}, headers=op
    )
    assert r.status_code == 422
    bad = await make_fn(client, op, "bad", "import no_such_module_here\n")
    assert bad["version"]["state"] == "failed"
    assert "no_such_module_here" in bad["version"]["state_reason"]
    r = await client.post(f"/v1/functions/{bad['id']}/invoke", json={}, headers=op)
    assert r.status_code == 409


async def test_concurrency_queue_and_async(
    client: httpx.AsyncClient, make_user: UserMaker, fake: FakeBackend
) -> None:
    _, op = await make_user("ops", "operator")
    fn = await make_fn(client, op, "q", SLEEPY, concurrency=2, max_instances=2, max_queue=8)

    async def call(i: int) -> httpx.Response:
        return await client.post(
            f"/v1/functions/{fn['id']}/invoke",
            json={"event": {"sleep": 0.2, "tag": i}},
            headers=op,
            timeout=30,
        )

    began = time.monotonic()
    rs = await asyncio.gather(*(call(i) for i in range(10)))
    assert [r.status_code for r in rs] == [200] * 10
    assert sorted(r.json()["result"] for r in rs) == list(range(10))
    assert len(fake.started) == 2  # never more VMs than the limit; one invocation per VM
    assert time.monotonic() - began >= 0.2 * 5 * 0.9
    # a full queue answers 429
    r = await client.patch(f"/v1/functions/{fn['id']}", json={"max_queue": 1}, headers=op)
    rs = await asyncio.gather(*(call(i) for i in range(5)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(429) >= 1 and codes.count(200) >= 3, codes
    r429 = next(r for r in rs if r.status_code == 429)
    assert r429.headers["content-type"] == "application/problem+json"
    assert r429.headers.get("retry-after") == "1"
    # the limit may change while invocations wait for a slot
    r = await client.patch(
        f"/v1/functions/{fn['id']}", json={"max_queue": 8, "concurrency": 1}, headers=op
    )
    waiting = [asyncio.create_task(call(i)) for i in range(4)]
    await asyncio.sleep(0.1)
    r = await client.patch(f"/v1/functions/{fn['id']}", json={"concurrency": 2}, headers=op)
    assert r.status_code == 200
    assert [r.status_code for r in await asyncio.gather(*waiting)] == [200] * 4
    # async invoke: 202 + id, the result later
    r = await client.post(
        f"/v1/functions/{fn['id']}/invoke?async=true", json={"event": {"tag": "a"}}, headers=op
    )
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    inv = r.json()["id"]
    deadline = asyncio.get_running_loop().time() + 60  # (a loaded machine is slow)
    while True:
        got = (await client.get(f"/v1/functions/{fn['id']}/invocations/{inv}", headers=op)).json()
        if got["status"] not in ("queued", "running"):
            break
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.02)
    assert got["status"] == "succeeded" and got["result"] == "a" and got["mode"] == "async"


async def test_scale_to_zero_and_min_warm(
    client: httpx.AsyncClient, make_user: UserMaker, fake: FakeBackend
) -> None:
    _, op = await make_user("ops", "operator")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    fn = await make_fn(client, op, "warm", min_warm=1, idle_s=5)
    await functions.keep_pools(state)
    assert len(fake.started) == 1
    r = await client.post(f"/v1/functions/{fn['id']}/invoke", json={"event": {"x": 1}}, headers=op)
    assert r.json()["cold_start"] is False  # the warm VM took it
    # min_warm 0: idle past idle_s -> scaled to zero
    await client.patch(f"/v1/functions/{fn['id']}", json={"min_warm": 0}, headers=op)
    await functions.keep_pools(state, now=time.monotonic() + 10)
    assert fake.destroyed == fake.started
    assert pools.pools(state)[fn["id"]].instances == []
    r = await client.get(f"/v1/functions/{fn['id']}", headers=op)
    assert r.json()["warm"] == 0


async def test_rbac(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker, fake: FakeBackend
) -> None:
    _, owner = await make_user("owner", "operator")
    _, other = await make_user("other", "operator")
    _, viewer = await make_user("viewer", "viewer")
    fn = await make_fn(client, owner, "mine")
    for method, path, body in (
        ("GET", f"/v1/functions/{fn['id']}", None),
        ("PATCH", f"/v1/functions/{fn['id']}", {"concurrency": 3}),
        ("DELETE", f"/v1/functions/{fn['id']}", None),
        ("POST", f"/v1/functions/{fn['id']}/invoke", {"event": {"x": 1}}),
        ("GET", f"/v1/functions/{fn['id']}/invocations", None),
        ("GET", "/v1/functions/mine", None),
    ):
        r = await client.request(method, path, json=body, headers=other)
        assert r.status_code == 404, (method, path, r.text)
    assert (await client.get("/v1/functions", headers=other)).json()["items"] == []
    r = await client.post(
        "/v1/functions", json={"name": "v", "code": {"source": DOUBLE}}, headers=viewer
    )
    assert r.status_code == 403
    # the admin sees and may invoke it
    r = await client.post(
        f"/v1/functions/{fn['id']}/invoke", json={"event": {"x": 4}}, headers=admin
    )
    assert r.status_code == 200 and r.json()["result"] == 8
    assert (await client.get("/v1/functions", headers=admin)).json()["items"][0]["id"] == fn["id"]
    assert fake.calls == 1


async def test_leftover_vms_of_a_previous_process_are_deleted(
    client: httpx.AsyncClient, make_user: UserMaker, fake: FakeBackend
) -> None:
    """Pools live in memory: at start-up the VMs of functions a previous process left are
    deleted — only those of a function of the same owner, not any VM with the label."""
    uid, op = await make_user("ops", "operator")
    other_id, _ = await make_user("other", "operator")
    fn = await make_fn(client, op, "left")
    state = client.app.state.nexus  # type: ignore[attr-defined]
    ids = await seed_vms(state, uid, ["running"], labels={runtime.LABEL: fn["id"]})
    foreign = await seed_vms(state, other_id, ["running"], labels={runtime.LABEL: fn["id"]})
    async with state.db.session() as s:
        for i, vm_id in enumerate([*ids, *foreign]):
            (await s.get(Vm, vm_id)).name = f"fn-left-{i}"  # type: ignore[union-attr]
    assert await functions.cleanup_leftovers(state) == 1
    assert fake.destroyed == ids
