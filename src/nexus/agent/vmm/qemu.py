"""QEMU ``microvm`` driver: virtio-mmio devices, QMP over ``<vm_dir>/qmp.sock``.

Command line shape (measured to work on TCG-only hosts, see the guests notes)::

    qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on -accel tcg,tb-size=32
        -cpu max -m 256 -smp 1 -nodefaults -no-user-config -display none -no-reboot
        -chardev file,id=con0,path=console.log,append=on -serial chardev:con0
        -qmp unix:qmp.sock,server=on,wait=off
        -kernel vmlinuz -initrd initrd -append 'console=ttyS0 ... tsc_early_khz=N'
        -blockdev driver=file,node-name=disk0-file,filename=/dev/fdset/N
        -blockdev driver=raw|qcow2,node-name=disk0,file=disk0-file[,backing=disk0-base]
        -device virtio-blk-device,drive=disk0
        -chardev socket,id=agent,fd=N,server=on,wait=off
        -device virtio-serial-device -device virtserialport,chardev=agent,name=nexus.agent
        -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny

Disk formats come from the :class:`~nexus.agent.vmm.base.DiskSpec` (recorded by the agent
when it made the file), never from the file's bytes. An agent-made qcow2 overlay gets its
backing as an explicit raw, read-only node of the recorded image file, so whatever backing
name a header holds is never opened.

Sandbox (:mod:`nexus.agent.vmm.sandbox`): QEMU runs as the VM's own uid, in its own cgroup,
with ``-sandbox`` (seccomp). It opens no host path: the agent opens every file and socket
(console log, disks, image files, QMP and guest sockets, the incoming migration stream) and
passes descriptors (``-add-fd`` + ``/dev/fdset/N``, ``fd=N`` sockets, ``fd:N`` migration),
and gives it private 0400 copies of kernel and initrd (read as ``/proc/self/fd/N``; image
files stay root-only). Snapshots migrate into a descriptor sent over QMP (``getfd``), since
``spawn=deny`` forbids the ``exec:`` URI and QEMU 7.2 has no ``file:``.

Acceleration: KVM only on hardware KVM (:func:`~nexus.agent.vmm.base.hardware_kvm`),
otherwise TCG with a warning; ``accel`` forces either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qemu.qmp import QMPClient

from nexus.agent.vmm.base import (
    CONSOLE_LOG,
    GUEST_SOCK,
    VMM_LOG,
    DiskSpec,
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
from nexus.agent.vmm.sandbox import (
    CgroupLayout,
    SandboxError,
    allocate_ids,
    detect_cgroups,
    give,
    limits_for,
    parse_uid_range,
    private_copy,
    unwrap_argv,
    wrap_argv,
)
from nexus.core import tracing

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

QMP_SOCK = "qmp.sock"
TCG_WARNING = (
    "no hardware KVM on this host (no kvm_intel/kvm_amd with vmx/svm): guests run under "
    "TCG software emulation, roughly 10-50x slower than KVM"
)
MIN_MEMORY_MIB = 72  # Debian's cloud kernel OOM-panics below this
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
TUNSETIFF = 0x400454CA  # linux/if_tun.h
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
VMM_KERNEL = "vmm-kernel"  # the VMM's private copies of the image's kernel and initrd
VMM_INITRD = "vmm-initrd"


def _opt(value: object) -> str:
    """A value inside a QEMU ``key=value,...`` option string (commas doubled)."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class QemuSandbox:
    """How QEMU processes are confined (see :mod:`nexus.agent.vmm.sandbox`)."""

    uids: range
    cgroups: CgroupLayout | None
    overhead_mib: int = 192
    pids_max: int = 256

    @classmethod
    def from_settings(cls, settings: Any) -> QemuSandbox | None:
        """The sandbox the settings ask for (None when ``vmm_sandbox`` is off)."""
        if not getattr(settings, "vmm_sandbox", True):
            return None
        parent = getattr(settings, "vmm_cgroup_parent", "nexus")
        return cls(
            parse_uid_range(getattr(settings, "vmm_uid_range", "64100-65099")),
            detect_cgroups(parent=parent),
            int(getattr(settings, "vmm_memory_overhead_mib", 192)),
            int(getattr(settings, "vmm_pids_max", 256)),
        )


