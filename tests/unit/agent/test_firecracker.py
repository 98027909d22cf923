"""Firecracker driver against a fake Firecracker that validates every request against the
official API spec (firecracker-api.yaml) and records the exact sequence."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from nexus.agent.vmm import select_driver
from nexus.agent.vmm.base import MachineSpec, NicSpec, VmmError
from nexus.agent.vmm.firecracker import FirecrackerDriver
from nexus.core.settings import Settings

HERE = Path(__file__).resolve().parent
SPEC = Path(__file__).resolve().parents[4] / "shared" / "firecracker" / "firecracker-api.yaml"
if not SPEC.exists():  # CI runs from a clone with shared/ beside it
    SPEC = Path(
        os.environ.get("NEXUS_TEST_FC_SPEC", "/work/shared/firecracker/firecracker-api.yaml")
    )


@pytest.fixture
def fake_fc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``firecracker`` executable on PATH that runs the validating fake."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "firecracker"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_firecracker.py"} "$@"\n')
    exe.chmod(0o755)
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_FC_SPEC", str(SPEC))
    monkeypatch.setenv("FAKE_FC_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def requests(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def machine(tmp_path: Path) -> MachineSpec:
    for name in ("vmlinux", "initrd.img", "disk.img"):
        (tmp_path / name).write_bytes(b"x")
    return MachineSpec(
        vm_id="vm1",
        vcpus=2,
        memory_mib=256,
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd.img",
        root_disk=tmp_path / "disk.img",
        kernel_args="nexus.hostname=vm1",
        nics=(NicSpec("eth0", "tap-vm1", "52:54:00:00:00:01"),),
    )


async def test_spec_is_the_official_one() -> None:
    assert SPEC.exists(), SPEC
    assert "Firecracker API" in SPEC.read_text()[:200]


async def test_full_lifecycle_conforms_to_api(fake_fc: Path, tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    drv = FirecrackerDriver()
    assert not drv.capabilities.tested_with_real_guests
    h = await drv.start(machine(tmp_path), vm_dir)
    assert drv.is_alive(h)
    assert "NEXUS-GUEST-BOOTED" in (vm_dir / "console.log").read_text()
    await drv.pause(h)
    assert await drv.status(h) == "paused"
    await drv.resume(h)
    assert await drv.status(h) == "running"
    snap = tmp_path / "snap"
    await drv.snapshot(h, snap)
    assert (snap / "vmstate").exists() and (snap / "memory").exists()
    await drv.stop(h, graceful=True, timeout=5)
    assert not drv.is_alive(h)

    reqs = requests(fake_fc)
    assert [r["error"] for r in reqs] == [None] * len(reqs), reqs
    seq = [(r["method"], r["path"]) for r in reqs]
    assert seq == [
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/vsock"),
        ("PUT", "/actions"),
        ("PATCH", "/vm"),
        ("GET", "/"),
        ("PATCH", "/vm"),
        ("GET", "/"),
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("GET", "/"),  # stop: paused? -> resume first
        ("PATCH", "/vm"),
        ("PUT", "/actions"),
    ]
    bodies = [r["body"] for r in reqs]
    assert bodies[0] == {"vcpu_count": 2, "mem_size_mib": 256}
    assert bodies[1]["kernel_image_path"].endswith("vmlinux")
    assert "nexus.root=/dev/vda" in bodies[1]["boot_args"]
    assert bodies[2]["path_on_host"].endswith("disk.img")
    assert bodies[3] == {
        "iface_id": "eth0",
        "host_dev_name": "tap-vm1",
        "guest_mac": "52:54:00:00:00:01",
    }
    assert bodies[4] == {"guest_cid": 3, "uds_path": str(vm_dir / "guest.sock")}
    assert bodies[5] == {"action_type": "InstanceStart"}
    assert bodies[6] == {"state": "Paused"}
    assert bodies[8] == {"state": "Resumed"}
    assert bodies[11]["snapshot_type"] == "Full"
    assert bodies[-1] == {"action_type": "SendCtrlAltDel"}


async def test_restore_conforms(fake_fc: Path, tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    snap = tmp_path / "snap"
    snap.mkdir()
    drv = FirecrackerDriver()
    h = await drv.restore(machine(tmp_path), vm_dir, snap)
    try:
        assert await drv.status(h) == "running"
    finally:
        await drv.kill(h)
    reqs = requests(fake_fc)
    assert next((r["method"], r["path"], r["error"]) for r in reqs) == (
        "PUT",
        "/snapshot/load",
        None,
    )
    assert reqs[0]["body"]["mem_backend"]["backend_type"] == "File"


async def test_fake_rejects_nonconforming_requests(fake_fc: Path, tmp_path: Path) -> None:
    """The validator is real: a body outside the spec is refused with fault_message."""
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    drv = FirecrackerDriver()
    h = await drv._spawn(machine(tmp_path), vm_dir)
    try:
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 1})
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "PUT", "/machine-config", {"vcpus": 1, "mem_size_mib": 128})
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "PATCH", "/vm", {"state": "Frozen"})
        with pytest.raises(VmmError, match="400"):
            await drv.api(vm_dir, "POST", "/actions", {"action_type": "InstanceStart"})
    finally:
        await drv.kill(h)
    assert all(r["error"] for r in requests(fake_fc))


async def test_select_driver_prefers_firecracker_on_path(fake_fc: Path) -> None:
    assert select_driver(Settings(vmm_driver="auto")).name == "firecracker"
    assert select_driver(Settings(vmm_driver="qemu")).name == "qemu"


async def test_select_driver_falls_back_to_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert select_driver(Settings(vmm_driver="auto")).name == "qemu"
    with pytest.raises(VmmError, match="not on PATH"):
        select_driver(Settings(vmm_driver="firecracker"))


async def test_jailer_argv(tmp_path: Path) -> None:
    drv = FirecrackerDriver("/opt/fc/firecracker", jailer="/opt/fc/jailer", jailer_uid=123)
    argv = drv.build_argv(machine(tmp_path), tmp_path)
    assert argv[:5] == ["/opt/fc/jailer", "--id", "vm1", "--exec-file", "/opt/fc/firecracker"]
    assert "--uid" in argv and "123" in argv and argv[-2:] == ["--api-sock", "api.sock"]
