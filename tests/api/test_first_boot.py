"""SSH keys and user data at create (issue 20): validation, never shown in reads, RBAC as
before, and the first-boot loop against a fake agent (the real guest: tests/vm)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentError
from nexus.hostapi.models import AgentExecRequest, AgentExecResult
from nexus.manager.features.audit.models import AuditEvent
from nexus.manager.features.guest import firstboot
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.vms.models import Vm

from .conftest import UserMaker, import_image, register_host


def ssh_key(kind: str = "ssh-ed25519", comment: str = "me@laptop") -> str:
    """A well-formed public key of ``kind`` (random key bytes: the API checks the shape)."""
    name = kind.encode()
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes(range(32))
    return f"{kind} {base64.b64encode(blob).decode()} {comment}".strip()


SCRIPT = "#!/bin/sh\necho hello > /root/hello\n"


async def _setup(client: httpx.AsyncClient, admin: dict[str, str], tmp: Path) -> None:
    await register_host(client, admin, "h1")
    img = await import_image(client, admin, tmp)
    r = await client.patch(f"/v1/images/{img['id']}", json={"public": True}, headers=admin)
    assert r.status_code == 200, r.text


async def _create(
    client: httpx.AsyncClient, h: dict[str, str], name: str, **kw: Any
) -> httpx.Response:
    body = {"name": name, "image": "tiny", "start": False, "memory_mib": 128, **kw}
    return await client.post("/v1/vms", json=body, headers=h)


async def _settle(client: httpx.AsyncClient, h: dict[str, str], r: httpx.Response) -> str:
    """Wait for the create operation to end (it fails: no real agent), so that it does not
    race the state these tests set by hand; returns the VM id."""
    op_id = r.json()["id"]
    for _ in range(200):
        op = (await client.get(f"/v1/operations/{op_id}", headers=h)).json()
        if op["status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"operation still {op['status']}")
    return _vm_id(r)


def _vm_id(r: httpx.Response) -> str:
    body = r.json()
    return str(body.get("resource_id") or body["id"])


async def test_keys_and_user_data_are_stored_but_never_shown(
    client: httpx.AsyncClient, admin: dict[str, str], make_user: UserMaker, tmp_path: Path
) -> None:
    await _setup(client, admin, tmp_path)
    _, alice = await make_user("alice", "operator")
    _, viewer = await make_user("vera", "viewer")
    keys = [ssh_key(), ssh_key("ssh-rsa", ""), ssh_key("ecdsa-sha2-nistp256", "ci key")]
    secret = "#!/bin/sh\necho TOPSECRET-42 > /root/x\n"
    r = await _create(client, alice, "box", ssh_keys=keys, user_data=secret)
    assert r.status_code in (200, 201, 202), r.text
    vm_id = _vm_id(r)
    got = (await client.get(f"/v1/vms/{vm_id}", headers=alice)).json()
    assert got["first_boot"] == {"ssh_keys": 3, "user_data": True, "done_at": None, "error": None}
    listed = (await client.get("/v1/vms", headers=admin)).text
    for text in (str(got), listed, (await client.get(f"/v1/vms/{vm_id}", headers=admin)).text):
        assert "TOPSECRET" not in text and "AAAA" not in text
    audit_rows = (await client.get("/v1/audit", headers=admin)).text
    assert "TOPSECRET" not in audit_rows
    state = client.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        assert vm is not None and vm.first_boot_spec == {"ssh_keys": keys, "user_data": secret}
    # a VM without them shows null
    r = await _create(client, alice, "plain")
    assert (await client.get(f"/v1/vms/{_vm_id(r)}", headers=alice)).json()["first_boot"] is None
    # RBAC as before: a viewer may not create VMs, with or without keys
    r = await _create(client, viewer, "nope", ssh_keys=[ssh_key()])
    assert r.status_code == 403, r.text
    # nor see alice's VM
    assert (await client.get(f"/v1/vms/{vm_id}", headers=viewer)).status_code in (403, 404)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("ssh_keys", ["not a key"], "unknown key type 'not'"),
        ("ssh_keys", ["ssh-ed25519"], "OpenSSH public key"),
        ("ssh_keys", ["ssh-dss AAAAB3NzaC1kc3MAAACBAP"], "unknown key type"),
        ("ssh_keys", [ssh_key() + "\nssh-ed25519 AAAA"], "single-line"),
        ("ssh_keys", ["ssh-ed25519 AAAA!!!!"], "OpenSSH public key"),
        ("ssh_keys", [ssh_key(comment="a\x00b")], "single-line"),
        ("ssh_keys", ["ssh-ed25519 " + ssh_key("ssh-rsa").split()[1]], "not a 'ssh-ed25519'"),
        ("ssh_keys", ["ssh-ed25519 Zm9v"], "not a 'ssh-ed25519'"),
        ("ssh_keys", [ssh_key(comment="x" * 9000)], "longer than"),
        ("ssh_keys", [ssh_key(comment=f"k{i}") for i in range(21)], "at most 20"),
        ("user_data", "x" * (64 * 1024 + 1), "longer than"),
        ("user_data", "a\x00b", "NUL"),
    ],
)
async def test_bad_keys_and_user_data_are_422(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    tmp_path: Path,
    field: str,
    value: Any,
    needle: str,
) -> None:
    await _setup(client, admin, tmp_path)
    r = await _create(client, admin, "bad", **{field: value})
    assert r.status_code == 422, r.text
    assert needle.lower() in r.text.lower(), r.text
    assert (await client.get("/v1/vms", headers=admin)).json()["items"] == []


async def test_user_data_at_the_limit_is_accepted(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    await _setup(client, admin, tmp_path)
    keys = [ssh_key(comment=f"k{i}") for i in range(20)]
    r = await _create(client, admin, "big", ssh_keys=keys, user_data="x" * 64 * 1024)
    assert r.status_code in (200, 201, 202), r.text
    got = (await client.get(f"/v1/vms/{_vm_id(r)}", headers=admin)).json()["first_boot"]
    assert got["ssh_keys"] == 20 and got["user_data"] is True


def _stop_loop(state: Any) -> None:
    """Cancel the app's own first-boot loop: these tests run its ticks by hand."""
    loops = [t for t in state.tasks if t.get_name() == firstboot.LEASE]
    assert len(loops) == 1  # the start-up hook started it
    loops[0].cancel()


