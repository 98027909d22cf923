"""Admin-set ceilings (issue 11, finding 8) and the guest-channel disconnect reason
(finding 4) on the manager side.

A hostile tenant asks for a 256 GiB / 32 vCPU VM, fifty 1 TiB volumes, an exec with a 64 MiB
output cap or a 24 h timeout, more concurrent execs than allowed, or disks bigger than any
host's free space: each is refused with a problem+json that names the limit. The host agent
is faked where a request would reach it (exec, VM listing for the reconciler).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.client import InsufficientStorage
from nexus.client._errors import error_from_response
from nexus.hostapi.models import AgentExecRequest, AgentExecResult, VmStatus
from nexus.manager.features.hosts import service as hosts_service
from nexus.manager.features.vms.models import Vm
from nexus.manager.loops import reconciler

from .conftest import UserMaker, import_image, register_host, seed_vms
from .test_guest_api import add_vm

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]
PROBLEM = "application/problem+json"


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    return body


async def test_oversized_vm_is_refused_with_the_limit(
    client: httpx.AsyncClient, make_user: UserMaker, tmp_path: Path, admin: dict[str, str]
) -> None:
    await register_host(client, admin, "big-host")
    await import_image(client, admin, tmp_path)
    alice_id, alice = await make_user("alice", "operator")
    base = {"name": "huge", "image": "tiny", "start": False}

    r = await client.post(
        "/v1/vms", json={**base, "vcpus": 32, "memory_mib": 256 * 1024}, headers=alice
    )
    body = problem(r, 422)
    assert "max_vm_vcpus" in body["detail"] and "8" in body["detail"]
    assert body["limit"] == 8
    assert body["errors"][0]["loc"] == ["body", "vcpus"]

    r = await client.post("/v1/vms", json={**base, "memory_mib": 256 * 1024}, headers=alice)
    assert "max_vm_memory_mib" in problem(r, 422)["detail"]

    r = await client.post("/v1/vms", json={**base, "disk_size_mib": 1024 * 1024}, headers=alice)
    assert "max_vm_disk_mib" in problem(r, 422)["detail"]

    # nothing was created
    r = await client.get("/v1/vms", headers=alice)
    assert r.status_code == 200 and r.json()["items"] == []

    # a resize over the ceiling is refused the same way
    state = client.app.state.nexus  # type: ignore[attr-defined]
    (vm_id,) = await seed_vms(state, alice_id, ["stopped"])
    r = await client.patch(f"/v1/vms/{vm_id}", json={"vcpus": 32}, headers=alice)
    assert "max_vm_vcpus" in problem(r, 422)["detail"]
    r = await client.patch(f"/v1/vms/{vm_id}", json={"vcpus": 2}, headers=alice)
    assert r.status_code == 200, r.text


async def test_ceilings_are_settings(app_factory: AppFactory, tmp_path: Path) -> None:
    """An administrator may raise (or lower) a ceiling."""
    client = await app_factory(max_vm_vcpus=2)
    from .conftest import login

    admin = await login(client, "admin", "admin-pass-123")
    r = await client.post(
        "/v1/vms", json={"name": "three", "vcpus": 3, "start": False}, headers=admin
    )
    body = problem(r, 422)
    assert "max_vm_vcpus" in body["detail"] and body["limit"] == 2


async def test_root_disk_needs_free_disk_on_a_host(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    """The test host reports 10000 MiB free; a 20000 MiB root disk (under the 64 GiB
    ceiling) fits on no host: 507 naming the free space and the reserve."""
    await register_host(client, admin, "small-disk")
    await import_image(client, admin, tmp_path)
    r = await client.post(
        "/v1/vms",
        json={"name": "fat", "image": "tiny", "disk_size_mib": 20000, "start": False},
        headers=admin,
    )
    body = problem(r, 507)
    assert "small-disk" in body["detail"] and "20000" in body["detail"]
    assert body["available_mib"] == 10000 - 1024


async def test_fifty_one_tib_volumes_are_refused(
    client: httpx.AsyncClient, make_user: UserMaker
) -> None:
    _, alice = await make_user("alice", "operator")
    for i in range(50):
        r = await client.post(
            "/v1/volumes", json={"name": f"v{i}", "size_mib": 1024 * 1024}, headers=alice
        )
        body = problem(r, 422)
        assert "max_volume_mib" in body["detail"] and "131072" in body["detail"]
    r = await client.get("/v1/volumes", headers=alice)
    assert r.status_code == 200 and r.json()["items"] == []


async def test_volume_larger_than_any_hosts_free_disk_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker
) -> None:
    await register_host(client, admin, "h1")
    _, alice = await make_user("alice", "operator")
    r = await client.post("/v1/volumes", json={"name": "big", "size_mib": 20000}, headers=alice)
    body = problem(r, 507)
    assert "h1" in body["detail"] and "reserve" in body["detail"]
    # the SDK turns it into its own exception, with the numbers
    err = error_from_response(r)
    assert isinstance(err, InsufficientStorage) and err.body["needed_mib"] == 20000
    # within the host's room: created
    r = await client.post("/v1/volumes", json={"name": "ok", "size_mib": 4000}, headers=alice)
    assert r.status_code == 201, r.text
    # growing it past the ceiling: 422
    vol = r.json()["id"]
    r = await client.patch(f"/v1/volumes/{vol}", json={"size_mib": 200000}, headers=alice)
    assert "max_volume_mib" in problem(r, 422)["detail"]


@pytest.fixture
async def owner(make_user: UserMaker) -> tuple[str, dict[str, str]]:
    return await make_user("olivia", "operator")


async def test_exec_over_output_or_timeout_ceiling_is_refused(
    client: httpx.AsyncClient, owner: tuple[str, dict[str, str]]
) -> None:
    owner_id, headers = owner
    vm = await add_vm(client, owner_id)
    r = await client.post(
        f"/v1/vms/{vm}/exec",
        json={"command": ["cat", "/dev/zero"], "max_output_bytes": 64 * 1024 * 1024},
        headers=headers,
    )
    body = problem(r, 422)
    assert "max_exec_output_bytes" in body["detail"] and str(16 * 1024 * 1024) in body["detail"]
    r = await client.post(
        f"/v1/vms/{vm}/exec",
        json={"command": ["sleep", "inf"], "timeout_s": 86400},
        headers=headers,
    )
    body = problem(r, 422)
    assert "max_exec_timeout_s" in body["detail"] and "3600" in body["detail"]


class BlockingAgent:
    """A fake agent client whose exec waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.requests: list[AgentExecRequest] = []

    async def exec_vm(self, vm_id: str, req: AgentExecRequest) -> AgentExecResult:
        self.requests.append(req)
        self.running += 1
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return AgentExecResult(
            exit_code=0,
            stdout_b64=base64.b64encode(b"ok").decode(),
            stderr_b64="",
            duration_ms=1,
            timed_out=False,
            truncated=False,
        )


