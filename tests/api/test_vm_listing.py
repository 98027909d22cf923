"""The VM listing: visibility, filters, pagination, and the listing cache never serving a
page that a local write made stale."""

from __future__ import annotations

import httpx
from sqlalchemy import update

from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.appstate import ManagerState
from tests.api.conftest import UserMaker, seed_vms


async def test_listing_visibility_pagination_filters_and_cache(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    a_id, a = await make_user("alma", "operator")
    b_id, b = await make_user("bert", "operator")
    await seed_vms(state, a_id, ["stopped"] * 3, labels={"team": "red"})
    await seed_vms(state, b_id, ["stopped"] * 2)

    async def count(url: str, h: dict[str, str]) -> int:
        page = (await client.get(url, headers=h)).json()
        assert page["next_cursor"] is None
        return len(page["items"])

    page = (await client.get("/v1/vms", headers=a)).json()
    assert len(page["items"]) == 3 and {v["created_by_user_id"] for v in page["items"]} == {a_id}
    assert await count("/v1/vms", admin) == 5
    assert await count(f"/v1/vms?owner={b_id}", admin) == 2
    p1 = (await client.get("/v1/vms?limit=2", headers=admin)).json()
    p2 = (await client.get(f"/v1/vms?limit=2&cursor={p1['next_cursor']}", headers=admin)).json()
    p3 = (await client.get(f"/v1/vms?limit=2&cursor={p2['next_cursor']}", headers=admin)).json()
    assert len(p1["items"]) == 2 and not {v["id"] for v in p1["items"]} & {
        v["id"] for v in p2["items"]
    }
    assert len(p3["items"]) == 1 and p3["next_cursor"] is None
    assert await count("/v1/vms?label=team=red", admin) == 3
    assert await count("/v1/vms?label=team=red&limit=2&cursor=" + p1["next_cursor"], admin) == 1
    assert await count("/v1/vms?label=team=blue", admin) == 0
    # a local ORM write is visible at once, though the page above was cached
    [new] = await seed_vms(state, b_id, ["stopped"])
    assert await count("/v1/vms", b) == 3
    # so is a bulk UPDATE statement
    async with state.db.session() as s:
        await s.execute(update(Vm).where(Vm.id == new).values(state="failed"))
    items = (await client.get("/v1/vms?state=failed", headers=b)).json()["items"]
    assert [v["id"] for v in items] == [new]
    first = (await client.get("/v1/vms", headers=b)).json()["items"][0]
    assert first["id"] == new and first["state"] == "failed"


async def test_listing_cache_refreshes_in_the_background() -> None:
    """Expiry never makes a request wait for the database: the previous page is served
    while one background refresh runs; a local write, or a page older than two TTLs, is
    recomputed in line."""
    import asyncio

    from nexus.manager.features.vms.listcache import ListingCache

    cache = ListingCache()
    calls = 0
    gate = asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()  # a slow database
        return f"page-{calls}".encode()

    ttl = 1.0  # generous: a loaded CI machine must not push a step past the grace window
    assert await cache.get_or_compute("k", ttl, compute) == b"page-1"
    assert await cache.get_or_compute("k", ttl, compute) == b"page-1" and calls == 1
    await asyncio.sleep(ttl + 0.1)  # expired, within the grace of one TTL
    # served at once although the refresh is stuck in the "database"
    for _ in range(3):
        got = await asyncio.wait_for(cache.get_or_compute("k", ttl, compute), 0.5)
        assert got == b"page-1"
    assert calls == 2  # one refresh for all those callers
    gate.set()
    await asyncio.sleep(0.01)
    assert await cache.get_or_compute("k", ttl, compute) == b"page-2"
    # a local write drops the entry: the next caller computes in line
    cache.bump()
    assert await cache.get_or_compute("k", ttl, compute) == b"page-3"
    # too old to serve even once more: computed in line
    await asyncio.sleep(2 * ttl + 0.1)
    assert await cache.get_or_compute("k", ttl, compute) == b"page-4"


async def test_search_by_name_is_case_blind_literal_and_still_scoped(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    a_id, a = await make_user("sina", "operator")
    b_id, b = await make_user("tomo", "operator")
    [web, _] = await seed_vms(state, a_id, ["stopped", "stopped"])
    [other] = await seed_vms(state, b_id, ["stopped"])
    async with state.db.session() as s:
        await s.execute(update(Vm).where(Vm.id == web).values(name="Web_Front-1"))
        await s.execute(update(Vm).where(Vm.id == other).values(name="web-back"))

    async def ids(url: str, h: dict[str, str]) -> set[str]:
        r = await client.get(url, headers=h)
        assert r.status_code == 200, r.text
        return {v["id"] for v in r.json()["items"]}

    assert await ids("/v1/vms?q=WEB", a) == {web}  # the other owner's VM stays hidden
    assert await ids("/v1/vms?q=web", admin) == {web, other}
    assert await ids(f"/v1/vms?q=web&owner={b_id}", admin) == {other}
    assert await ids("/v1/vms?q=b_f", a) == {web}  # "_" is literal, not a wildcard
    assert await ids("/v1/vms?q=%25", admin) == set()  # so is "%"
    assert await ids("/v1/vms?q=b-f", b) == set()
    r = await client.get("/v1/vms?q=", headers=a)
    assert r.status_code == 422
