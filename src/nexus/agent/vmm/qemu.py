"""QEMU ``microvm`` driver: virtio-mmio devices, QMP over ``<vm_dir>/qmp.sock``.

Command line shape (measured to work on TCG-only hosts, see the guests notes)::

    qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on -accel tcg,tb-size=32
        -cpu max -m 256 -smp 1 -nodefaults -no-user-config -display none -no-reboot
        -chardev file,id=con0,path=console.log,append=on -serial chardev:con0
        -qmp unix:qmp.sock,server=on,wait=off
        -kernel vmlinuz -initrd initrd -append 'console=ttyS0 ... tsc_early_khz=N'
        -drive id=root,file=disk.img,format=qcow2|raw,if=none -device virtio-blk-device,drive=root
        -chardev socket,id=agent,path=guest.sock,server=on,wait=off
        -device virtio-serial-device -device virtserialport,chardev=agent,name=nexus.agent

Acceleration: KVM only on hardware KVM (:func:`~nexus.agent.vmm.base.hardware_kvm`),
otherwise TCG with a warning; ``accel`` forces either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from qemu.qmp import QMPClient

from nexus.agent.storage.disks import disk_format
from nexus.agent.vmm.base import (
    CONSOLE_LOG,
    GUEST_SOCK,
    VMM_LOG,
    DriverCapabilities,
    MachineSpec,
    VmmDriver,
    VmmError,
    VmmHandle,
    console_tail,
    hardware_kvm,
    host_tsc_khz,
    process_alive,
    rotate_console,
    spawn_detached,
    wait_exit,
)

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

QMP_SOCK = "qmp.sock"
TCG_WARNING = (
    "no hardware KVM on this host (no kvm_intel/kvm_amd with vmx/svm): guests run under "
    "TCG software emulation, roughly 10-50x slower than KVM"
)
MIN_MEMORY_MIB = 72  # Debian's cloud kernel OOM-panics below this


def choose_accel(mode: str = "auto") -> tuple[Literal["kvm", "tcg"], str | None]:
    """Resolve ``auto|kvm|tcg`` into the accelerator to use and an optional warning."""
    if mode == "kvm":
        return "kvm", None if hardware_kvm() else "KVM forced by config without hardware KVM"
    if mode == "tcg":
        return "tcg", "TCG forced by config: software emulation, slow"
    if hardware_kvm():
        return "kvm", None
    return "tcg", TCG_WARNING


class QemuDriver(VmmDriver):
    """Drives ``qemu-system-x86_64 -M microvm``. Real guests boot with it on this host."""

    name = "qemu"

    def __init__(self, binary: str = "qemu-system-x86_64", accel: str = "auto") -> None:
        self.binary = shutil.which(binary) or binary
        self.accel, self.accel_warning = choose_accel(accel)
        self._caps = DriverCapabilities(
            name=self.name,
            accel=self.accel,
            accel_warning=self.accel_warning,
            pause=True,
            snapshots=True,
            reboot=False,  # -no-reboot: a reset ends the process; the runtime restarts it
            graceful_stop=True,
            guest_channel="virtio-serial",
            kernel_format="bzImage",
            qcow2=True,
        )

    @property
    def capabilities(self) -> DriverCapabilities:
        """See :class:`DriverCapabilities`."""
        return self._caps

    # --- command line ------------------------------------------------------------------

    def kernel_cmdline(self, spec: MachineSpec) -> str:
        """The guest kernel command line for ``spec``."""
        parts = ["console=ttyS0", "reboot=t", "panic=-1", "quiet"]
        if self.accel == "tcg":
            khz = host_tsc_khz()
            if khz:
                parts.append(f"tsc_early_khz={khz}")
        if spec.root_disk is not None:
            parts.append("nexus.root=/dev/vda")
        if spec.kernel_args:
            parts.append(spec.kernel_args)
        return " ".join(parts)

    def build_argv(self, spec: MachineSpec, vm_dir: Path, incoming: str | None = None) -> list[str]:
        """The full QEMU argv for ``spec`` (``incoming``: a migration URI to restore)."""
        accel = "kvm" if self.accel == "kvm" else "tcg,tb-size=32"
        argv = [
            self.binary,
            "-M", "microvm,x-option-roms=off,isa-serial=on",
            "-accel", accel,
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-m", str(max(spec.memory_mib, MIN_MEMORY_MIB)),
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-name", f"nexus-{spec.vm_id},process=nexus-{spec.vm_id}",
            "-chardev", f"file,id=con0,path={vm_dir / CONSOLE_LOG},append=on",
            "-serial", "chardev:con0",
            "-qmp", f"unix:{vm_dir / QMP_SOCK},server=on,wait=off",
            "-kernel", str(spec.kernel),
            "-append", self.kernel_cmdline(spec),
        ]  # fmt: skip
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        disks = ([spec.root_disk] if spec.root_disk else []) + list(spec.extra_disks)
        for i, disk in enumerate(disks):
            fmt = disk_format(disk) if disk.exists() else "raw"
            drive = f"id=disk{i},file={disk},format={fmt},if=none,cache=writeback,discard=unmap"
            if disk in spec.readonly_disks:
                drive += ",readonly=on"
            argv += [
                "-drive", drive,
                "-device", f"virtio-blk-device,drive=disk{i}",
            ]  # fmt: skip
        argv += [
            "-chardev", f"socket,id=agent,path={vm_dir / GUEST_SOCK},server=on,wait=off",
            "-device", "virtio-serial-device",
            "-device", "virtserialport,chardev=agent,name=nexus.agent",
        ]  # fmt: skip
        for i, nic in enumerate(spec.nics):
            argv += [
                "-netdev", f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=net{i},mac={nic.mac}",
            ]  # fmt: skip
        if incoming:
            argv += ["-incoming", incoming]
        return argv

    # --- QMP ---------------------------------------------------------------------------

    async def qmp(self, handle: VmmHandle, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run one QMP command on the VM's monitor socket and return its result."""
        client = QMPClient(f"nexus-{handle.vm_id}")
        try:
            await asyncio.wait_for(client.connect(str(handle.vm_dir / QMP_SOCK)), 5.0)
            return await asyncio.wait_for(client.execute(cmd, args), 30.0)
        except (OSError, TimeoutError) as exc:
            raise VmmError(f"QMP {cmd} failed for VM {handle.vm_id}: {exc}") from exc
        except Exception as exc:
            raise VmmError(f"QMP {cmd} failed for VM {handle.vm_id}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
        """Spawn QEMU detached and return once QMP reports the VM running."""
        return await self._spawn(spec, vm_dir, incoming=None)

    async def _spawn(self, spec: MachineSpec, vm_dir: Path, incoming: str | None) -> VmmHandle:
        existing = VmmHandle.load(vm_dir)
        if existing and existing.driver == self.name and self.is_alive(existing):
            return existing
        if not Path(spec.kernel).exists():
            raise VmmError(f"kernel {spec.kernel} does not exist")
        for name in (QMP_SOCK, GUEST_SOCK):
            with contextlib.suppress(FileNotFoundError):
                (vm_dir / name).unlink()
        rotate_console(vm_dir)
        (vm_dir / CONSOLE_LOG).touch()
        with contextlib.suppress(FileNotFoundError):
            (vm_dir / VMM_LOG).unlink()
        argv = self.build_argv(spec, vm_dir, incoming=incoming)
        pid, start_time = await asyncio.to_thread(spawn_detached, argv, vm_dir)
        handle = VmmHandle(spec.vm_id, self.name, pid, start_time, vm_dir, argv)
        handle.save()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if not process_alive(pid, start_time):
                raise VmmError(self._death_message(handle))
            if (vm_dir / QMP_SOCK).exists():
                try:
                    st = await self.qmp(handle, "query-status")
                except VmmError:
                    st = None
                if st is not None:
                    return handle
            await asyncio.sleep(0.02)
        await self.kill(handle)
        raise VmmError(f"QEMU for VM {spec.vm_id} did not answer QMP within 30 s")

    def _death_message(self, handle: VmmHandle) -> str:
        try:
            out = (handle.vm_dir / VMM_LOG).read_text(errors="replace").strip()
        except OSError:
            out = ""
        msg = f"QEMU exited during start of VM {handle.vm_id}"
        if out:
            msg += f": {out[-2000:]}"
        tail = console_tail(handle.vm_dir, 20)
        if tail:
            msg += f"\n--- console tail ---\n{tail}"
        return msg

    async def stop(
        self, handle: VmmHandle, *, graceful: bool = True, timeout: float = 20.0
    ) -> None:
        """ACPI power button, wait ``timeout``; then QMP quit; then SIGKILL."""
        if not self.is_alive(handle):
            return
        if graceful:
            with contextlib.suppress(VmmError):
                if (await self.status(handle)) == "paused":
                    await self.qmp(handle, "cont")
                await self.qmp(handle, "system_powerdown")
                if await wait_exit(handle, timeout):
                    return
        with contextlib.suppress(VmmError):
            await self.qmp(handle, "quit")
            if await wait_exit(handle, 3.0):
                return
        await self.kill(handle)

    async def pause(self, handle: VmmHandle) -> None:
        """QMP ``stop``: vCPUs freeze, devices keep their state."""
        await self.qmp(handle, "stop")

    async def resume(self, handle: VmmHandle) -> None:
        """QMP ``cont``."""
        await self.qmp(handle, "cont")

    async def status(self, handle: VmmHandle) -> Literal["running", "paused", "stopped"]:
        """``running``/``paused`` from QMP ``query-status``; ``stopped`` if the process is gone."""
        if not self.is_alive(handle):
            return "stopped"
        try:
            st = await self.qmp(handle, "query-status")
        except VmmError:
            return "running" if self.is_alive(handle) else "stopped"
        return "paused" if st.get("status") in ("paused", "prelaunch", "inmigrate") else "running"

    async def snapshot(self, handle: VmmHandle, dest: Path) -> None:
        """Pause, migrate the VM state to ``dest/memory`` (``exec:`` URI, QEMU 7.2 has no
        ``file:``) and leave the VM paused. The caller copies the disk if needed."""
        dest.mkdir(parents=True, exist_ok=True)
        await self.qmp(handle, "stop")
        target = dest / "memory"
        await self.qmp(handle, "migrate", {"uri": f"exec:cat > '{target}'"})
        await self._wait_migration(handle)
        meta = {"driver": self.name, "vm_id": handle.vm_id, "argv": handle.argv}
        (dest / "snapshot.json").write_text(json.dumps(meta, indent=2))

    async def restore(self, spec: MachineSpec, vm_dir: Path, source: Path) -> VmmHandle:
        """Start QEMU with ``-incoming`` from ``source/memory`` and resume the guest."""
        memory = source / "memory"
        if not memory.exists():
            raise VmmError(f"snapshot {source} has no memory file")
        handle = await self._spawn(spec, vm_dir, incoming=f"exec:cat '{memory}'")
        await self._wait_migration(handle)
        await self.qmp(handle, "cont")
        return handle

    async def _wait_migration(self, handle: VmmHandle, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await self.qmp(handle, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise VmmError(f"migration {status}: {info.get('error-desc', '')}")
            await asyncio.sleep(0.05)
        raise VmmError("migration did not complete in time")

    def cleanup(self, vm_dir: Path) -> None:
        """Remove QMP/guest sockets and vmm.json."""
        super().cleanup(vm_dir)
        with contextlib.suppress(FileNotFoundError):
            (vm_dir / QMP_SOCK).unlink()
