"""A fleet on one manager: host paging and filters, batched heartbeats, the loops' leaders
(admin only), the shared agent connection pool."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from nexus.hostapi.agent_client import AgentPool
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.platform.appstate import ManagerState
from tests.api.conftest import UserMaker
from tests.support.hosts import HOST_FACTS, LIVE_FACTS


async def _register(client: httpx.AsyncClient, admin: dict[str, str], name: str) -> dict[str, Any]:
    tok = (await client.post("/v1/hosts/join-tokens", headers=admin)).json()["token"]
    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": tok,
            "name": name,
            "agent_url": "http://10.0.0.1:8081",
            "facts": HOST_FACTS,
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_hosts_are_paged_and_filtered_in_the_database(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    for i in range(7):
        await _register(client, admin, f"node-{i:02d}")
    await _register(client, admin, "edge-1")
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.session() as s:
        row = (await s.execute(Host.__table__.select().where(Host.name == "node-03"))).first()
        assert row is not None
        host = await s.get(Host, row.id)
        assert host is not None
        host.drained = True

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/hosts", params=params, headers=admin)).json()
        seen += [h["name"] for h in page["items"]]
        assert len(page["items"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 8

    def names(r: httpx.Response) -> list[str]:
        assert r.status_code == 200, r.text
        return [h["name"] for h in r.json()["items"]]

    assert names(await client.get("/v1/hosts?name=node-0", headers=admin)) == [
        f"node-{i:02d}" for i in range(7)
    ]
    assert names(await client.get("/v1/hosts?status=draining", headers=admin)) == ["node-03"]
    assert len(names(await client.get("/v1/hosts?status=healthy", headers=admin))) == 7
    assert names(await client.get("/v1/hosts?status=unhealthy", headers=admin)) == []
    assert names(await client.get("/v1/hosts?driver=firecracker", headers=admin)) == []
    # a viewer gets summaries (no agent URL), paged the same way
    _, viewer = await make_user("fleet-viewer", "viewer")
    page = (await client.get("/v1/hosts?limit=2", headers=viewer)).json()
    assert len(page["items"]) == 2 and "agent_url" not in page["items"][0]
    bad = await client.get("/v1/hosts?cursor=bm9wZQ", headers=admin)
    assert bad.status_code == 422
    assert (await client.get("/v1/hosts?status=asleep", headers=admin)).status_code == 422


async def test_live_facts_are_batched_and_changes_written_at_once(
    client: httpx.AsyncClient, admin: dict[str, str], monkeypatch: Any
) -> None:
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    flush = hosts.flush_heartbeats

    async def not_now(_state: ManagerState) -> int:
        return 0

    monkeypatch.setattr(
        hosts, "flush_heartbeats", not_now
    )  # the app's 1 s flusher: this test flushes
    host = await _register(client, admin, "beat-1")
    hid, auth = host["host_id"], {"Authorization": f"Bearer {host['host_token']}"}

    async def beat(facts: dict[str, Any], vms: list[Any] | None = None) -> None:
        r = await client.post(
            f"/v1/hosts/{hid}/heartbeat", json={"facts": facts, "vms": vms or []}, headers=auth
        )
        assert r.status_code == 204, r.text

    async def stored() -> Host:
        async with state.db.session() as s:
            row = await s.get(Host, hid)
            assert row is not None
            return row

    await beat({**HOST_FACTS, **LIVE_FACTS})  # new facts: written at once
    facts = (await stored()).facts or {}
    assert {k: facts[k] for k in LIVE_FACTS} == LIVE_FACTS
    before = (await stored()).last_heartbeat_at
    await beat({**HOST_FACTS, **LIVE_FACTS, "uptime_s": 99999.0})  # only live facts: batched
    assert ((await stored()).facts or {})["uptime_s"] == LIVE_FACTS["uptime_s"]
    assert hid in state.extras["heartbeat_batch"]
    assert await flush(state) == 1
    row = await stored()
    assert (row.facts or {})["uptime_s"] == 99999.0
    assert before is not None and row.last_heartbeat_at is not None
    assert row.last_heartbeat_at > before
    await beat({**HOST_FACTS, **LIVE_FACTS, "vcpus": 4})  # capacity changed: at once
    assert (await stored()).vcpus == 4
    assert hid not in state.extras["heartbeat_batch"]
    # steady heartbeats are taken without reading the row; a wrong token is still refused
    await beat({**HOST_FACTS, **LIVE_FACTS, "vcpus": 4, "uptime_s": 5.0})
    assert state.extras["heartbeat_batch"][hid]["facts"]["uptime_s"] == 5.0
    r = await client.post(
        f"/v1/hosts/{hid}/heartbeat",
        json={"facts": {**HOST_FACTS, **LIVE_FACTS, "vcpus": 4}, "vms": []},
        headers={"Authorization": "Bearer not-the-host-token"},
    )
    assert r.status_code == 401
    # a deleted host's heartbeats are refused at once (on this replica; others within
    # KNOWN_HOST_TTL_S), and nothing of it is left in the batch
    assert (await client.delete(f"/v1/hosts/{hid}", headers=admin)).status_code == 204
    assert hid not in state.extras["heartbeat_batch"]
    r = await client.post(
        f"/v1/hosts/{hid}/heartbeat",
        json={"facts": {**HOST_FACTS, **LIVE_FACTS, "vcpus": 4}, "vms": []},
        headers=auth,
    )
    assert r.status_code == 401


async def test_leaders_are_listed_for_admins_only(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    assert (await client.get("/v1/system/leaders")).status_code == 401
    for role in ("viewer", "operator"):
        _, h = await make_user(f"lead-{role}", role)
        r = await client.get("/v1/system/leaders", headers=h)
        assert r.status_code == 403, r.text
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    for _ in range(50):
        r = await client.get("/v1/system/leaders", headers=admin)
        assert r.status_code == 200, r.text
        loops = {i["loop"]: i for i in r.json()["items"]}
        if {"reconciler", "guest-metrics", "policies"} <= set(loops):
            break
        await asyncio.sleep(0.1)
    assert {"reconciler", "guest-metrics", "policies"} <= set(loops), loops
    assert all(i["holder"] == state.replica_id and i["this_replica"] for i in loops.values())
    assert all(i["live"] for i in loops.values())
    assert r.headers["x-nexus-replica"] == state.replica_id
    denied = (await client.get("/v1/audit?limit=200", headers=admin)).json()["items"]
    assert any(e["action"] == "system.leaders.read" and e["outcome"] == "denied" for e in denied)


async def test_agent_clients_share_one_bounded_pool() -> None:
    """Every agent client is a view over one httpx pool; at most ``per_host`` calls run at
    once against one agent."""
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        assert request.headers["authorization"] == "Bearer tok-1"
        assert request.url.path == "/agent/1/v1/vms"
        return httpx.Response(200, json=[])

    pool = AgentPool(per_host=3, transport=httpx.MockTransport(handler))
    a = pool.client("http://10.0.0.1:8081/agent/1", "tok-1")
    b = pool.client("http://10.0.0.2:8081/agent/1", "tok-1")
    assert a._http is b._http  # one pool, one TLS context
    await asyncio.gather(*(a.list_vms() for _ in range(12)))
    assert peak == 3
    await a.aclose()  # a view: closing it leaves the pool open
    assert await b.list_vms() == []
    await pool.aclose()


async def test_the_reconciler_skips_agents_whose_fresh_heartbeat_agrees(
    client: httpx.AsyncClient, admin: dict[str, str], monkeypatch: Any
) -> None:
    from datetime import timedelta

    from nexus.core.timeutil import utcnow
    from nexus.manager.loops import reconciler
    from tests.api.conftest import bearer, register_host

    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    host = await register_host(client, admin, "node-hb")
    agent_vms: list[dict[str, Any]] = []
    calls: list[str] = []

    class Agent:
        async def list_vms(self) -> list[Any]:
            from nexus.hostapi.models import VmStatus

            calls.append("list")
            return [VmStatus.model_validate(v) for v in agent_vms]

        async def delete_vm(self, vm_id: str) -> None:
            calls.append(f"delete {vm_id}")

    monkeypatch.setattr(hosts, "agent_client", lambda _state, _host: Agent())
    state.extras["reconciler_no_grace"] = True

    async def beat(vms: list[dict[str, Any]]) -> None:
        body = {"facts": {**HOST_FACTS, **LIVE_FACTS}, "vms": vms}
        r = await client.post(
            f"/v1/hosts/{host['host_id']}/heartbeat", json=body, headers=bearer(host)
        )
        assert r.status_code == 204, r.text
        await hosts.flush_heartbeats(state)

    await reconciler.reconcile_once(state)
    assert calls == ["list"]  # never asked before: asked
    await reconciler.reconcile_once(state)
    assert calls == ["list"] * 2  # no heartbeat since the last call: asked again
    await beat([])
    counts = await reconciler.reconcile_once(state)
    assert calls == ["list"] * 2 and counts["skipped"] == 1  # a newer heartbeat agrees
    # a heartbeat naming a VM the database does not know: checked with a real call
    agent_vms.append({"id": "vm_stray", "state": "running"})
    await beat(agent_vms)
    await reconciler.reconcile_once(state)
    assert calls == ["list"] * 3 + ["delete vm_stray"]
    # agreeing heartbeats are trusted for reconcile_full_poll_s at most
    agent_vms.clear()
    await beat([])
    state.extras["reconciler_polled"][host["host_id"]] = utcnow() - timedelta(
        seconds=state.settings.reconcile_full_poll_s + 1
    )
    await beat([])
    await reconciler.reconcile_once(state)
    assert calls[-1] == "list" and len(calls) == 5


async def test_the_sampler_makes_one_call_per_host(
    client: httpx.AsyncClient, admin: dict[str, str], monkeypatch: Any
) -> None:
    from nexus.core.timeutil import utcnow
    from nexus.hostapi.agent_client import AgentNotFound
    from nexus.hostapi.models import HostVmMetrics, VmMetrics
    from nexus.manager.features.guest import service as guest_service
    from nexus.manager.features.guest.models import VmMetricSample
    from tests.api.conftest import register_host, seed_vms

    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    me = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    new = await register_host(client, admin, "node-new")
    old = await register_host(client, admin, "node-old")
    new_vms = await seed_vms(state, me, ["running", "running"], host_id=new["host_id"])
    old_vms = await seed_vms(state, me, ["running"], host_id=old["host_id"])
    calls: list[str] = []

    def sample(vm_id: str) -> VmMetrics:
        return VmMetrics(
            vm_id=vm_id, sampled_at=utcnow(), state="running", host=HostVmMetrics(cpu_percent=1.0)
        )

    class Agent:
        def __init__(self, host: Host) -> None:
            self.host = host

        async def all_vm_metrics(self) -> list[VmMetrics]:
            calls.append(f"all {self.host.name}")
            if self.host.name == "node-old":
                raise AgentNotFound(404, "about:blank", "Not Found")
            # a host speaks for its own VMs only: another host's VM id is dropped
            return [sample(v) for v in [*new_vms, old_vms[0]]]

        async def vm_metrics(self, vm_id: str) -> VmMetrics:
            calls.append(f"one {self.host.name}")
            return sample(vm_id)

    monkeypatch.setattr(hosts, "agent_client", lambda _state, host: Agent(host))
    assert await guest_service.sample_once(state) == 3
    assert sorted(calls) == ["all node-new", "all node-old", "one node-old"]
    async with state.db.session() as s:
        rows = (await s.execute(VmMetricSample.__table__.select())).all()
    assert sorted(r.vm_id for r in rows) == sorted([*new_vms, *old_vms])
