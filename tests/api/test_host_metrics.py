"""GET /v1/hosts/{host_id}/metrics: the live facts of a host's last heartbeat, its VMs by
state and its allocation, readable by any authenticated user."""

from __future__ import annotations

from typing import Any

import httpx

from nexus.manager.features.hosts.service import VCPU_OVERCOMMIT
from nexus.manager.features.vms.states import VM_STATES
from nexus.manager.platform.appstate import ManagerState
from tests.api.conftest import UserMaker, bearer, register_host, seed_vms
from tests.support.hosts import HOST_FACTS as FACTS
from tests.support.hosts import LIVE_FACTS as LIVE


async def test_metrics_after_heartbeat(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    host = await register_host(client, admin, "metrics-a")
    hid = host["host_id"]
    r = await client.post(
        f"/v1/hosts/{hid}/heartbeat",
        json={"facts": {**FACTS, **LIVE}, "vms": []},
        headers=bearer(host),
    )
    assert r.status_code == 204, r.text
    state: ManagerState = client.app.state.nexus  # type: ignore[attr-defined]
    admin_id = (await client.get("/v1/auth/me", headers=admin)).json()["user"]["id"]
    await seed_vms(state, admin_id, ["running", "running", "stopped"], host_id=hid, vcpus=2)

    _, viewer = await make_user("vic", "viewer")  # a plain user may read host facts ...
    r = await client.get(f"/v1/hosts/{hid}/metrics", headers=viewer)
    assert r.status_code == 200, r.text
    seen = r.json()  # ... but counts only their own VMs (none): not other tenants'
    assert seen["vm_count"] == 0 and seen["allocated_vcpus"] == 0
    assert seen["load_avg"] == LIVE["load_avg"] and seen["vcpus"] == FACTS["vcpus"]
    r = await client.get(f"/v1/hosts/{hid}/metrics", headers=admin)
    assert r.status_code == 200, r.text
    m: dict[str, Any] = r.json()
    assert m["host_id"] == hid and m["name"] == "metrics-a" and m["status"] == "healthy"
    assert m["sampled_at"] is not None
    for key, value in LIVE.items():
        assert m[key] == value, key
    assert m["vcpus"] == FACTS["vcpus"] and m["memory_mib"] == FACTS["memory_mib"]
    assert m["disk_free_mib"] == FACTS["disk_free_mib"]
    assert set(m["vm_counts"]) == set(VM_STATES)
    assert m["vm_counts"]["running"] == 2 and m["vm_counts"]["stopped"] == 1
    assert sum(m["vm_counts"].values()) == m["vm_count"] == 3
    assert m["allocated_vcpus"] == 6 and m["allocated_memory_mib"] == 768
    assert m["vcpu_overcommit"] == VCPU_OVERCOMMIT
    assert m["vcpu_limit"] == FACTS["vcpus"] * VCPU_OVERCOMMIT

    # draining shows as in the host list
    assert (await client.post(f"/v1/hosts/{hid}/drain", headers=admin)).status_code == 200
    r = await client.get(f"/v1/hosts/{hid}/metrics", headers=admin)
    assert r.json()["status"] == "draining"
    listed = (await client.get("/v1/hosts", headers=admin)).json()["items"]
    assert [h["status"] for h in listed if h["id"] == hid] == ["draining"]


async def test_metrics_of_an_agent_without_live_facts(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """An older agent (no live fields): they are null, counts and allocation are zero."""
    host = await register_host(client, admin, "metrics-old")
    r = await client.get(f"/v1/hosts/{host['host_id']}/metrics", headers=admin)
    assert r.status_code == 200, r.text
    m = r.json()
    assert all(m[key] is None for key in LIVE)
    assert m["vm_count"] == 0 and not any(m["vm_counts"].values())
    assert m["allocated_vcpus"] == 0 and m["allocated_memory_mib"] == 0


async def test_metrics_needs_credentials_and_a_known_host(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    host = await register_host(client, admin, "metrics-b")
    r = await client.get(f"/v1/hosts/{host['host_id']}/metrics")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    # the host's own token is not a user credential
    r = await client.get(f"/v1/hosts/{host['host_id']}/metrics", headers=bearer(host))
    assert r.status_code == 401
    r = await client.get("/v1/hosts/host_missing/metrics", headers=admin)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "host_missing" in r.json()["detail"]
