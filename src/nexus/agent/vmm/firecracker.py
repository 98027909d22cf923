"""Firecracker driver: configures and controls Firecracker over its API Unix socket.

.. warning::
   No Firecracker binary exists on the development machine (no hardware KVM there), so this
   driver has **never booted a guest**. It is tested against Firecracker's official API
   contract (``firecracker-api.yaml``, Swagger 2.0): a fake Firecracker validates every
   request's path, method and body against the spec and the exact request sequence. The
   jailer mode is tested the same way, against a fake jailer that follows the documented
   contract of Firecracker's ``docs/jailer.md``; it has **never run with a real jailer**.

Start sequence (all ``PUT`` unless noted)::

    firecracker --api-sock <vm_dir>/api.sock --id <fc id>     (stdout = serial console)
    /machine-config   {vcpu_count, mem_size_mib}
    /boot-source      {kernel_image_path (ELF vmlinux), initrd_path?, boot_args}
    /drives/rootfs    {drive_id, path_on_host, is_root_device: false, is_read_only: false}
    /drives/disk{i}   {...}  one per extra disk (volume)
    /network-interfaces/{id}  {iface_id, host_dev_name, guest_mac}
    /vsock            {guest_cid: 3, uds_path: <vm_dir>/guest.sock}
    /actions          {action_type: InstanceStart}

``<fc id>`` is the VM id with every character other than ``[A-Za-z0-9-]`` replaced by
``-`` (``vm_01j...`` -> ``vm-01j...``): Firecracker and the jailer accept only alphanumerics
and hyphens, at most 64 characters.

Control: ``PATCH /vm {state: Paused|Resumed}``, ``PUT /actions {SendCtrlAltDel}`` for a
graceful stop, ``PUT /snapshot/create`` / ``PUT /snapshot/load``, ``GET /`` for status.
The root disk is attached as a normal drive (``is_root_device: false``) because our
initramfs mounts it itself (``nexus.root=/dev/vda``), exactly as under QEMU.

Jailer
======

When ``jailer`` is given, the VMM is started as::

    jailer --id <fc id> --exec-file <firecracker> --uid U --gid G
           --chroot-base-dir <vm_dir>/jail
           --cgroup-version 1|2 --parent-cgroup nexus
           --cgroup memory.max=<guest + overhead> --cgroup cpu.max=<vCPUs x 100000>
           --cgroup pids.max=<n>             (v1: memory.limit_in_bytes, cpu.cfs_*_us, pids.max)
           -- --api-sock /api.sock

``U``/``G`` are the VM's own ids from ``vmm_uid_range`` (recorded in ``sandbox.json`` in the
VM dir, like QEMU's sandbox), or ``jailer_uid``/``jailer_gid`` when no range is given.
Firecracker reads raw disks only: a disk recorded as anything else is refused.

(no ``--daemonize``: the jailer execs Firecracker in the same process, so the recorded pid
is Firecracker's and its stdout stays the serial console). The jailer's chroot is
``<vm_dir>/jail/<basename of firecracker>/<fc id>/root``; the driver builds it *before*
spawning (the jailer leaves an existing directory alone) and stages:

=====================  ===============================  ======================================
in the chroot          from                             how
=====================  ===============================  ======================================
``/vmlinux``           ``spec.kernel`` (shared image)   reflink or copy, never a hard link
``/initrd.img``        ``spec.initrd`` (shared image)   reflink or copy
``/disk.img``          ``spec.root_disk`` (private)     hard link (same filesystem required)
``/vol<i>.img``        ``spec.extra_disks[i]``          hard link (same filesystem required)
``/vmstate``           snapshot ``vmstate`` (restore)   reflink or copy (snapshots are shared)
``/memory``            snapshot ``memory`` (restore)    reflink or copy
=====================  ===============================  ======================================

Every staged file and the chroot root are chowned to ``jailer_uid:jailer_gid`` (a shared
image inode is never chowned: it is copied first; the VM's own disk and its volumes *are*
chowned, through the hard link). Every API body then uses chroot-relative paths
(``/vmlinux``, ``/disk.img``, ``/vol0.img``, vsock ``uds_path: /guest.sock``, snapshot
``/vmstate`` + ``/memory``), because the jailed Firecracker resolves them inside its chroot.

The host side reaches the jailed sockets through symlinks in the VM dir:
``<vm_dir>/api.sock -> jail/.../root/api.sock`` and ``<vm_dir>/guest.sock ->
jail/.../root/guest.sock`` (short paths: a Unix socket path is limited to 108 bytes and the
chroot path is long). Before each API call the driver checks that the chroot entry is a
socket (the jailed process owns the chroot root and could put a symlink there). The chroot
is also recorded in ``vmm.json`` (``extra.chroot``); :meth:`FirecrackerDriver.adopt`
recreates missing symlinks from it after an agent restart.

Snapshots of a jailed VM are written by Firecracker to ``<chroot>/vmstate`` and
``<chroot>/memory``, then moved to the caller's destination and chowned back to the agent's
uid/gid. A restore copies them into a fresh chroot. Disk paths are stored in the vmstate,
so a snapshot taken jailed restores only jailed (the chroot-relative paths are stable), and
one taken without a jailer only without one.

:meth:`FirecrackerDriver.cleanup` removes ``<vm_dir>/jail`` (links and copies only; the VM's
disk and volumes keep their original names); a start or restore that fails removes it too.
Tap devices are created owned by the VM's jail uid (a jailed Firecracker has no
``CAP_NET_ADMIN``). Not handled here: ``--netns`` (the tap stays in the host's network
namespace) and per-VM ``io`` limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Literal

import httpx

from nexus.agent.vmm.base import (
    CONSOLE_LOG,
    GUEST_SOCK,
    DiskSpec,
    DriverCapabilities,
    MachineSpec,
    VmmDriver,
    VmmError,
    VmmHandle,
    console_tail,
    hardware_kvm,
    process_alive,
    rotate_console,
    spawn_detached,
    wait_exit,
)
from nexus.agent.vmm.sandbox import (
    CPU_PERIOD_US,
    SandboxError,
    VmIds,
    allocate_ids,
    limits_for,
)

API_SOCK = "api.sock"
GUEST_CID = 3
GUEST_VSOCK_PORT = 1024

#: chroot base directory of the jailer, inside the VM dir
JAIL_DIR = "jail"
#: default ``jailer_uid`` / ``jailer_gid``: unprivileged ids no account should own
DEFAULT_JAILER_ID = 64000
#: paths as seen by a jailed Firecracker (relative to its chroot)
JAIL_API_SOCK = "/api.sock"
JAIL_GUEST_SOCK = "/guest.sock"
JAIL_KERNEL = "/vmlinux"
JAIL_INITRD = "/initrd.img"
JAIL_ROOT_DISK = "/disk.img"
JAIL_VMSTATE = "/vmstate"
JAIL_MEMORY = "/memory"

_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): reflink on btrfs/xfs


def fc_instance_id(vm_id: str) -> str:
    """``vm_id`` as Firecracker/jailer accept it: ``[A-Za-z0-9-]{1,64}``."""
    out = re.sub(r"[^A-Za-z0-9-]", "-", vm_id)[:64]
    if not out:
        raise VmmError(f"VM id {vm_id!r} cannot be a Firecracker instance id")
    return out


def jail_path(root: Path, inside: str) -> Path:
    """Host path of ``inside`` (an absolute path as the jailed Firecracker sees it)."""
    return root / inside.lstrip("/")


def _copy_file(src: Path, dst: Path) -> None:
    """Reflink ``src`` to a new ``dst`` if the filesystem can, else copy the bytes."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass
        shutil.copyfileobj(fin, fout, 1024 * 1024)


