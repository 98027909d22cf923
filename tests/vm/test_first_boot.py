"""SSH keys and user data applied at first boot (issue 20) in a real guest: one all-in-one
manager (embedded agent), ONE VM of the default image (it has the guest agent) created with
an SSH key and a ``#!/bin/sh`` user-data script; exec then checks what the guest holds.
"""

from __future__ import annotations

import base64
import os
import signal
import time

import httpx
import pytest

from tests.support.server import free_port, start_manager, wait_op

from .conftest import qemu_pids_under

pytestmark = pytest.mark.vm
PW = "first-boot-admin-pw"
SCRIPT = '#!/bin/sh\necho "made by user data as $(id -un)" > /root/first-boot-proof\necho ran\n'


def _key() -> str:
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} test@first-boot"


def test_ssh_key_and_user_data_script_are_applied_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state = tmp_path_factory.mktemp("firstboot") / "state"
    srv = start_manager(
        state,
        admin_password=PW,
        env={"NEXUS_EMBEDDED_AGENT": "true", "NEXUS_AGENT_PORT": str(free_port())},
        timeout=120,
    )
    try:
        r = httpx.post(f"{srv.url}/v1/auth/login", json={"username": "admin", "password": PW})
        r.raise_for_status()
        h = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = httpx.post(f"{srv.url}/v1/images/build", json={"name": "default"}, headers=h)
        assert r.status_code == 202, r.text
        op = wait_op(srv, h, r.json())
        assert op["status"] == "succeeded", op
        key = _key()
        r = httpx.post(
            f"{srv.url}/v1/vms?wait=true",
            json={
                "name": "fb",
                "image": op["result"]["image_id"],
                "memory_mib": 256,
                "ssh_keys": [key],
                "user_data": SCRIPT,
            },
            headers=h,
            timeout=300,
        )
        assert r.status_code == 200, r.text
        vm_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            vm = httpx.get(f"{srv.url}/v1/vms/{vm_id}", headers=h).json()
            if vm["first_boot"]["done_at"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert vm["first_boot"]["done_at"], vm
        assert vm["first_boot"]["error"] is None, vm
        assert (vm["first_boot"]["ssh_keys"], vm["first_boot"]["user_data"]) == (1, True)

        def sh(cmd: str) -> dict:
            r = httpx.post(
                f"{srv.url}/v1/vms/{vm_id}/exec",
                json={"command": ["sh", "-c", cmd]},
                headers=h,
                timeout=120,
            )
            assert r.status_code == 200, r.text
            return dict(r.json())

        res = sh(
            "cat /root/.ssh/authorized_keys; stat -c '%a' /root/.ssh /root/.ssh/authorized_keys"
        )
        assert res["exit_code"] == 0, res
        assert res["stdout"] == f"{key}\n700\n600\n", res
        res = sh("cat /root/first-boot-proof; stat -c '%a' /var/lib/nexus/user-data")
        assert res["stdout"] == "made by user data as root\n700\n", res
        res = sh("cat /var/lib/nexus/user-data; test -e /var/lib/nexus/first-boot.done")
        assert res["exit_code"] == 0 and res["stdout"] == SCRIPT, res
        rows = httpx.get(
            f"{srv.url}/v1/audit",
            params={"resource_id": vm_id, "action": "vm.first_boot"},
            headers=h,
        ).json()["items"]
        assert len(rows) == 1 and rows[0]["outcome"] == "success", rows
        assert rows[0]["after"]["script_exit_code"] == 0
        assert "ran" in rows[0]["after"]["output_tail"]
    finally:
        srv.stop()
        for pid in qemu_pids_under(state):
            os.kill(pid, signal.SIGKILL)
