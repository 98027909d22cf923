"""``nexus host metrics`` (the real script) and ``client.hosts.metrics`` against a real manager,
with a host registered and heartbeating over plain HTTP like an agent would."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from nexus.client import AsyncClient, Client
from tests.cli.conftest import ADMIN_PASSWORD, Runner
from tests.support.hosts import HOST_FACTS, LIVE_FACTS

# uptime 90061 s: the table shows it as "1d 1h 1m"
FACTS = {**HOST_FACTS, **LIVE_FACTS, "uptime_s": 90061.0}

KEYS = {
    "host_id",
    "name",
    "status",
    "sampled_at",
    "vcpus",
    "memory_mib",
    "mem_available_mib",
    "disk_free_mib",
    "disk_total_mib",
    "load_avg",
    "uptime_s",
    "vmm_rss_mib",
    "vm_count",
    "vm_counts",
    "allocated_vcpus",
    "allocated_memory_mib",
    "vcpu_overcommit",
    "vcpu_limit",
}


@pytest.fixture(autouse=True)
def _remove_hosts(manager_url: str) -> Iterator[None]:
    """The hosts made here stop heartbeating: left behind, they would make the shared
    manager's /health/ready unavailable (no healthy host) for the tests that come later."""
    yield
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        for host in c.hosts.list():
            if host.name.startswith("node-"):
                c.hosts.delete(host.id)


def _heartbeating_host(manager_url: str) -> tuple[str, str]:
    """Register a host named uniquely, send one heartbeat with live facts: (id, name)."""
    name = f"node-{uuid.uuid4().hex[:8]}"
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        token = c.hosts.join_token().token
    reg: Any = httpx.post(
        f"{manager_url}/v1/hosts/register",
        json={
            "join_token": token,
            "name": name,
            "agent_url": "http://192.0.2.1:9",
            "facts": FACTS,
        },
    )
    assert reg.status_code == 200, reg.text
    host = reg.json()
    r = httpx.post(
        f"{manager_url}/v1/hosts/{host['host_id']}/heartbeat",
        json={"facts": FACTS, "vms": []},
        headers={"Authorization": f"Bearer {host['host_token']}"},
    )
    assert r.status_code == 204, r.text
    return host["host_id"], name


def test_host_metrics_json_yaml_quiet_table(logged_in: Runner, manager_url: str) -> None:
    host_id, name = _heartbeating_host(manager_url)

    r = logged_in("-o", "json", "host", "metrics", name)
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert set(m) >= KEYS
    assert m["host_id"] == host_id and m["name"] == name and m["status"] == "healthy"
    assert m["load_avg"] == FACTS["load_avg"] and m["vmm_rss_mib"] == 300
    assert m["vm_count"] == 0 and m["vcpu_limit"] == 2 * m["vcpu_overcommit"]

    by_id = yaml.safe_load(logged_in("host", "metrics", host_id, "-o", "yaml").out)
    assert by_id["name"] == name and by_id["disk_total_mib"] == 40000

    assert logged_in("-q", "host", "metrics", name).out.split() == [host_id]

    table = logged_in("host", "metrics", name)
    assert table.code == 0, table.err
    assert "0.50 0.25 0.12" in table.out or "0.50 0.25 0.13" in table.out
    assert "1d 1h 1m" in table.out and "300 MiB" in table.out

    gone = logged_in("host", "metrics", "no-such-host")
    assert gone.code == 1 and "not found" in gone.err


def test_sdk_host_metrics(manager_url: str) -> None:
    host_id, name = _heartbeating_host(manager_url)
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        m = c.hosts.metrics(host_id)
    assert m.name == name and m.mem_available_mib == 1500 and m.uptime_s == 90061.0
    assert m.vm_counts.get("running") == 0


async def test_async_sdk_host_metrics(manager_url: str) -> None:
    host_id, _name = _heartbeating_host(manager_url)
    async with await AsyncClient.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        m = await c.hosts.metrics(host_id)
    assert m.host_id == host_id and m.disk_total_mib == 40000 and m.sampled_at is not None


def test_host_list_filters_and_leaders(logged_in: Runner, manager_url: str) -> None:
    host_id, name = _heartbeating_host(manager_url)
    r = logged_in("-q", "host", "list", "--name", name)
    assert r.code == 0, r.err
    assert r.out.split() == [host_id]
    assert (
        logged_in("-q", "host", "list", "--name", name, "--status", "unhealthy").out.split() == []
    )
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        assert [h.id for h in c.hosts.list(name=name, status="healthy")] == [host_id]
        loops = {lead.loop: lead for lead in c.hosts.leaders()}
    assert "reconciler" in loops and loops["reconciler"].live
    r = logged_in("-o", "json", "host", "leaders")
    assert r.code == 0, r.err
    assert "reconciler" in {item["loop"] for item in json.loads(r.out)}
