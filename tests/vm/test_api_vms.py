"""VMs through the public API with a real manager process and real guests (QEMU TCG here).

One manager with the embedded agent serves the module: image build -> create?wait=true ->
console banner -> pause/resume -> stop/start -> delete leaves nothing on the host. A second
test runs the agent as its own process and kills it with SIGKILL in the middle of a create.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from nexus.agent.storage.disks import backing_file, disk_format
from tests.support.aio import all_in_one, build_image
from tests.support.receiver import Receiver
from tests.support.server import BIN, LiveServer, free_port, login, start_manager, wait_op

from .conftest import qemu_pids_under

pytestmark = pytest.mark.vm
PW = "vm-api-admin-pw"


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict, str]]:
    """An all-in-one manager (embedded agent) with the test image in its catalogue."""
    env = {
        "NEXUS_RECONCILE_INTERVAL_S": "1",
        "NEXUS_STOP_TIMEOUT_S": "15",
        "NEXUS_WEBHOOK_ALLOWLIST": '["127.0.0.1"]',
        "NEXUS_WEBHOOK_INTERVAL_S": "0.2",
    }
    state = tmp_path_factory.mktemp("aio") / "state"
    with all_in_one(state, admin_password=PW, env=env, image="test") as a:
        yield a.srv, a.h, a.image_id


def test_all_in_one_registers_a_healthy_host(aio: tuple[LiveServer, dict, str]) -> None:
    srv, h, _ = aio
    hosts = httpx.get(f"{srv.url}/v1/hosts", headers=h).json()["items"]
    assert len(hosts) == 1 and hosts[0]["status"] == "healthy"
    assert hosts[0]["driver"] == "qemu" and hosts[0]["accel"] in ("tcg", "kvm")
    assert httpx.get(f"{srv.url}/health/ready").json()["checks"]["hosts"] == "1/1 healthy"


def test_a_real_vm_start_reaches_a_signed_webhook(aio: tuple[LiveServer, dict, str]) -> None:
    srv, h, _ = aio
    receiver = Receiver().start()
    try:
        r = httpx.post(
            f"{srv.url}/v1/webhooks",
            json={"name": "vmhook", "url": receiver.url, "events": ["vm.started"]},
            headers=h,
        )
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        time.sleep(0.5)
        r = httpx.post(
            f"{srv.url}/v1/vms?wait=true",
            json={"name": "hooked", "image": "test", "memory_mib": 128},
            headers=h,
            timeout=300,
        )
        assert r.status_code in (200, 201), r.text
        vm_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not receiver.got:
            time.sleep(0.2)
        assert receiver.got, "no webhook for vm.started"
        got = receiver.got[0]
        body = Verifier(secret).verify(got.body, got.headers)
        assert body["type"] == "vm.started" and body["data"]["resource_id"] == vm_id
        assert body["data"]["payload"]["state"] == "running"
        r = httpx.delete(f"{srv.url}/v1/vms/{vm_id}", headers=h)
        assert r.status_code == 202, r.text
        wait_op(srv, h, r.json())
    finally:
        receiver.stop()


def test_vm_lifecycle_through_the_api(aio: tuple[LiveServer, dict, str]) -> None:
    srv, h, image_id = aio
    t0 = time.monotonic()
    r = httpx.post(
        f"{srv.url}/v1/vms?wait=true",
        json={"name": "life", "image": "test", "memory_mib": 128},
        headers=h,
        timeout=300,
    )
    boot_s = time.monotonic() - t0
    assert r.status_code == 200, r.text
    vm = r.json()
    print(f"\nPOST /v1/vms?wait=true -> running in {boot_s:.2f} s")
    assert vm["state"] == "running" and vm["ready_at"] and vm["pid"] and vm["image_id"] == image_id
    vm_dir = srv.state_dir / "vms" / vm["id"]
    assert vm_dir.is_dir() and vm["pid"] in qemu_pids_under(vm_dir)
    # its own copy-on-write root disk: a qcow2 overlay over the (untouched) image rootfs
    disk = vm_dir / "disk.img"
    image_rootfs = (srv.state_dir / "images" / image_id / "rootfs.ext4").resolve()
    assert disk_format(disk) == "qcow2" and backing_file(disk) == image_rootfs
    assert disk.stat().st_blocks * 512 < image_rootfs.stat().st_blocks * 512
    console = httpx.get(f"{srv.url}/v1/vms/{vm['id']}/console?tail=200", headers=h).text
    assert "NEXUS-GUEST-BOOTED" in console

    def act(action: str, **params: str) -> dict:
        q = "&".join(f"{k}={v}" for k, v in {"wait": "true", **params}.items())
        resp = httpx.post(f"{srv.url}/v1/vms/{vm['id']}/{action}?{q}", headers=h, timeout=120)
        assert resp.status_code == 200, resp.text
        return resp.json()

    assert act("pause")["state"] == "paused"
    r = httpx.post(f"{srv.url}/v1/vms/{vm['id']}/pause", headers=h)
    assert r.status_code == 409 and "paused" in r.json()["detail"]
    assert act("resume")["state"] == "running"
    assert act("stop")["state"] == "stopped"
    assert not qemu_pids_under(vm_dir)
    assert act("start")["state"] == "running"
    # the audit log has the whole story
    actions = [
        e["action"]
        for e in httpx.get(f"{srv.url}/v1/audit?resource_id={vm['id']}&limit=50", headers=h).json()[
            "items"
        ]
    ]
    for a in ("vm.create", "vm.pause", "vm.resume", "vm.stop", "vm.start"):
        assert a in actions
    r = httpx.delete(f"{srv.url}/v1/vms/{vm['id']}?wait=true", headers=h, timeout=120)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{srv.url}/v1/vms/{vm['id']}", headers=h).status_code == 404
    assert not vm_dir.exists() and not qemu_pids_under(srv.state_dir / "vms")


def test_vm_rbac(aio: tuple[LiveServer, dict, str]) -> None:
    srv, h, _ = aio
    for name, role in (("opa", "operator"), ("opb", "operator"), ("vie", "viewer")):
        httpx.post(
            f"{srv.url}/v1/users",
            json={"username": name, "password": f"{name}-password", "role": role},
            headers=h,
        ).raise_for_status()

    def login(name: str) -> dict[str, str]:
        r = httpx.post(
            f"{srv.url}/v1/auth/login", json={"username": name, "password": f"{name}-password"}
        )
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    a, b, v = login("opa"), login("opb"), login("vie")
    r = httpx.post(
        f"{srv.url}/v1/vms", json={"name": "mine", "image": "test", "start": False}, headers=a
    )
    assert r.status_code == 202, r.text
    vm_id = r.json()["resource_id"]
    wait_op(srv, a, r.json())
    assert httpx.get(f"{srv.url}/v1/vms/{vm_id}", headers=b).status_code == 404
    assert httpx.post(f"{srv.url}/v1/vms/{vm_id}/start", headers=b).status_code == 404
    assert httpx.get(f"{srv.url}/v1/vms", headers=b).json()["items"] == []
    r = httpx.post(f"{srv.url}/v1/vms", json={"name": "nope", "image": "test"}, headers=v)
    assert r.status_code == 403
    assert len(httpx.get(f"{srv.url}/v1/vms", headers=h).json()["items"]) >= 1
    r = httpx.post(f"{srv.url}/v1/vms", json={"name": "mine", "image": "test"}, headers=a)
    assert r.status_code == 409 and "already have a VM" in r.json()["detail"]
    r = httpx.patch(f"{srv.url}/v1/vms/{vm_id}", json={"memory_mib": 192}, headers=a)
    assert r.status_code == 200 and r.json()["memory_mib"] == 192
    r = httpx.delete(f"{srv.url}/v1/vms/{vm_id}?wait=true", headers=a, timeout=60)
    assert r.status_code == 200


def test_guest_that_cannot_boot_fails_with_console_tail(
    aio: tuple[LiveServer, dict, str], tmp_path: Path
) -> None:
    srv, h, image_id = aio
    img = httpx.get(f"{srv.url}/v1/images/{image_id}", headers=h).json()
    src = Path(srv.state_dir / "images" / img["id"])
    empty = tmp_path / "empty.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(empty), "16M"], check=True)
    r = httpx.post(
        f"{srv.url}/v1/images",
        json={
            "name": "no-init",
            "kernel_path": str(src / "vmlinuz"),
            "initrd_path": str(src / "initrd.img"),
            "rootfs_path": str(empty),
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    r = httpx.post(
        f"{srv.url}/v1/vms?wait=true",
        json={"name": "broken", "image": "no-init", "memory_mib": 128},
        headers=h,
        timeout=200,
    )
    assert r.status_code == 409 and r.json()["type"].endswith("operation-failed"), r.text
    vm = httpx.get(f"{srv.url}/v1/vms", headers=h, params={"state": "failed"}).json()["items"][0]
    assert vm["name"] == "broken" and "console tail" in vm["state_reason"]
    r = httpx.delete(f"{srv.url}/v1/images/{vm['image_id']}", headers=h)
    assert r.status_code == 409  # still used by the failed VM
    r = httpx.delete(f"{srv.url}/v1/vms/{vm['id']}?wait=true", headers=h, timeout=60)
    assert r.status_code == 200
    assert httpx.delete(f"{srv.url}/v1/images/{vm['image_id']}", headers=h).status_code == 204


def test_agent_killed_during_create_leaves_no_orphans(tmp_path: Path) -> None:
    """kill -9 of a separate agent process mid-create: the VM ends running or failed (with a
    reason) and, after deleting it, nothing is left on the host."""
    srv = start_manager(
        tmp_path / "mgr",
        admin_password=PW,
        env={"NEXUS_RECONCILE_INTERVAL_S": "1", "NEXUS_ALLOW_LOOPBACK_AGENTS": "true"},
    )
    agent_state = tmp_path / "agent"
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")} | {
        "NEXUS_STATE_DIR": str(agent_state),
        "NEXUS_CACHE_DIR": os.environ.get("NEXUS_TEST_CACHE_DIR", "/var/cache/nexus-test"),
        "NEXUS_AGENT_PORT": str(free_port()),
        "NEXUS_HEARTBEAT_INTERVAL_S": "1",
        "NEXUS_LOG_LEVEL": "warning",
    }
    agent: subprocess.Popen[bytes] | None = None
    try:
        h = login(srv, PW)
        build_image(srv, h, "test")
        tok = httpx.post(f"{srv.url}/v1/hosts/join-tokens", headers=h).json()["token"]

        def start_agent(*extra: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [str(BIN / "nexus-agent"), "--manager", srv.url, *extra],
                env=agent_env,
                stdout=(agent_state.parent / "agent.log").open("ab"),
                stderr=subprocess.STDOUT,
            )

        agent_state.mkdir(parents=True)
        agent = start_agent("--join-token", tok)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            hosts = httpx.get(f"{srv.url}/v1/hosts", headers=h).json()["items"]
            if hosts and hosts[0]["status"] == "healthy":
                break
            time.sleep(0.3)
        else:
            pytest.fail("agent did not register")
        r = httpx.post(
            f"{srv.url}/v1/vms",
            json={"name": "victim", "image": "test", "memory_mib": 128},
            headers=h,
        )
        assert r.status_code == 202, r.text
        vm_id = r.json()["resource_id"]
        deadline = time.monotonic() + 60
        while (seen := httpx.get(f"{srv.url}/v1/vms/{vm_id}", headers=h).json())[
            "state"
        ] != "starting":
            assert seen["state"] != "failed" and time.monotonic() < deadline, seen
            time.sleep(0.05)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        op = wait_op(srv, h, r.json(), timeout=120)
        assert op["status"] == "failed" and op["error"]
        agent = start_agent()  # restarts from its stored credentials
        # (the VM may read "failed" before the new agent listens: wait until it does, or
        # the delete below meets no agent on a loaded machine)
        deadline = time.monotonic() + 90
        port = agent_env["NEXUS_AGENT_PORT"]
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert agent.poll() is None, "the restarted agent exited"
            assert time.monotonic() < deadline, "the restarted agent did not listen"
            time.sleep(0.3)
        while True:
            vm = httpx.get(f"{srv.url}/v1/vms/{vm_id}", headers=h).json()
            if vm["state"] in ("running", "failed") and not (
                vm["state"] == "failed" and not vm["state_reason"]
            ):
                # give the reconciler a moment to settle a re-adopted VM
                time.sleep(3)
                vm = httpx.get(f"{srv.url}/v1/vms/{vm_id}", headers=h).json()
                break
            assert time.monotonic() < deadline, vm
            time.sleep(0.5)
        assert vm["state"] == "running" or vm["state_reason"], vm
        r = httpx.delete(f"{srv.url}/v1/vms/{vm_id}?wait=true", headers=h, timeout=120)
        assert r.status_code == 200, r.text
        assert not qemu_pids_under(agent_state)
        assert not (agent_state / "vms" / vm_id).exists()
        leftovers = [p.name for p in (agent_state / "vms").iterdir()]
        assert leftovers == [], leftovers
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(10)
        srv.stop()
        for pid in qemu_pids_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
