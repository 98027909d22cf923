"""A remote agent gets its images from the manager: a manager without the embedded agent, a
separate ``nexus-agent`` process with its own state dir and ``image_fetch = always`` (as if
the manager's files were on another machine), and a real guest booted from the files the
agent downloaded, verified and cached."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from nexus.agent.storage.disks import backing_file
from nexus.agent.vmm.qemu import VMM_KERNEL
from tests.support.server import BIN, free_port, login, start_manager, wait_op

from .conftest import qemu_pids_under

pytestmark = pytest.mark.vm
PW = "remote-images-admin-pw"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_fetched_image_boots(tmp_path: Path) -> None:
    # the second agent listens on loopback on this one machine (refused by default: issue 12)
    srv = start_manager(
        tmp_path / "mgr", admin_password=PW, env={"NEXUS_ALLOW_LOOPBACK_AGENTS": "true"}
    )
    agent_state = tmp_path / "ag"  # short: QMP socket paths must stay < 108 bytes
    agent_state.mkdir()
    agent_port = free_port()
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")} | {
        "NEXUS_STATE_DIR": str(agent_state),
        "NEXUS_CACHE_DIR": os.environ.get("NEXUS_TEST_CACHE_DIR", "/var/cache/nexus-test"),
        "NEXUS_AGENT_PORT": str(agent_port),
        "NEXUS_HEARTBEAT_INTERVAL_S": "1",
        "NEXUS_LOG_LEVEL": "warning",
        "NEXUS_IMAGE_FETCH": "always",
    }
    agent: subprocess.Popen[bytes] | None = None
    agent_log = tmp_path / "agent.log"
    try:
        h = login(srv, PW)
        r = httpx.post(f"{srv.url}/v1/images/build", json={"name": "test"}, headers=h)
        assert r.status_code == 202, r.text
        op = wait_op(srv, h, r.json(), 600)
        assert op["status"] == "succeeded", op
        image = httpx.get(f"{srv.url}/v1/images/{op['result']['image_id']}", headers=h).json()
        tok = httpx.post(f"{srv.url}/v1/hosts/join-tokens", headers=h).json()["token"]
        agent = subprocess.Popen(
            [str(BIN / "nexus-agent"), "--manager", srv.url, "--join-token", tok],
            env=agent_env,
            stdout=agent_log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            hosts = httpx.get(f"{srv.url}/v1/hosts", headers=h).json()["items"]
            # registration marks the host healthy before the agent API listens: wait for both
            if hosts and hosts[0]["status"] == "healthy" and _listening(agent_port):
                break
            assert agent.poll() is None, agent_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "agent did not register"
            time.sleep(0.3)
        cache = agent_state / "images" / image["id"]
        assert not cache.exists()  # nothing fetched before a VM needs it

        r = httpx.post(
            f"{srv.url}/v1/vms",
            json={"name": "remote", "image": "test", "memory_mib": 128},
            headers=h,
        )
        assert r.status_code == 202, r.text
        vm_id = r.json()["resource_id"]
        op = wait_op(srv, h, r.json(), 240)
        assert op["status"] == "succeeded", (op.get("error"), agent_log.read_text()[-3000:])
        vm = httpx.get(f"{srv.url}/v1/vms/{vm_id}", headers=h).json()
        assert vm["state"] == "running", vm

        # the agent booted from its own verified copy, not from the manager's directory
        want = {
            "vmlinuz": image["kernel_sha256"],
            "initrd.img": image["initrd_sha256"],
            "rootfs.ext4": image["rootfs_sha256"],
        }
        assert sorted(p.name for p in cache.iterdir()) == sorted(want)
        for name, sha in want.items():
            assert _sha256(cache / name) == sha, name
        disk = agent_state / "vms" / vm_id / "disk.img"
        assert backing_file(disk) == cache / "rootfs.ext4"
        pids = qemu_pids_under(agent_state)
        assert pids
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode(errors="replace")
        assert str(srv.state_dir) not in cmdline
        # the sandboxed QEMU reads a private copy of the kernel the agent fetched and checked
        private = agent_state / "vms" / vm_id / VMM_KERNEL
        assert _sha256(private) == image["kernel_sha256"]
        assert private.stat().st_mode & 0o777 == 0o400 and private.stat().st_uid != 0

        r = httpx.delete(f"{srv.url}/v1/vms/{vm_id}?wait=true", headers=h, timeout=120)
        assert r.status_code == 200, r.text
        assert not qemu_pids_under(agent_state)
        assert not (agent_state / "vms" / vm_id).exists()
        assert (cache / "rootfs.ext4").is_file()  # the cache outlives the VM
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        srv.stop()
        for pid in qemu_pids_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