class QemuFiles:
    """The files and sockets the agent opens for one QEMU, named in its argv by descriptor.

    With ``open_files=False`` (argv previews, unit tests) nothing is opened and the argv
    names paths instead. :meth:`close` closes the agent's copies once QEMU has its own.
    """

    def __init__(self, vm_dir: Path, *, open_files: bool = True) -> None:
        self.vm_dir = vm_dir
        self.open_files = open_files
        self.fds: list[int] = []
        self.add_fd_args: list[str] = []
        self._socks: list[socket.socket] = []

    def fd(self, path: Path, flags: int) -> int:
        """Open ``path`` (0600 if created) and keep the descriptor for the child."""
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        self.fds.append(fd)
        return fd

    def file(self, path: Path, flags: int) -> str:
        """A ``/dev/fdset/N`` name for ``path`` opened with ``flags`` (or the path)."""
        if not self.open_files:
            return str(path)
        fd = self.fd(path, flags)
        fdset = len(self.add_fd_args) // 2 + 1
        self.add_fd_args += ["-add-fd", f"fd={fd},set={fdset},opaque={_opt(path)}"]
        return f"/dev/fdset/{fdset}"

    def readable(self, path: Path) -> str:
        """A name QEMU can read ``path`` by with plain ``open()`` (kernel, initrd)."""
        if not self.open_files:
            return str(path)
        return f"/proc/self/fd/{self.fd(path, os.O_RDONLY)}"

    def listen(self, path: Path) -> str:
        """A listening Unix socket at ``path``, as chardev options (``fd=N`` or ``path=``)."""
        if not self.open_files:
            return f"path={path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socks.append(sock)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(8)
        self.fds.append(sock.fileno())
        return f"fd={sock.fileno()}"

    def tap(self, name: str) -> str:
        """``-netdev tap`` options for the existing tap ``name``: attached by the agent
        (``/dev/net/tun`` is root-only) and passed as ``fd=N``, or by name."""
        if not self.open_files:
            return f"ifname={name},script=no,downscript=no"
        fd = self.fd(Path("/dev/net/tun"), os.O_RDWR)
        ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        return f"fd={fd}"

    def close(self) -> None:
        """Close the agent's copies of every descriptor."""
        socks = {s.fileno() for s in self._socks}
        for fd in self.fds:
            if fd not in socks:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for sock in self._socks:
            sock.close()
        self.fds.clear()
        self._socks.clear()


def choose_accel(mode: str = "auto") -> tuple[Literal["kvm", "tcg"], str | None]:
    """Resolve ``auto|kvm|tcg`` into the accelerator to use and an optional warning."""
    if mode == "kvm":
        return "kvm", None if hardware_kvm() else "KVM forced by config without hardware KVM"
    if mode == "tcg":
        return "tcg", "TCG forced by config: software emulation, slow"
    if hardware_kvm():
        return "kvm", None
    return "tcg", TCG_WARNING


