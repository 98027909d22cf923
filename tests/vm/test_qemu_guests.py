"""Real guests under QEMU: boot, graceful stop, restart, pause, delete, re-adoption."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from nexus.agent.api.app import create_app
from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.agent.storage.disks import record_path
from nexus.agent.vmm.base import process_alive
from nexus.agent.vmm.qemu import QemuDriver
from nexus.core.settings import Settings
from nexus.hostapi.agent_client import AgentClient
from nexus.images.build import BuiltImage, build_image

from .conftest import CACHE_DIR, qemu_pids_under, spec_for

pytestmark = pytest.mark.vm


def counts(vm_dir: Path) -> int:
    return (vm_dir / "console.log").read_text(errors="replace").count("NEXUS-COUNT")


async def test_lifecycle_via_agent_api(
    runtime: AgentRuntime, test_image: BuiltImage, tmp_path: Path
) -> None:
    """boot -> ready -> pause (frozen) -> resume -> ACPI stop -> restart -> delete."""
    app = create_app(runtime, "tok")
    agent = AgentClient("http://agent", "tok", transport=httpx.ASGITransport(app=app))
    spec = spec_for(test_image, "vm-life", kernel_args="nexus.counter=1")
    await agent.put_vm(spec)
    vm_dir = runtime.vms_dir / "vm-life"
    disk = vm_dir / "disk.img"
    assert disk.exists() and disk.stat().st_ino != test_image.rootfs.stat().st_ino

    st = await agent.start_vm("vm-life")
    assert st.state == "running" and st.pid, st.error
    assert await wait_for(lambda: runtime.status("vm-life").guest_ready, 30)
    assert "NEXUS-GUEST-BOOTED" in await agent.console("vm-life", tail=50)

    # pause: the guest's counter (every 0.5 s) must not move
    assert await wait_for(lambda: counts(vm_dir) >= 2, 10)
    assert (await agent.pause_vm("vm-life")).state == "paused"
    frozen = counts(vm_dir)
    await asyncio.sleep(1.5)
    assert counts(vm_dir) == frozen
    assert (await agent.resume_vm("vm-life")).state == "running"
    assert await wait_for(lambda: counts(vm_dir) >= frozen + 2, 10)

    # graceful stop: ACPI power button -> guest init powers off (fast, not the timeout)
    t0 = time.monotonic()
    st = await agent.stop_vm("vm-life", timeout_s=15)
    assert st.state == "stopped" and not process_alive(st.pid or 0, 0)
    assert time.monotonic() - t0 < 10
    assert "NEXUS-GUEST-POWEROFF" in await agent.console("vm-life", tail=20)
    assert not (vm_dir / "qmp.sock").exists() and not (vm_dir / "guest.sock").exists()

    # restart on the same (persistent) disk
    st = await agent.start_vm("vm-life")
    assert st.state == "running"
    assert await wait_for(lambda: runtime.status("vm-life").guest_ready, 30)

    # delete leaves nothing: no process, socket, disk or directory
    pid = st.pid
    await agent.delete_vm("vm-life")
    assert not vm_dir.exists()
    assert (pid is not None and not Path(f"/proc/{pid}").exists()) or not process_alive(pid, 0)
    assert qemu_pids_under(tmp_path) == []
    assert test_image.rootfs.exists()  # the shared image is untouched
    await agent.aclose()


async def test_agent_restart_readopts_running_vm(
    settings: Settings, test_image: BuiltImage, tmp_path: Path
) -> None:
    rt1 = AgentRuntime(settings, driver=QemuDriver())
    await rt1.startup()
    await rt1.put_vm(spec_for(test_image, "vm-adopt"))
    st = await rt1.start_vm("vm-adopt")
    assert await wait_for(lambda: rt1.status("vm-adopt").guest_ready, 30)
    await rt1.shutdown()  # the agent "exits"; QEMU keeps running
    assert qemu_pids_under(tmp_path) == [st.pid]

    rt2 = AgentRuntime(settings, driver=QemuDriver())
    await rt2.startup()
    try:
        st2 = rt2.status("vm-adopt")
        assert (st2.state, st2.pid, st2.guest_ready) == ("running", st.pid, True)
        assert (await rt2.pause_vm("vm-adopt")).state == "paused"  # QMP works after adoption
        assert (await rt2.resume_vm("vm-adopt")).state == "running"
        assert (await rt2.stop_vm("vm-adopt")).state == "stopped"
        assert qemu_pids_under(tmp_path) == []
    finally:
        for vm_id in list(rt2.vms):
            await rt2.delete_vm(vm_id)
        await rt2.shutdown()


async def test_bad_kernel_fails_with_console_tail(
    runtime: AgentRuntime, test_image: BuiltImage, tmp_path: Path
) -> None:
    # 1. a kernel that boots but cannot find init -> kernel panic -> QEMU exits
    spec = spec_for(test_image, "vm-panic", kernel_args="rdinit=/nonexistent init=/nonexistent")
    await runtime.put_vm(spec)
    disk = runtime.vms_dir / "vm-panic" / "disk.img"
    disk.write_bytes(b"")  # and no usable root: an empty raw disk (so no overlay record)
    record_path(disk).unlink(missing_ok=True)
    st = await runtime.start_vm("vm-panic")
    assert st.state in ("running", "failed")
    assert await wait_for(lambda: runtime.status("vm-panic").state == "failed", 30)
    st = runtime.status("vm-panic")
    assert st.console_tail and "Kernel panic" in st.console_tail
    assert st.error and "Kernel panic" in st.error

    # 2. a file that is not a kernel at all -> QEMU refuses -> failed with its message
    bad = tmp_path / "bad-image"
    bad.mkdir()
    for f in ("rootfs.ext4", "initrd.img", "manifest.json"):
        (bad / f).symlink_to(test_image.dir / f)
    (bad / "vmlinuz").write_bytes(b"\x00" * 4096)
    spec = spec_for(test_image, "vm-garbage")
    spec.image.source_dir = str(bad)
    await runtime.put_vm(spec)
    st = await runtime.start_vm("vm-garbage")
    assert st.state == "failed" and st.error and "QEMU" in st.error


async def test_default_image_boots(runtime: AgentRuntime, default_image: BuiltImage) -> None:
    """The debootstrap image boots to userspace (NEXUS-GUEST-BOOTED) and stops via ACPI."""
    assert (default_image.dir / "manifest.json").exists()
    await runtime.put_vm(spec_for(default_image, "vm-debian", memory_mib=256, disk_size_mib=768))
    st = await runtime.start_vm("vm-debian")
    assert st.state == "running", st.error
    vm_dir = runtime.vms_dir / "vm-debian"
    assert await wait_for(
        lambda: "NEXUS-GUEST-BOOTED" in (vm_dir / "console.log").read_text(errors="replace"), 60
    )
    st = await runtime.stop_vm("vm-debian", timeout=20)
    assert st.state == "stopped"
    assert "NEXUS-GUEST-POWEROFF" in runtime.console("vm-debian", 50)


async def test_image_cache_is_instant_and_content_addressed(test_image: BuiltImage) -> None:
    t0 = time.monotonic()
    again = build_image("test", CACHE_DIR)
    assert time.monotonic() - t0 < 5
    assert again.dir == test_image.dir
    m = again.manifest
    for key in ("kernel_sha256", "initrd_sha256", "rootfs_sha256", "kernel_version", "built_at"):
        assert m[key]
    assert m["sizes"]["rootfs"] == again.rootfs.stat().st_size  # type: ignore[index]


async def test_qemu_snapshot_and_restore(test_image: BuiltImage, tmp_path: Path) -> None:
    """migrate-to-file snapshot of a running guest; restore continues its counter."""
    from nexus.agent.storage.disks import clone_disk
    from nexus.agent.vmm.base import MachineSpec

    drv = QemuDriver()
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    clone_disk(test_image.rootfs, vm_dir / "disk.img")
    spec = MachineSpec("vm-snap", 1, 128, test_image.kernel, test_image.initrd,
                       vm_dir / "disk.img", "nexus.counter=1")  # fmt: skip
    h = await drv.start(spec, vm_dir)
    try:
        assert await wait_for(lambda: counts(vm_dir) >= 2, 30)
        await drv.snapshot(h, tmp_path / "snap")
        before = counts(vm_dir)
        await drv.stop(h, graceful=False)
        h = await drv.restore(spec, vm_dir, tmp_path / "snap")
        assert await drv.status(h) == "running"
        # the restored guest continues counting from where it was (no new boot banner)
        assert await wait_for(lambda: counts(vm_dir) >= 2, 10)
        log = (vm_dir / "console.log").read_text(errors="replace")
        assert "NEXUS-GUEST-BOOTED" not in log
        assert f"NEXUS-COUNT {before + 1}" in log or f"NEXUS-COUNT {before + 2}" in log
    finally:
        await drv.stop(h, graceful=False)
        drv.cleanup(vm_dir)  # sockets and the VM's cgroup
