"""Driver contract helpers (detached processes, pid-reuse guard, console bounds) and the
QEMU command line — no guest is booted here."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from nexus.agent.vmm.base import (
    DiskSpec,
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
    drv = QemuDriver(accel="tcg", sandbox=None)
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
    assert argv[argv.index("-sandbox") + 1] == (
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    )
    assert f"socket,id=qmp0,path={tmp_path}/qmp.sock,server=on,wait=off" in argv
    assert "chardev=qmp0,mode=control" in argv
    assert f"path={tmp_path}/console.log,append=on" in joined
    assert "virtserialport,chardev=agent,name=nexus.agent" in argv
    assert f"socket,id=agent,path={tmp_path}/guest.sock,server=on,wait=off" in argv
    assert "virtio-blk-device,drive=disk0" in argv
    assert "tap,id=net0,ifname=nxtap0,script=no,downscript=no" in argv
    cmdline = argv[argv.index("-append") + 1]
    assert "nexus.root=/dev/vda" in cmdline and "nexus.counter=1" in cmdline
    assert "tsc_early_khz=" in cmdline and "panic=-1" in cmdline
    kvm = QemuDriver(accel="kvm", sandbox=None).build_argv(spec, tmp_path)
    assert kvm[kvm.index("-accel") + 1] == "kvm" and "tsc_early_khz" not in " ".join(kvm)


def _blockdevs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-blockdev"]


def _format_of(argv: list[str], node: str) -> str | None:
    """The format QEMU opens the device node ``node`` with, in either argv style."""
    for i, a in enumerate(argv):
        if a == "-drive" and f"id={node}," in argv[i + 1]:
            return argv[i + 1].split("format=")[1].split(",")[0]
        if a == "-blockdev" and f"node-name={node}," in argv[i + 1]:
            return argv[i + 1].split("driver=")[1].split(",")[0]
    return None


def test_qemu_argv_raw_disk_with_a_qcow2_header_stays_raw(tmp_path: Path) -> None:
    """A guest writes a qcow2 header (backing file = a host file) into its raw volume: the
    driver still opens it as raw, because the format is data, not the file's first bytes."""
    volume = tmp_path / "vol.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow",
                    str(volume), "1M"], check=True)  # fmt: skip
    assert volume.read_bytes()[:4] == b"QFI\xfb"
    root = tmp_path / "disk.img"
    root.write_bytes(b"QFI\xfb" + bytes(1 << 16))  # a raw root disk the guest wrote
    spec = MachineSpec(
        vm_id="vm1", vcpus=1, memory_mib=128, kernel=tmp_path / "vmlinuz",
        root_disk=root, extra_disks=(volume,),
    )  # fmt: skip
    argv = QemuDriver(accel="tcg", sandbox=None).build_argv(spec, tmp_path)
    assert _format_of(argv, "disk0") == "raw"
    assert _format_of(argv, "disk1") == "raw"
    assert "shadow" not in " ".join(argv) and "qcow2" not in " ".join(argv)


def test_qemu_argv_overlay_gets_a_pinned_raw_backing_node(tmp_path: Path) -> None:
    from nexus.agent.storage.disks import new_root_disk, read_record

    base = tmp_path / "rootfs.ext4"
    base.write_bytes(bytes(1 << 20))
    overlay = new_root_disk(base, tmp_path / "disk.img", qcow2=True).path
    volume = tmp_path / "vol.img"
    volume.write_bytes(bytes(1 << 20))
    spec = MachineSpec(
        vm_id="vm1", vcpus=1, memory_mib=128, kernel=tmp_path / "vmlinuz",
        root_disk=read_record(overlay).spec(overlay),
        extra_disks=(DiskSpec(volume, "raw", readonly=True),),
    )  # fmt: skip
    nodes = _blockdevs(QemuDriver(accel="tcg", sandbox=None).build_argv(spec, tmp_path))
    assert f"driver=file,node-name=disk0-base-file,filename={base},read-only=on" in nodes
    assert "driver=raw,node-name=disk0-base,file=disk0-base-file,read-only=on" in nodes
    assert (
        "driver=qcow2,node-name=disk0,file=disk0-file,backing=disk0-base,"
        "read-only=off,discard=unmap"
    ) in nodes
    assert "driver=raw,node-name=disk1,file=disk1-file,read-only=on" in nodes
    with pytest.raises(ValueError):
        DiskSpec(overlay, "qcow2")  # an overlay without its recorded backing is refused


def test_qemu_argv_names_descriptors_when_files_are_opened(tmp_path: Path) -> None:
    """The sandboxed QEMU opens no host path: every file and socket is a descriptor."""
    from nexus.agent.vmm.qemu import QemuFiles

    for name in ("vmlinuz", "disk.img"):
        (tmp_path / name).write_bytes(b"x")
    spec = MachineSpec(vm_id="vm1", vcpus=1, memory_mib=128, kernel=tmp_path / "vmlinuz",
                       root_disk=tmp_path / "disk.img")  # fmt: skip
    files = QemuFiles(tmp_path)
    try:
        argv = QemuDriver(accel="tcg", sandbox=None).build_argv(spec, tmp_path, files=files)
        assert len(files.fds) == 5  # console, qmp socket, kernel, disk, guest socket
        assert argv[argv.index("-kernel") + 1].startswith("/proc/self/fd/")
        assert any(a.startswith("socket,id=qmp0,fd=") for a in argv)
        assert "filename=/dev/fdset/" in " ".join(_blockdevs(argv))
        assert argv.count("-add-fd") == 2  # console and disk
    finally:
        files.close()