def _qmp_migrate_to_fd(qmp_sock: Path, fd: int, timeout: float = 30.0) -> None:
    """On one blocking QMP connection: pass ``fd`` with ``getfd`` (SCM_RIGHTS on the command
    bytes) and start ``migrate fd:snapshot``. ``getfd`` names live per monitor connection, so
    both commands share it. Blocking on purpose: ``QMPClient.send_fd_scm`` reaches into the
    asyncio transport's private socket, which uvloop (the manager's loop) does not have."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(qmp_sock))
        reader = sock.makefile("rb")

        def reply() -> dict[str, Any]:
            while True:
                line = reader.readline(1 << 20)
                if not line:
                    raise VmmError("QMP closed the connection")
                msg = json.loads(line)
                if "return" in msg or "error" in msg:
                    if "error" in msg:
                        raise VmmError(str(msg["error"].get("desc", msg["error"])))
                    return dict(msg)
                # greeting and asynchronous events are skipped

        reader.readline(1 << 20)  # greeting
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        reply()
        cmd = b'{"execute": "getfd", "arguments": {"fdname": "snapshot"}}\n'
        sock.sendmsg([cmd], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("@i", fd))])
        reply()
        sock.sendall(b'{"execute": "migrate", "arguments": {"uri": "fd:snapshot"}}\n')
        reply()


class QemuDriver(VmmDriver):
    """Drives ``qemu-system-x86_64 -M microvm``. Real guests boot with it on this host."""

    name = "qemu"

    def __init__(
        self,
        binary: str = "qemu-system-x86_64",
        accel: str = "auto",
        *,
        sandbox: QemuSandbox | Literal["auto"] | None = "auto",
    ) -> None:
        self.binary = shutil.which(binary) or binary
        self.accel, self.accel_warning = choose_accel(accel)
        if sandbox == "auto":  # the default settings' sandbox, when the agent can set one up
            from nexus.core.settings import Settings

            sandbox = QemuSandbox.from_settings(Settings()) if os.geteuid() == 0 else None
        self.sandbox: QemuSandbox | None = sandbox
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
            sandbox=self.sandbox is not None,
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

    def build_argv(
        self,
        spec: MachineSpec,
        vm_dir: Path,
        incoming: str | None = None,
        files: QemuFiles | None = None,
    ) -> list[str]:
        """The full QEMU argv for ``spec`` (``incoming``: a migration URI to restore).

        ``files`` opens what QEMU needs in the agent and names it by descriptor (the
        sandboxed QEMU cannot open a path of the host); without it (tests, dry runs) the
        argv names the paths.
        """
        f = files or QemuFiles(vm_dir, open_files=False)
        accel = "kvm" if self.accel == "kvm" else "tcg,tb-size=32"
        argv = [
            self.binary,
            "-M", "microvm,x-option-roms=off,isa-serial=on",
            "-accel", accel,
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-m", str(max(spec.memory_mib, MIN_MEMORY_MIB)),
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-sandbox", SECCOMP,
            "-name", f"nexus-{spec.vm_id},process=nexus-{spec.vm_id}",
        ]  # fmt: skip
        console = f.file(vm_dir / CONSOLE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        argv += ["-chardev", f"file,id=con0,path={_opt(console)},append=on",
                 "-serial", "chardev:con0",
                 "-chardev", f"socket,id=qmp0,{f.listen(vm_dir / QMP_SOCK)},server=on,wait=off",
                 "-mon", "chardev=qmp0,mode=control",
                 "-kernel", f.readable(spec.kernel),
                 "-append", self.kernel_cmdline(spec)]  # fmt: skip
        if spec.initrd is not None:
            argv += ["-initrd", f.readable(spec.initrd)]
        for i, disk in enumerate(spec.disks):
            argv += self._disk_args(i, disk, f)
        agent_sock = f.listen(vm_dir / GUEST_SOCK)
        argv += [
            "-chardev", f"socket,id=agent,{agent_sock},server=on,wait=off",
            "-device", "virtio-serial-device",
            "-device", "virtserialport,chardev=agent,name=nexus.agent",
        ]  # fmt: skip
        for i, nic in enumerate(spec.nics):
            argv += [
                "-netdev", f"tap,id=net{i},{f.tap(nic.tap)}",
                "-device", f"virtio-net-device,netdev=net{i},mac={nic.mac}",
            ]  # fmt: skip
        if incoming:
            argv += ["-incoming", incoming]
        return [argv[0], *f.add_fd_args, *argv[1:]]

    @staticmethod
    def _disk_args(i: int, disk: DiskSpec, f: QemuFiles) -> list[str]:
        """``-blockdev`` nodes for one disk, with its recorded format (never probed): a raw
        file, or an agent-made qcow2 overlay whose backing is pinned to a raw, read-only node
        of the recorded image file (the backing name inside the overlay is ignored)."""
        ro = disk.readonly
        mode = os.O_RDONLY if ro else os.O_RDWR
        common = "read-only=on" if ro else "read-only=off,discard=unmap"
        args = ["-blockdev",
                f"driver=file,node-name=disk{i}-file,filename={_opt(f.file(disk.path, mode))},"
                f"{common}"]  # fmt: skip
        if disk.format == "raw":
            args += ["-blockdev", f"driver=raw,node-name=disk{i},file=disk{i}-file,{common}"]
        else:
            if disk.backing is None:
                raise VmmError(f"qcow2 disk {disk.path} has no recorded backing file")
            base = f.file(disk.backing, os.O_RDONLY)
            args += [
                "-blockdev", f"driver=file,node-name=disk{i}-base-file,filename={_opt(base)},"
                             "read-only=on",
                "-blockdev", f"driver=raw,node-name=disk{i}-base,file=disk{i}-base-file,"
                             "read-only=on",
                "-blockdev", f"driver=qcow2,node-name=disk{i},file=disk{i}-file,"
                             f"backing=disk{i}-base,{common}",
            ]  # fmt: skip
        return [*args, "-device", f"virtio-blk-device,drive=disk{i}"]

    # --- QMP ---------------------------------------------------------------------------

    async def qmp(self, handle: VmmHandle, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run one QMP command on the VM's monitor socket and return its result."""
        client = QMPClient(f"nexus-{handle.vm_id}")
        try:
            with tracing.span(f"qmp {cmd}", nexus__vm_id=handle.vm_id, qmp__command=cmd):
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

    async def _spawn(
        self,
        spec: MachineSpec,
        vm_dir: Path,
        incoming: Path | None,
    ) -> VmmHandle:
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
        files = QemuFiles(vm_dir)
        try:
            if self.sandbox is not None:
                spec, wrap = await asyncio.to_thread(self._enter_sandbox, spec, vm_dir)
            else:
                wrap = None
            mig = None
            if incoming is not None:
                mig = f"fd:{files.fd(incoming, os.O_RDONLY)}"
            qemu_argv = self.build_argv(spec, vm_dir, incoming=mig, files=files)
            argv = wrap(qemu_argv) if wrap else qemu_argv
            pid, start_time = await asyncio.to_thread(
                spawn_detached, argv, vm_dir, pass_fds=tuple(files.fds)
            )
        except (OSError, SandboxError) as exc:
            raise VmmError(f"cannot start QEMU for VM {spec.vm_id}: {exc}") from exc
        finally:
            files.close()  # QEMU holds its own copies; the sockets must be QEMU's alone
        handle = VmmHandle(spec.vm_id, self.name, pid, start_time, vm_dir, argv)
        handle.save()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if not process_alive(pid, start_time):
                msg = self._death_message(handle)
                self._drop_cgroup(vm_dir)
                raise VmmError(msg)
            try:
                await self.qmp(handle, "query-status")
            except VmmError:
                await asyncio.sleep(0.05)
                continue
            return handle
        await self.kill(handle)
        self._drop_cgroup(vm_dir)
        raise VmmError(f"QEMU for VM {spec.vm_id} did not answer QMP within 30 s")

    def _drop_cgroup(self, vm_dir: Path) -> None:
        """Remove the VM's cgroup (its QEMU is gone). Idempotent."""
        if self.sandbox is not None and self.sandbox.cgroups is not None:
            self.sandbox.cgroups.remove(vm_dir.name)

    # --- sandbox -----------------------------------------------------------------------

    def vmm_owner(self, vm_dir: Path) -> tuple[int, int] | None:
        """The VM's own uid/gid (allocated and recorded on first use) when sandboxed."""
        if self.sandbox is None:
            return None
        try:
            ids = allocate_ids(vm_dir, self.sandbox.uids)
        except SandboxError as exc:
            raise VmmError(str(exc)) from exc
        return ids.uid, ids.gid

    def _enter_sandbox(
        self, spec: MachineSpec, vm_dir: Path
    ) -> tuple[MachineSpec, Callable[[list[str]], list[str]]]:
        """Ids, cgroup and private kernel/initrd copies of one VM; returns the spec that
        names the copies and the argv wrapper that drops into the sandbox."""
        sb = self.sandbox
        if sb is None:
            raise SandboxError("no sandbox configured")
        ids = allocate_ids(vm_dir, sb.uids)
        if sb.cgroups is None:
            raise SandboxError(
                "no usable cgroup hierarchy (v2 with memory, cpu and pids, or v1 with those "
                "controllers mounted); set vmm_sandbox = false only to debug"
            )
        limits = limits_for(spec.memory_mib, spec.vcpus, sb.overhead_mib, sb.pids_max)
        try:
            sb.cgroups.create(spec.vm_id, limits)
        except OSError as exc:
            raise SandboxError(f"cannot create the cgroup of VM {spec.vm_id}: {exc}") from exc
        kernel = private_copy(spec.kernel, vm_dir / VMM_KERNEL, ids)
        initrd = private_copy(spec.initrd, vm_dir / VMM_INITRD, ids) if spec.initrd else None
        for disk in spec.disks:  # defence in depth: QEMU gets them as descriptors anyway
            if disk.path.parent == vm_dir:
                give(disk.path, ids, 0o600)
        give(vm_dir / CONSOLE_LOG, ids, 0o600)
        procs = sb.cgroups.procs_files(spec.vm_id)
        spec = dataclasses.replace(spec, kernel=kernel, initrd=initrd)
        return spec, lambda argv: wrap_argv(argv, ids, procs)

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
        """Pause and migrate the VM state into ``dest/memory`` through a descriptor the
        agent opened and passed over QMP (``getfd`` + ``fd:`` URI): the sandboxed QEMU may
        neither open host paths nor spawn ``cat``. Leaves the VM paused."""
        dest.mkdir(parents=True, exist_ok=True)
        await self.qmp(handle, "stop")
        fd = os.open(dest / "memory", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(_qmp_migrate_to_fd, handle.vm_dir / QMP_SOCK, fd)
        except (OSError, ValueError, VmmError) as exc:
            raise VmmError(f"QMP migrate failed for VM {handle.vm_id}: {exc}") from exc
        finally:
            os.close(fd)
        await self._wait_migration(handle)
        meta = {"driver": self.name, "vm_id": handle.vm_id, "argv": unwrap_argv(handle.argv)}
        (dest / "snapshot.json").write_text(json.dumps(meta, indent=2))

    async def restore(self, spec: MachineSpec, vm_dir: Path, source: Path) -> VmmHandle:
        """Start QEMU with ``-incoming fd:N`` (``source/memory`` opened by the agent) and
        resume the guest."""
        memory = source / "memory"
        if not memory.exists():
            raise VmmError(f"snapshot {source} has no memory file")
        handle = await self._spawn(spec, vm_dir, incoming=memory)
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
        """Remove QMP/guest sockets and vmm.json, and the VM's cgroup (its VMM is gone)."""
        super().cleanup(vm_dir)
        with contextlib.suppress(FileNotFoundError):
            (vm_dir / QMP_SOCK).unlink()
        self._drop_cgroup(vm_dir)
