"""Guest endpoints without a real guest: authentication before the WebSocket upgrade,
RBAC (viewers: no exec, no shell), single-use tickets, audit, metrics queries.

WebSockets are driven through the ASGI app directly (with the ``websocket.http.response``
extension, so refusals are real HTTP statuses).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from nexus.core.ids import new_id
from nexus.core.timeutil import utcnow
from nexus.manager.features.guest import service as guest_service
from nexus.manager.features.guest.models import VmMetricSample
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.images.models import Image
from nexus.manager.features.vms.models import Vm

from .conftest import UserMaker

AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@dataclass
class WsOutcome:
    """How the app answered a WebSocket upgrade."""

    status: int | None = None  # HTTP status of a refused upgrade
    body: dict[str, Any] = field(default_factory=dict)
    accepted: bool = False
    close_code: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


async def ws_attempt(
    client: httpx.AsyncClient,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    linger: float = 0.0,
) -> WsOutcome:
    """Open a WebSocket on the ASGI app; return once it is refused, closed or accepted
    (after ``linger`` seconds of collecting messages)."""
    app = client.app  # type: ignore[attr-defined]
    out = WsOutcome()
    decided = asyncio.Event()
    gone = asyncio.Event()
    hdrs = [(b"host", b"nexus.test")] + [
        (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()
    ]
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": hdrs,
        "client": ("10.9.8.7", 5000),
        "server": ("nexus.test", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "state": {},
    }
    sent_connect = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_connect
        if not sent_connect:
            sent_connect = True
            return {"type": "websocket.connect"}
        await gone.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        t = message["type"]
        out.messages.append(message)
        if t == "websocket.http.response.start":
            out.status = message["status"]
        elif t == "websocket.http.response.body":
            if message.get("body"):
                out.body = json.loads(message["body"])
            if not message.get("more_body"):
                decided.set()
        elif t == "websocket.accept":
            out.accepted = True
            decided.set()
        elif t == "websocket.close":
            out.close_code = message.get("code", 1000)
            decided.set()

    task = asyncio.ensure_future(app(scope, receive, send))
    await asyncio.wait_for(decided.wait(), 15)
    if linger:
        await asyncio.sleep(linger)
    gone.set()
    try:
        await asyncio.wait_for(task, 5)
    except TimeoutError:
        task.cancel()
    return out


async def add_vm(client: httpx.AsyncClient, owner_id: str, *, state: str = "running") -> str:
    """Insert a host (unreachable agent), an image and a VM owned by ``owner_id``."""
    db = client.app.state.nexus.db  # type: ignore[attr-defined]
    vm_id = new_id("vm")
    async with db.session() as s:
        host = Host(
            id=new_id("hst"),
            name=f"h-{vm_id[-6:]}",
            agent_url="http://127.0.0.1:9",
            agent_token="t" * 40,
            host_token_hash="0" * 64,
            created_by_user_id=owner_id,
        )
        img = Image(
            id=new_id("img"),
            name=f"i-{vm_id[-6:]}",
            source="import",
            kernel_sha256="a" * 64,
            rootfs_sha256="b" * 64,
            path="/nonexistent",
            created_by_user_id=owner_id,
        )
        s.add_all([host, img])
        await s.flush()
        s.add(
            Vm(
                id=vm_id,
                name=f"vm-{vm_id[-6:]}",
                vcpus=1,
                memory_mib=128,
                image_id=img.id,
                host_id=host.id,
                desired_state="running",
                state=state,
                created_by_user_id=owner_id,
            )
        )
    return vm_id


async def audit_rows(client: httpx.AsyncClient, admin: dict[str, str], **params: str) -> list[Any]:
    r = await client.get("/v1/audit", params=params, headers=admin)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


@pytest.fixture
async def people(
    client: httpx.AsyncClient, make_user: UserMaker
) -> dict[str, tuple[str, dict[str, str]]]:
    return {
        "owner": await make_user("olivia", "operator"),
        "other": await make_user("oscar", "operator"),
        "viewer": await make_user("vera", "viewer"),
    }


EXEC = {"command": ["uname", "-a"], "timeout_s": 5}


async def test_exec_auth_and_rbac(
    client: httpx.AsyncClient, admin: dict[str, str], people: dict[str, Any]
) -> None:
    owner_id, owner = people["owner"]
    viewer_id, viewer = people["viewer"]
    _, other = people["other"]
    vm = await add_vm(client, owner_id)
    viewer_vm = await add_vm(client, viewer_id)

    assert (await client.post(f"/v1/vms/{vm}/exec", json=EXEC)).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert (await client.post(f"/v1/vms/{vm}/exec", json=EXEC, headers=bad)).status_code == 401
    # someone else's VM: not visible
    r = await client.post(f"/v1/vms/{vm}/exec", json=EXEC, headers=other)
    assert r.status_code == 404, r.text
    assert (
        await client.post("/v1/vms/vm_missing/exec", json=EXEC, headers=owner)
    ).status_code == 404
    # a viewer may see their VM but never exec in it: 403, audited as denied
    r = await client.post(f"/v1/vms/{viewer_vm}/exec", json=EXEC, headers=viewer)
    assert r.status_code == 403, r.text
    rows = await audit_rows(client, admin, resource_id=viewer_vm, action="vm.exec")
    assert rows and rows[0]["outcome"] == "denied"
    # bad bodies
    r = await client.post(f"/v1/vms/{vm}/exec", json={"command": []}, headers=owner)
    assert r.status_code == 422
    both = {**EXEC, "stdin": "x", "stdin_base64": "eA=="}
    assert (await client.post(f"/v1/vms/{vm}/exec", json=both, headers=owner)).status_code == 422
    # the owner passes the checks; the (fake) host agent is unreachable -> 502, but audited
    r = await client.post(f"/v1/vms/{vm}/exec", json=EXEC, headers=owner)
    assert r.status_code == 502, r.text
    rows = await audit_rows(client, admin, resource_id=vm, action="vm.exec")
    assert rows[0]["outcome"] == "success" and rows[0]["after"]["argv"] == ["uname", "-a"]


async def test_exec_needs_running_vm(
    client: httpx.AsyncClient, admin: dict[str, str], people: dict[str, Any]
) -> None:
    owner_id, owner = people["owner"]
    vm = await add_vm(client, owner_id, state="stopped")
    r = await client.post(f"/v1/vms/{vm}/exec", json=EXEC, headers=owner)
    assert r.status_code == 409, r.text
    # admins may exec in anyone's VM (same 409 here: stopped)
    assert (await client.post(f"/v1/vms/{vm}/exec", json=EXEC, headers=admin)).status_code == 409


async def test_ticket_rbac(
    client: httpx.AsyncClient, admin: dict[str, str], people: dict[str, Any]
) -> None:
    owner_id, owner = people["owner"]
    viewer_id, viewer = people["viewer"]
    _, other = people["other"]
    vm = await add_vm(client, owner_id)
    viewer_vm = await add_vm(client, viewer_id)
    assert (await client.post(f"/v1/vms/{vm}/shell/ticket")).status_code == 401
    assert (await client.post(f"/v1/vms/{vm}/shell/ticket", headers=other)).status_code == 404
    assert (await client.post("/v1/vms/vm_x/shell/ticket", headers=owner)).status_code == 404
    r = await client.post(f"/v1/vms/{viewer_vm}/shell/ticket", headers=viewer)
    assert r.status_code == 403
    rows = await audit_rows(client, admin, resource_id=viewer_vm, action="vm.shell")
    assert rows and rows[0]["outcome"] == "denied"
    # viewers may follow the console / metrics of what they see
    r = await client.post(
        f"/v1/vms/{viewer_vm}/shell/ticket", json={"purpose": "console"}, headers=viewer
    )
    assert r.status_code == 201, r.text
    r = await client.post(f"/v1/vms/{vm}/shell/ticket", headers=owner)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["ticket"].startswith("nxt_") and body["ws_path"] == f"/v1/vms/{vm}/shell/ws"


async def test_shell_ws_refused_before_upgrade(
    client: httpx.AsyncClient, admin: dict[str, str], people: dict[str, Any]
) -> None:
    owner_id, owner = people["owner"]
    viewer_id, viewer = people["viewer"]
    _, other = people["other"]
    vm = await add_vm(client, owner_id)
    viewer_vm = await add_vm(client, viewer_id)
    path = f"/v1/vms/{vm}/shell/ws"

    out = await ws_attempt(client, path)
    assert (out.status, out.accepted) == (401, False)
    out = await ws_attempt(client, path, headers={"Authorization": "Bearer junk"})
    assert out.status == 401 and not out.accepted
    out = await ws_attempt(client, path, query="ticket=nxt_forged")
    assert out.status == 401
    out = await ws_attempt(client, path, headers=other)
    assert out.status == 404
    out = await ws_attempt(client, f"/v1/vms/{viewer_vm}/shell/ws", headers=viewer)
    assert out.status == 403 and not out.accepted
    assert out.body["type"].endswith("/forbidden")
    rows = await audit_rows(client, admin, resource_id=viewer_vm, action="vm.shell")
    assert rows and rows[0]["outcome"] == "denied"
    # the owner gets past authentication: the (unreachable) host agent answers 502
    out = await ws_attempt(client, path, headers=owner)
    assert out.status == 502, out.body
    # console and metrics: the viewer passes (read-only)
    out = await ws_attempt(client, f"/v1/vms/{viewer_vm}/console/ws", headers=viewer)
    assert out.status == 502
    out = await ws_attempt(client, f"/v1/vms/{viewer_vm}/metrics/ws", headers=viewer, linger=0.1)
    assert out.accepted


async def test_ticket_single_use_and_scoped(
    client: httpx.AsyncClient, people: dict[str, Any]
) -> None:
    owner_id, owner = people["owner"]
    vm = await add_vm(client, owner_id, state="stopped")
    vm2 = await add_vm(client, owner_id, state="stopped")
    # wrong VM / wrong purpose are refused, and spend the ticket (issue 12: single use even
    # on refusal)
    for path in (f"/v1/vms/{vm2}/shell/ws", f"/v1/vms/{vm}/console/ws"):
        r = await client.post(f"/v1/vms/{vm}/shell/ticket", headers=owner)
        out = await ws_attempt(client, path, query=f"ticket={r.json()['ticket']}")
        assert out.status == 401
    ticket = (await client.post(f"/v1/vms/{vm}/shell/ticket", headers=owner)).json()["ticket"]
    # first use: authenticated (the VM is stopped: 409 after authentication)
    out = await ws_attempt(client, f"/v1/vms/{vm}/shell/ws", query=f"ticket={ticket}")
    assert out.status == 409, out.body
    # second use: refused
    out = await ws_attempt(client, f"/v1/vms/{vm}/shell/ws", query=f"ticket={ticket}")
    assert out.status == 401
    assert "used" in out.body["detail"]


async def test_ticket_expires(app_factory: AppFactory, make_user: Any) -> None:
    client = await app_factory(ws_ticket_ttl_s=0.2)
    from .conftest import ADMIN_PASSWORD, login

    admin = await login(client, "admin", ADMIN_PASSWORD)
    r = await client.get("/v1/auth/me", headers=admin)
    admin_id = r.json()["user"]["id"]
    vm = await add_vm(client, admin_id, state="stopped")
    ticket = (await client.post(f"/v1/vms/{vm}/shell/ticket", headers=admin)).json()["ticket"]
    await asyncio.sleep(0.4)
    out = await ws_attempt(client, f"/v1/vms/{vm}/shell/ws", query=f"ticket={ticket}")
    assert out.status == 401 and "expired" in out.body["detail"]


async def test_metrics_latest_history_and_stream(
    client: httpx.AsyncClient, people: dict[str, Any]
) -> None:
    owner_id, owner = people["owner"]
    _, other = people["other"]
    vm = await add_vm(client, owner_id, state="stopped")
    assert (await client.get(f"/v1/vms/{vm}/metrics")).status_code == 401
    assert (await client.get(f"/v1/vms/{vm}/metrics", headers=other)).status_code == 404
    assert (await client.get(f"/v1/vms/{vm}/metrics/history", headers=other)).status_code == 404
    assert (await client.get(f"/v1/vms/{vm}/metrics", headers=owner)).status_code == 404
    db = client.app.state.nexus.db  # type: ignore[attr-defined]
    now = utcnow().replace(microsecond=0)
    base = now - timedelta(seconds=now.second % 60) - timedelta(minutes=5)
    async with db.session() as s:
        for i in range(10):  # two per minute, five minutes
            s.add(
                VmMetricSample(
                    vm_id=vm,
                    sampled_at=base + timedelta(seconds=30 * i),
                    cpu_percent=float(i),
                    rss_bytes=1000 * i,
                    mem_used_bytes=100,
                )
            )
    r = await client.get(f"/v1/vms/{vm}/metrics", headers=owner)
    assert r.status_code == 200 and r.json()["cpu_percent"] == 9.0
    r = await client.get(
        f"/v1/vms/{vm}/metrics/history",
        params={"since": (base - timedelta(seconds=1)).isoformat(), "step": 60},
        headers=owner,
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    assert len(points) == 5
    assert [p["cpu_percent"] for p in points] == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert points[0]["rss_bytes"] == 500 and points[0]["mem_used_bytes"] == 100
    raw = (
        await client.get(f"/v1/vms/{vm}/metrics/history", params={"step": 1}, headers=owner)
    ).json()["points"]
    assert len(raw) == 10
    out = await ws_attempt(client, f"/v1/vms/{vm}/metrics/ws", headers=owner, linger=0.2)
    assert out.accepted
    frames = [json.loads(m["text"]) for m in out.messages if m["type"] == "websocket.send"]
    assert frames and frames[0]["cpu_percent"] == 9.0
    out = await ws_attempt(client, f"/v1/vms/{vm}/metrics/ws")
    assert out.status == 401


async def test_retention_and_sampler_with_no_hosts(client: httpx.AsyncClient) -> None:
    state = client.app.state.nexus  # type: ignore[attr-defined]
    assert await guest_service.sample_once(state) == 0