async def test_concurrent_execs_per_user_are_limited(
    app_factory: AppFactory, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await app_factory(max_concurrent_execs_per_user=2)
    from .conftest import ADMIN_PASSWORD, login

    admin = await login(client, "admin", ADMIN_PASSWORD)
    agent = BlockingAgent()
    monkeypatch.setattr(hosts_service, "agent_client", lambda _state, _host: agent)

    async def user(name: str) -> tuple[str, dict[str, str]]:
        r = await client.post(
            "/v1/users",
            json={"username": name, "password": f"{name}-password", "role": "operator"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        return r.json()["id"], await login(client, name, f"{name}-password")

    olivia_id, olivia = await user("olivia")
    oscar_id, oscar = await user("oscar")
    vm = await add_vm(client, olivia_id)
    other_vm = await add_vm(client, oscar_id)
    run = {"command": ["sleep", "1"], "timeout_s": 30}

    first = [
        asyncio.ensure_future(client.post(f"/v1/vms/{vm}/exec", json=run, headers=olivia))
        for _ in range(2)
    ]
    for _ in range(500):
        if agent.running == 2:
            break
        await asyncio.sleep(0.01)
    assert agent.running == 2
    r = await client.post(f"/v1/vms/{vm}/exec", json=run, headers=olivia)
    body = problem(r, 429)
    assert "max_concurrent_execs_per_user" in body["detail"] and body["limit"] == 2
    assert r.headers.get("retry-after")
    # another user is not affected
    third = asyncio.ensure_future(client.post(f"/v1/vms/{other_vm}/exec", json=run, headers=oscar))
    for _ in range(500):
        if agent.running == 3:
            break
        await asyncio.sleep(0.01)
    assert agent.running == 3
    agent.release.set()
    for fut in [*first, third]:
        assert (await fut).status_code == 200
    # the slots are free again
    r = await client.post(f"/v1/vms/{vm}/exec", json=run, headers=olivia)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "ok"
    # the refused exec left no "vm.exec" audit row: 2 concurrent + the last one
    r = await client.get(
        "/v1/audit", params={"resource_id": vm, "action": "vm.exec"}, headers=admin
    )
    assert len(r.json()["items"]) == 3


async def test_guest_channel_disconnect_reaches_state_reason_and_audit(
    client: httpx.AsyncClient, admin: dict[str, str], owner: tuple[str, dict[str, str]]
) -> None:
    """The agent reports why it cut a flooding guest off; the reconciler copies it into the
    VM's ``state_reason`` (state unchanged) and writes an audit row with the system as actor,
    once."""
    state = client.app.state.nexus  # type: ignore[attr-defined]
    owner_id, headers = owner
    host = await register_host(client, admin, "h-guest")
    vm_id = await add_vm(client, owner_id)
    async with state.db.session() as s:
        row = await s.get(Vm, vm_id)
        assert row is not None
        row.host_id = host["host_id"]
    reason = "the guest flooded its channel with unsolicited traffic (stream-0 STDOUT)"

    class Agent:
        async def list_vms(self) -> list[VmStatus]:
            return [
                VmStatus(id=vm_id, state="running", guest_ready=True, guest_channel_error=reason)
            ]

    state.extras["agent_clients"] = {}
    orig = hosts_service.agent_client
    hosts_service.agent_client = lambda _s, _h: Agent()  # type: ignore[assignment,return-value]
    try:
        await reconciler.reconcile_once(state)
        await reconciler.reconcile_once(state)  # no second audit row for the same reason
    finally:
        hosts_service.agent_client = orig

    r = await client.get(f"/v1/vms/{vm_id}", headers=headers)
    assert r.status_code == 200
    vm = r.json()
    assert vm["state"] == "running"
    assert vm["state_reason"] and reason in vm["state_reason"]
    r = await client.get(
        "/v1/audit",
        params={"resource_id": vm_id, "action": "vm.guest.disconnected"},
        headers=admin,
    )
    rows = r.json()["items"]
    assert len(rows) == 1
    assert rows[0]["actor_user_id"] is None
    assert reason in str(rows[0]["after"])
