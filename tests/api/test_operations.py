"""Operations: lifecycle, waiting, visibility, interrupted on restart."""

from __future__ import annotations

import asyncio

import httpx

from nexus.manager.features.operations import service as operations
from nexus.manager.platform.appstate import ManagerState
from tests.api.conftest import UserMaker


async def _principal(state: ManagerState, username: str):  # type: ignore[no-untyped-def]
    from nexus.manager.features.auth.service import principal_for
    from nexus.manager.features.users import repo

    async with state.db.session() as s:
        return principal_for(await repo.get_by_username(s, username))


async def test_operation_runs_and_wait_returns_result(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    p = await _principal(state, "admin")
    async with state.db.session() as s:
        op = operations.create(s, principal=p, kind="test.sleep")
    gate = asyncio.Event()

    async def work(progress):  # type: ignore[no-untyped-def]
        await progress(50, "half way")
        await gate.wait()
        return {"answer": 42}

    operations.start(state, op.id, work)
    # the progress write is the task's own; wait for it (no fixed sleep: the machine is noisy)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        r = (await client.get(f"/v1/operations/{op.id}", headers=admin)).json()
        if r["progress"] == 50 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert r["status"] == "running" and r["progress"] == 50 and r["message"] == "half way"
    r = (await client.get(f"/v1/operations/{op.id}?wait=true&timeout=0.3", headers=admin)).json()
    assert r["status"] == "running"
    gate.set()
    r = (await client.get(f"/v1/operations/{op.id}?wait=true&timeout=5", headers=admin)).json()
    assert r["status"] == "succeeded" and r["result"] == {"answer": 42} and r["progress"] == 100
    _, other = await make_user("opal", "operator")
    assert (await client.get(f"/v1/operations/{op.id}", headers=other)).status_code == 404
    assert (await client.get("/v1/operations", headers=other)).json()["items"] == []


async def test_failed_and_cancelled_operations(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    p = await _principal(state, "admin")
    async with state.db.session() as s:
        bad = operations.create(s, principal=p, kind="test.fail")
        slow = operations.create(s, principal=p, kind="test.slow")

    async def boom(progress):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire")

    async def forever(progress):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)

    operations.start(state, bad.id, boom)
    operations.start(state, slow.id, forever)
    r = (await client.get(f"/v1/operations/{bad.id}?wait=true&timeout=5", headers=admin)).json()
    assert r["status"] == "failed" and "disk on fire" in r["error"]
    await asyncio.sleep(0.1)
    r = await client.post(f"/v1/operations/{slow.id}/cancel", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await client.post(f"/v1/operations/{slow.id}/cancel", headers=admin)).status_code == 409


async def test_interrupted_operations_fail_on_restart(app_factory) -> None:  # type: ignore[no-untyped-def]
    c1 = await app_factory()
    state: ManagerState = c1.app.state.nexus
    p = await _principal(state, "admin")
    async with state.db.session() as s:
        op = operations.create(s, principal=p, kind="test.left-running")
        op.status = "running"
    c2 = await app_factory()  # a new manager process on the same database
    from tests.api.conftest import ADMIN_PASSWORD, login

    h = await login(c2, "admin", ADMIN_PASSWORD)
    r = (await c2.get(f"/v1/operations/{op.id}", headers=h)).json()
    assert r["status"] == "failed" and "interrupted" in r["error"]
