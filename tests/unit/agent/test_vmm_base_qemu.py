"""Driver contract helpers (detached processes, pid-reuse guard, console bounds) and the
QEMU command line — no guest is booted here."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from nexus.agent.vmm.base import (
    DriverCapabilities,
    MachineSpec,
    NicSpec,
    VmmDriver,
    VmmHandle,
    cap_console,
    console_tail,
    hardware_kvm,
    kill_process,
    proc_start_time,
    process_alive,
    rotate_console,
    spawn_detached,
)
from nexus.agent.vmm.qemu import TCG_WARNING, QemuDriver, choose_accel


async def test_spawn_detached_own_session_and_pid_guard(tmp_path: Path) -> None:
    pid, start = spawn_detached(["sleep", "30"], tmp_path)
    try:
        assert start == proc_start_time(pid)
        assert os.getsid(pid) == pid  # own session: not killed with the agent's group
        assert process_alive(pid, start)
        assert not process_alive(pid, start + 1)  # pid reuse guard
        h = VmmHandle("vm", "x", pid, start, tmp_path)
        h.save()
        loaded = VmmHandle.load(tmp_path)
        assert loaded is not None and (loaded.pid, loaded.start_time) == (pid, start)
        await kill_process(h)
        assert not process_alive(pid, start)
        await kill_process(h)  # idempotent
    finally:
        if process_alive(pid, start):
            os.kill(pid, signal.SIGKILL)


def test_console_rotate_cap_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\n" for i in range(10000)))
    assert console_tail(tmp_path, 2) == "line 9998\nline 9999"
    assert cap_console(tmp_path, 4096)
    assert log.stat().st_size == 0
    assert (tmp_path / "console.log.1").read_text().endswith("line 9999\n")
    assert not cap_console(tmp_path, 4096)
    log.write_text("old boot\n")
    rotate_console(tmp_path)
    assert not log.exists() and (tmp_path / "console.log.1").read_text() == "old boot\n"
    assert console_tail(tmp_path / "nope", 5) == ""


def test_accel_choice_on_this_host() -> None:
    if not hardware_kvm():
        assert choose_accel("auto") == ("tcg", TCG_WARNING)
    assert choose_accel("tcg")[0] == "tcg"
    assert choose_accel("kvm")[0] == "kvm"


def test_contract_defaults_are_unsupported(tmp_path: Path) -> None:
    class Minimal(VmmDriver):
        name = "minimal"

        @property
        def capabilities(self) -> DriverCapabilities:
            return DriverCapabilities(name="minimal", accel="none")

        async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
            raise NotImplementedError

        async def stop(self, handle: VmmHandle, *, graceful: bool = True, timeout: float = 20):
            return None

    d = Minimal()
    assert not d.capabilities.snapshots and not d.capabilities.reboot


async def test_contract_optional_ops_raise(tmp_path: Path) -> None:
    from nexus.agent.vmm.base import UnsupportedOperation

    class Minimal(VmmDriver):
        name = "minimal"

        @property
        def capabilities(self) -> DriverCapabilities:
            return DriverCapabilities(name="minimal", accel="none")

        async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
            raise NotImplementedError

        async def stop(self, handle: VmmHandle, *, graceful: bool = True, timeout: float = 20):
            return None

    h = VmmHandle("vm", "minimal", 0, 0, tmp_path)
    for op in (Minimal().pause, Minimal().resume, Minimal().reboot):
        with pytest.raises(UnsupportedOperation):
            await op(h)
    assert await Minimal().adopt(tmp_path) is None


def test_qemu_argv(tmp_path: Path) -> None:
    drv = QemuDriver(accel="tcg")
    spec = MachineSpec(
        vm_id="vm1",
        vcpus=2,
        memory_mib=64,
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        root_disk=tmp_path / "disk.img",
        kernel_args="nexus.counter=1",
        nics=(NicSpec("eth0", "nxtap0", "52:54:00:00:00:02"),),
    )
    argv = drv.build_argv(spec, tmp_path)
    joined = " ".join(argv)
    assert argv[argv.index("-M") + 1] == "microvm,x-option-roms=off,isa-serial=on"
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=32"
    assert argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-m") + 1] == "72"  # raised to the cloud kernel's minimum
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in argv
    assert f"path={tmp_path}/console.log,append=on" in joined
    assert "virtserialport,chardev=agent,name=nexus.agent" in argv
    assert f"socket,id=agent,path={tmp_path}/guest.sock,server=on,wait=off" in argv
    assert "virtio-blk-device,drive=disk0" in argv
    assert "tap,id=net0,ifname=nxtap0,script=no,downscript=no" in argv
    cmdline = argv[argv.index("-append") + 1]
    assert "nexus.root=/dev/vda" in cmdline and "nexus.counter=1" in cmdline
    assert "tsc_early_khz=" in cmdline and "panic=-1" in cmdline
    kvm = QemuDriver(accel="kvm").build_argv(spec, tmp_path)
    assert kvm[kvm.index("-accel") + 1] == "kvm" and "tsc_early_khz" not in " ".join(kvm)


def test_qemu_argv_reads_each_disk_format_from_the_file(tmp_path: Path) -> None:
    from nexus.agent.storage.disks import new_root_disk

    base = tmp_path / "rootfs.ext4"
    base.write_bytes(bytes(1 << 20))
    overlay = new_root_disk(base, tmp_path / "disk.img", qcow2=True).path
    volume = tmp_path / "vol.img"
    volume.write_bytes(bytes(1 << 20))
    spec = MachineSpec(
        vm_id="vm1",
        vcpus=1,
        memory_mib=128,
        kernel=tmp_path / "vmlinuz",
        root_disk=overlay,
        extra_disks=(volume,),
    )
    drives = [a for a in QemuDriver(accel="tcg").build_argv(spec, tmp_path) if "id=disk" in a]
    assert f"id=disk0,file={overlay},format=qcow2" in drives[0]
    assert f"id=disk1,file={volume},format=raw" in drives[1]