class FakeAgent:
    """Records execs; answers with ``exit_code`` (the last one: the script's run)."""

    def __init__(self, script_exit: int = 0) -> None:
        self.calls: list[AgentExecRequest] = []
        self.script_exit = script_exit

    async def exec_vm(self, vm_id: str, req: AgentExecRequest) -> AgentExecResult:
        self.calls.append(req)
        run = req.argv[-1] == "run"
        out = b"script says hi\n" if run else b""
        return AgentExecResult(
            exit_code=self.script_exit if run else 0,
            stdout_b64=base64.b64encode(out).decode(),
            stderr_b64="",
            duration_ms=3,
            timed_out=False,
            truncated=False,
        )


@pytest.mark.parametrize("script_exit", [0, 3])
async def test_the_loop_applies_once_and_records_the_outcome(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script_exit: int,
) -> None:
    await _setup(client, admin, tmp_path)
    key = ssh_key()
    r = await _create(client, admin, "box", ssh_keys=[key], user_data=SCRIPT)
    vm_id = await _settle(client, admin, r)
    fake = FakeAgent(script_exit)
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    _stop_loop(state)
    # not running yet: nothing happens
    assert await firstboot.apply_pending(state) == 0
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        assert vm is not None
        vm.state, vm.ready_at = "running", utcnow()
        host = await s.get(Host, vm.host_id)
        assert host is not None
        host.last_heartbeat_at = utcnow()
    assert await firstboot.apply_pending(state) == 1
    keys_call, data_call, run_call = fake.calls
    assert base64.b64decode(keys_call.stdin_b64).decode() == key + "\n"
    assert "authorized_keys" in keys_call.argv[2]
    assert base64.b64decode(data_call.stdin_b64).decode() == SCRIPT
    assert run_call.argv[-1] == "run" and "first-boot.done" in run_call.argv[2]
    got = (await client.get(f"/v1/vms/{vm_id}", headers=admin)).json()["first_boot"]
    assert got["done_at"] is not None
    if script_exit:
        assert got["error"] == "user-data script: exit code 3: script says hi"
    else:
        assert got["error"] is None
    async with state.db.session() as s:
        rows = (
            (await s.execute(select(AuditEvent).where(AuditEvent.action == "vm.first_boot")))
            .scalars()
            .all()
        )
        assert len(rows) == 1 and rows[0].resource_id == vm_id
        assert rows[0].outcome == ("failure" if script_exit else "success")
    # done: the next tick leaves it alone
    assert await firstboot.apply_pending(state) == 0
    assert len(fake.calls) == 3


async def test_plain_user_data_is_written_not_run(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _setup(client, admin, tmp_path)
    r = await _create(client, admin, "box", user_data="token=abc\n")
    vm_id = await _settle(client, admin, r)
    fake = FakeAgent()
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    _stop_loop(state)
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        assert vm is not None
        vm.state, vm.ready_at = "running", utcnow()
        host = await s.get(Host, vm.host_id)
        assert host is not None
        host.last_heartbeat_at = utcnow()
    assert await firstboot.apply_pending(state) == 1
    assert [c.argv[-1] for c in fake.calls] == ["nexus-first-boot", "write"]
    assert "/var/lib/nexus/user-data" in fake.calls[0].argv[2]


async def test_an_unreachable_guest_stays_pending_and_is_tried_again(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _setup(client, admin, tmp_path)
    r = await _create(client, admin, "box", ssh_keys=[ssh_key()])
    vm_id = await _settle(client, admin, r)
    fake = FakeAgent()
    down = True

    async def exec_vm(vm_id: str, req: AgentExecRequest) -> AgentExecResult:
        if down:
            raise AgentError(0, "unreachable", "connection refused")
        return await FakeAgent.exec_vm(fake, vm_id, req)

    monkeypatch.setattr(fake, "exec_vm", exec_vm)
    monkeypatch.setattr(hosts, "agent_client", lambda state, host: fake)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    _stop_loop(state)
    async with state.db.session() as s:
        vm = await s.get(Vm, vm_id)
        assert vm is not None
        vm.state, vm.ready_at = "running", utcnow()
        host = await s.get(Host, vm.host_id)
        assert host is not None
        host.last_heartbeat_at = utcnow()
    assert await firstboot.apply_pending(state) == 1
    got = (await client.get(f"/v1/vms/{vm_id}", headers=admin)).json()["first_boot"]
    assert got["done_at"] is None and "guest not reachable" in got["error"], got
    down = False
    assert await firstboot.apply_pending(state) == 1
    got = (await client.get(f"/v1/vms/{vm_id}", headers=admin)).json()["first_boot"]
    assert got["done_at"] is not None and got["error"] is None, got
    assert [c.argv[-1] for c in fake.calls] == ["nexus-first-boot", "write"]