def _raw_disks(spec: MachineSpec) -> tuple[DiskSpec, ...]:
    """The VM's disks; Firecracker reads raw files only, so a recorded overlay is refused
    rather than handed over (it would see the qcow2 container as disk bytes)."""
    for disk in spec.disks:
        if disk.format != "raw":
            raise VmmError(f"firecracker reads raw disks only; {disk.path} is {disk.format}")
    return spec.disks


def _link_file(src: Path, dst: Path) -> None:
    """Hard-link a VM-private file into the chroot (writes must reach the original)."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise VmmError(
                f"jailer: {src} is on another filesystem than the jail ({dst.parent}); "
                "it cannot be hard-linked into the chroot"
            ) from exc
        raise VmmError(f"jailer: cannot link {src} into the chroot: {exc}") from exc


class FirecrackerDriver(VmmDriver):
    """Drives the ``firecracker`` binary over its REST API (Unix socket)."""

    name = "firecracker"

    def __init__(
        self,
        binary: str = "firecracker",
        jailer: str | None = None,
        jailer_uid: int = DEFAULT_JAILER_ID,
        jailer_gid: int = DEFAULT_JAILER_ID,
        *,
        uid_range: range | None = None,
        cgroup_version: Literal[1, 2] = 2,
        cgroup_parent: str = "nexus",
        memory_overhead_mib: int = 192,
        pids_max: int = 256,
    ) -> None:
        self.binary = shutil.which(binary) or binary
        self.jailer = (shutil.which(jailer) or jailer) if jailer else None
        if self.jailer and (jailer_uid <= 0 or jailer_gid <= 0):
            raise VmmError("jailer_uid and jailer_gid must be unprivileged ids (> 0)")
        if uid_range is not None and uid_range.start <= 0:
            raise VmmError("the VMM uid range must not contain 0")
        self.jailer_uid = jailer_uid
        self.jailer_gid = jailer_gid
        # per-VM uids (the same range as QEMU's sandbox); jailer_uid/gid when None
        self.uid_range = uid_range
        self.cgroup_version: Literal[1, 2] = cgroup_version
        self.cgroup_parent = cgroup_parent
        self.memory_overhead_mib = memory_overhead_mib
        self.pids_max = pids_max
        self._caps = DriverCapabilities(
            name=self.name,
            accel="kvm",
            accel_warning=None if hardware_kvm() else "Firecracker needs hardware KVM",
            pause=True,
            snapshots=True,
            reboot=False,
            graceful_stop=True,
            guest_channel="vsock",
            kernel_format="vmlinux",
            tested_with_real_guests=False,
            # a jailed Firecracker has no CAP_NET_ADMIN: it can only open taps it owns
            # (per VM: see vmm_owner; this is the fallback without a uid range)
            tap_owner=(self.jailer_uid, self.jailer_gid) if self.jailer else None,
            sandbox=self.jailer is not None,
        )

    @property
    def capabilities(self) -> DriverCapabilities:
        """See :class:`DriverCapabilities`."""
        return self._caps

    # --- API ---------------------------------------------------------------------------

    def _client(self, vm_dir: Path) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(vm_dir / API_SOCK))
        return httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30.0)

    @staticmethod
    def _check_jailed_socket(vm_dir: Path) -> None:
        """In jail mode ``<vm_dir>/api.sock`` is a symlink into the chroot, whose root the
        jailed process owns: refuse to follow it unless the entry there is a socket."""
        link = vm_dir / API_SOCK
        if not link.is_symlink():
            return
        target = vm_dir / os.readlink(link)
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return  # not created yet: the connection fails normally
        if not stat.S_ISSOCK(mode):
            raise VmmError(f"Firecracker API socket {target} is not a socket")

    async def api(
        self, vm_dir: Path, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        """One API call; raises :class:`VmmError` with Firecracker's ``fault_message``."""
        self._check_jailed_socket(vm_dir)
        try:
            async with self._client(vm_dir) as client:
                resp = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise VmmError(f"Firecracker API {method} {path} failed: {exc}") from exc
        if resp.status_code >= 400:
            try:
                fault = resp.json().get("fault_message", resp.text)
            except ValueError:
                fault = resp.text
            raise VmmError(f"Firecracker API {method} {path} -> {resp.status_code}: {fault}")
        return resp.json() if resp.content else None

    # --- jail --------------------------------------------------------------------------

    def chroot_dir(self, vm_dir: Path, vm_id: str) -> Path:
        """The jailer's chroot: ``<chroot-base-dir>/<exec-file name>/<id>/root``."""
        return vm_dir / JAIL_DIR / Path(self.binary).name / fc_instance_id(vm_id) / "root"

    def _ids(self, vm_dir: Path) -> VmIds:
        """The uid/gid the jailer runs this VM's Firecracker as: its own from the range
        (recorded in the VM dir, so re-adoption keeps it), else ``jailer_uid/gid``."""
        if self.uid_range is None:
            return VmIds(self.jailer_uid, self.jailer_gid)
        try:
            return allocate_ids(vm_dir, self.uid_range)
        except SandboxError as exc:
            raise VmmError(str(exc)) from exc

    def vmm_owner(self, vm_dir: Path) -> tuple[int, int] | None:
        """The jailed Firecracker's uid/gid (its taps must be owned by it); None unjailed."""
        if not self.jailer:
            return None
        ids = self._ids(vm_dir)
        return ids.uid, ids.gid

    def cgroup_args(self, spec: MachineSpec) -> list[str]:
        """``--cgroup-version``, ``--parent-cgroup`` and one ``--cgroup <file>=<value>`` per
        limit: guest memory plus a bounded overhead, one CPU per vCPU, a task count. (v2
        ``cpu.max`` gets the quota alone, so the value has no space; the period stays the
        kernel's default of 100000 us.)"""
        lim = limits_for(spec.memory_mib, spec.vcpus, self.memory_overhead_mib, self.pids_max)
        quota = lim.cpus * CPU_PERIOD_US
        if self.cgroup_version == 2:
            files = [f"memory.max={lim.memory_bytes}", f"cpu.max={quota}",
                     f"pids.max={lim.pids}"]  # fmt: skip
        else:
            files = [f"memory.limit_in_bytes={lim.memory_bytes}",
                     f"cpu.cfs_period_us={CPU_PERIOD_US}", f"cpu.cfs_quota_us={quota}",
                     f"pids.max={lim.pids}"]  # fmt: skip
        args = ["--cgroup-version", str(self.cgroup_version), "--parent-cgroup",
                self.cgroup_parent]  # fmt: skip
        for f in files:
            args += ["--cgroup", f]
        return args

    @staticmethod
    def _jail_disk_name(index: int, spec: MachineSpec) -> str:
        if index == 0 and spec.root_disk is not None:
            return JAIL_ROOT_DISK
        return f"/vol{index - (1 if spec.root_disk is not None else 0)}.img"

    def _stage(self, spec: MachineSpec, vm_dir: Path, snapshot: Path | None) -> Path:
        """Build the chroot and place the VM's files in it (see the module docstring)."""
        if "firecracker" not in Path(self.binary).name:
            # the jailer refuses an exec-file whose name lacks "firecracker"
            raise VmmError(f"jailer: the Firecracker binary name must contain 'firecracker' "
                           f"({self.binary})")  # fmt: skip
        self._remove_jail(vm_dir)  # leftovers of a crashed run
        root = self.chroot_dir(vm_dir, spec.vm_id)
        staged: list[Path] = []
        try:
            (vm_dir / JAIL_DIR).mkdir(mode=0o700)
            root.mkdir(parents=True)
            copies: list[tuple[Path, str]] = [(spec.kernel, JAIL_KERNEL)]
            if spec.initrd is not None:
                copies.append((spec.initrd, JAIL_INITRD))
            if snapshot is not None:
                copies += [(snapshot / "vmstate", JAIL_VMSTATE), (snapshot / "memory", JAIL_MEMORY)]
            for src, inside in copies:
                dst = jail_path(root, inside)
                _copy_file(src, dst)
                staged.append(dst)
            for i, disk in enumerate(spec.disks):
                dst = jail_path(root, self._jail_disk_name(i, spec))
                _link_file(disk.path, dst)
                staged.append(dst)
            ids = self._ids(vm_dir)
            for path in [*staged, root]:
                os.chown(path, ids.uid, ids.gid, follow_symlinks=False)
            os.chmod(root, 0o700)
            for name, inside in ((API_SOCK, JAIL_API_SOCK), (GUEST_SOCK, JAIL_GUEST_SOCK)):
                (vm_dir / name).symlink_to(jail_path(root, inside).relative_to(vm_dir))
        except OSError as exc:
            raise VmmError(f"jailer: cannot stage VM files into {root}: {exc}") from exc
        return root

    def _remove_jail(self, vm_dir: Path) -> None:
        """Remove the chroot (links and copies only) and the socket symlinks into it."""
        for name in (API_SOCK, GUEST_SOCK):
            if (vm_dir / name).is_symlink():
                (vm_dir / name).unlink()
        jail = vm_dir / JAIL_DIR
        if jail.is_dir() and not jail.is_symlink():
            shutil.rmtree(jail, ignore_errors=True)

    @staticmethod
    def _jail_root(handle: VmmHandle) -> Path | None:
        chroot = handle.extra.get("chroot")
        return Path(chroot) if chroot else None

    # --- lifecycle ---------------------------------------------------------------------

    def build_argv(self, spec: MachineSpec, vm_dir: Path) -> list[str]:
        """The process argv (jailer-wrapped if configured)."""
        fc_id = fc_instance_id(spec.vm_id)
        if self.jailer:
            # the jailer passes --id to Firecracker itself; args after "--" are Firecracker's
            ids = self._ids(vm_dir)
            return [
                self.jailer, "--id", fc_id, "--exec-file", self.binary,
                "--uid", str(ids.uid), "--gid", str(ids.gid),
                "--chroot-base-dir", str(vm_dir / JAIL_DIR),
                *self.cgroup_args(spec),
                "--", "--api-sock", JAIL_API_SOCK,
            ]  # fmt: skip
        return [self.binary, "--api-sock", str(vm_dir / API_SOCK), "--id", fc_id]

    def boot_args(self, spec: MachineSpec) -> str:
        """Guest kernel command line (serial console, i8042 Ctrl-Alt-Del for stop)."""
        parts = ["console=ttyS0", "reboot=k", "panic=1", "pci=off", "quiet"]
        if spec.root_disk is not None:
            parts.append("nexus.root=/dev/vda")
        if spec.kernel_args:
            parts.append(spec.kernel_args)
        return " ".join(parts)

    async def _spawn(
        self, spec: MachineSpec, vm_dir: Path, snapshot: Path | None = None
    ) -> VmmHandle:
        """Stage the jail (if any), spawn, wait for the API socket. On failure nothing of
        the jail is left behind."""
        _raw_disks(spec)  # refuse a non-raw disk before anything is staged
        for name in (API_SOCK, GUEST_SOCK):
            with contextlib.suppress(FileNotFoundError):
                (vm_dir / name).unlink()
        try:
            root = None
            if self.jailer:
                root = await asyncio.to_thread(self._stage, spec, vm_dir, snapshot)
            rotate_console(vm_dir)
            argv = self.build_argv(spec, vm_dir)
            # Firecracker writes the guest serial console to its stdout.
            pid, start_time = await asyncio.to_thread(
                spawn_detached, argv, vm_dir, log_name=CONSOLE_LOG
            )
        except BaseException:
            await asyncio.to_thread(self._remove_jail, vm_dir)
            raise
        extra: dict[str, Any] = {}
        if root is not None:
            extra = {"chroot": str(root), "api_sock": str(jail_path(root, JAIL_API_SOCK))}
        handle = VmmHandle(spec.vm_id, self.name, pid, start_time, vm_dir, argv, extra=extra)
        handle.save()
        try:
            deadline = time.monotonic() + 10.0
            while not (vm_dir / API_SOCK).exists():
                if not process_alive(pid, start_time):
                    raise VmmError(
                        f"firecracker exited during start of VM {spec.vm_id}:\n"
                        + console_tail(vm_dir, 20)
                    )
                if time.monotonic() > deadline:
                    raise VmmError("firecracker did not create its API socket within 10 s")
                await asyncio.sleep(0.01)
        except BaseException:
            await self._abort(handle)
            raise
        return handle

    async def _abort(self, handle: VmmHandle) -> None:
        """A start failed: kill the process, then remove its jail (if any)."""
        await self.kill(handle)
        if self._jail_root(handle) is not None:
            await asyncio.to_thread(self._remove_jail, handle.vm_dir)

    async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
        """Spawn Firecracker, configure the machine through the API, ``InstanceStart``."""
        existing = VmmHandle.load(vm_dir)
        if existing and existing.driver == self.name and self.is_alive(existing):
            return existing
        handle = await self._spawn(spec, vm_dir)
        jailed = self._jail_root(handle) is not None
        try:
            machine = {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib}
            await self.api(vm_dir, "PUT", "/machine-config", machine)
            boot: dict[str, Any] = {
                "kernel_image_path": JAIL_KERNEL if jailed else str(spec.kernel),
                "boot_args": self.boot_args(spec),
            }
            if spec.initrd is not None:
                boot["initrd_path"] = JAIL_INITRD if jailed else str(spec.initrd)
            await self.api(vm_dir, "PUT", "/boot-source", boot)
            for i, disk in enumerate(_raw_disks(spec)):
                drive_id = "rootfs" if i == 0 and spec.root_disk else f"disk{i}"
                await self.api(
                    vm_dir,
                    "PUT",
                    f"/drives/{drive_id}",
                    {
                        "drive_id": drive_id,
                        "path_on_host": self._jail_disk_name(i, spec) if jailed else str(disk.path),
                        "is_root_device": False,
                        "is_read_only": disk.readonly,
                    },
                )
            for nic in spec.nics:
                await self.api(
                    vm_dir,
                    "PUT",
                    f"/network-interfaces/{nic.id}",
                    {
                        "iface_id": nic.id,
                        "host_dev_name": nic.tap,
                        "guest_mac": nic.mac,
                    },
                )
            uds = JAIL_GUEST_SOCK if jailed else str(vm_dir / GUEST_SOCK)
            await self.api(vm_dir, "PUT", "/vsock", {"guest_cid": GUEST_CID, "uds_path": uds})
            await self.api(vm_dir, "PUT", "/actions", {"action_type": "InstanceStart"})
        except BaseException:
            await self._abort(handle)
            raise
        return handle

    async def stop(
        self, handle: VmmHandle, *, graceful: bool = True, timeout: float = 20.0
    ) -> None:
        """``SendCtrlAltDel`` and wait ``timeout`` s, then SIGKILL. Idempotent."""
        if not self.is_alive(handle):
            return
        if graceful:
            with contextlib.suppress(VmmError):
                if await self.status(handle) == "paused":
                    await self.resume(handle)
                await self.api(handle.vm_dir, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
                if await wait_exit(handle, timeout):
                    return
        await self.kill(handle)

    async def pause(self, handle: VmmHandle) -> None:
        """``PATCH /vm {state: Paused}``."""
        await self.api(handle.vm_dir, "PATCH", "/vm", {"state": "Paused"})

    async def resume(self, handle: VmmHandle) -> None:
        """``PATCH /vm {state: Resumed}``."""
        await self.api(handle.vm_dir, "PATCH", "/vm", {"state": "Resumed"})

    async def status(self, handle: VmmHandle) -> Literal["running", "paused", "stopped"]:
        """From ``GET /`` (InstanceInfo.state)."""
        if not self.is_alive(handle):
            return "stopped"
        try:
            info = await self.api(handle.vm_dir, "GET", "/")
        except VmmError:
            return "running"
        return "paused" if info and info.get("state") == "Paused" else "running"

    async def snapshot(self, handle: VmmHandle, dest: Path) -> None:
        """Pause and ``PUT /snapshot/create`` (Full) into ``dest/{vmstate,memory}``.

        Jailed: Firecracker writes ``<chroot>/vmstate`` and ``<chroot>/memory``; they are
        then moved to ``dest`` and chowned to the agent's uid/gid."""
        dest.mkdir(parents=True, exist_ok=True)
        root = self._jail_root(handle)
        if root is not None:
            for inside in (JAIL_VMSTATE, JAIL_MEMORY):
                with contextlib.suppress(FileNotFoundError):
                    jail_path(root, inside).unlink()
        await self.pause(handle)
        await self.api(
            handle.vm_dir,
            "PUT",
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": JAIL_VMSTATE if root else str(dest / "vmstate"),
                "mem_file_path": JAIL_MEMORY if root else str(dest / "memory"),
            },
        )
        if root is not None:
            await asyncio.to_thread(self._collect_snapshot, root, dest)
        meta = {"driver": self.name, "vm_id": handle.vm_id}
        (dest / "snapshot.json").write_text(json.dumps(meta, indent=2))

    @staticmethod
    def _collect_snapshot(root: Path, dest: Path) -> None:
        """Move the snapshot files out of the chroot (regular files only) into ``dest``."""
        for inside, name in ((JAIL_VMSTATE, "vmstate"), (JAIL_MEMORY, "memory")):
            src = jail_path(root, inside)
            try:
                mode = os.lstat(src).st_mode
            except FileNotFoundError as exc:
                raise VmmError(f"snapshot: Firecracker did not write {inside}") from exc
            if not stat.S_ISREG(mode):
                raise VmmError(f"snapshot: {src} is not a regular file")
            target = dest / name
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            shutil.move(src, target)
            os.chown(target, os.geteuid(), os.getegid(), follow_symlinks=False)

    async def restore(self, spec: MachineSpec, vm_dir: Path, source: Path) -> VmmHandle:
        """Fresh Firecracker + ``PUT /snapshot/load`` (File backend, resume).

        Jailed: the snapshot files are copied into the new chroot (``/vmstate``,
        ``/memory``) next to the staged disks, which keep the chroot-relative paths the
        snapshot recorded."""
        handle = await self._spawn(spec, vm_dir, snapshot=source)
        jailed = self._jail_root(handle) is not None
        try:
            await self.api(
                vm_dir,
                "PUT",
                "/snapshot/load",
                {
                    "snapshot_path": JAIL_VMSTATE if jailed else str(source / "vmstate"),
                    "mem_backend": {
                        "backend_type": "File",
                        "backend_path": JAIL_MEMORY if jailed else str(source / "memory"),
                    },
                    "vsock_override": {
                        "uds_path": JAIL_GUEST_SOCK if jailed else str(vm_dir / GUEST_SOCK)
                    },
                    "resume_vm": True,
                },
            )
        except BaseException:
            await self._abort(handle)
            raise
        return handle

    async def adopt(self, vm_dir: Path) -> VmmHandle | None:
        """As the base class; for a jailed VMM also recreate the socket symlinks into the
        chroot recorded in ``vmm.json`` if they are missing."""
        handle = await super().adopt(vm_dir)
        root = self._jail_root(handle) if handle is not None else None
        if root is not None:
            for name, inside in ((API_SOCK, JAIL_API_SOCK), (GUEST_SOCK, JAIL_GUEST_SOCK)):
                link = vm_dir / name
                if not link.is_symlink():
                    with contextlib.suppress(FileNotFoundError):
                        link.unlink()
                    link.symlink_to(os.path.relpath(jail_path(root, inside), vm_dir))
        return handle

    def cleanup(self, vm_dir: Path) -> None:
        """Remove the API socket, the vsock UDS, vmm.json and the jailer's chroot."""
        super().cleanup(vm_dir)
        with contextlib.suppress(FileNotFoundError):
            (vm_dir / API_SOCK).unlink()
        self._remove_jail(vm_dir)


__all__ = [
    "API_SOCK",
    "DEFAULT_JAILER_ID",
    "GUEST_VSOCK_PORT",
    "FirecrackerDriver",
    "fc_instance_id",
    "wait_exit",
]
