"""The agent runtime: VM state directories, per-VM state machine, re-adoption, readiness.

On-disk layout (the truth that survives agent restarts)::

    <state_dir>/vms/<id>/
        spec.json      the VmSpec last PUT
        state.json     {state, error, console_tail, ready_at}
        vmm.json       driver, pid, process start time, argv (written by the driver)
        disk.img       the VM's private root disk (qcow2 overlay of the image, or a reflink /
                       sparse copy; see nexus.agent.storage.disks)
        disk.img.json  how the agent made disk.img (its format record; absent = raw)
        sandbox.json   the uid/gid the VM's VMM runs as (nexus.agent.vmm.sandbox)
        vmm-kernel, vmm-initrd   the VMM's private 0400 copies of the image's boot files
        console.log    serial console (bounded), console.log.1 (previous tail)
        qmp.sock / api.sock, guest.sock

State machine::

    stopped --start--> starting --VMM runs--> running <--pause/resume--> paused
    running|paused --stop--> stopping --> stopped
    starting|running --VMM died unexpectedly / start failed--> failed --start--> starting

At start-up (:meth:`AgentRuntime.startup`) every VM directory is re-read; a VMM that still
runs (same pid *and* process start time) is adopted, one that died while the agent was away
is marked ``stopped`` (or ``failed`` if its console shows a kernel panic).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexus.agent import hostfacts
from nexus.agent.guestconn import GuestConnections
from nexus.agent.netwire import NetWire
from nexus.agent.storage.disks import ROOT_DISK, DiskError, new_root_disk, read_record
from nexus.agent.storage.imagecache import ImageCache, ImageFetchError, ImageMissing
from nexus.agent.vmm import select_driver
from nexus.agent.vmm.base import (
    DiskSpec,
    MachineSpec,
    NicSpec,
    UnsupportedOperation,
    VmmDriver,
    VmmError,
    VmmHandle,
    cap_console,
    console_tail,
)
from nexus.core.files import write_json_atomic
from nexus.core.settings import Settings
from nexus.hostapi.guestboot import guest_hostname
from nexus.hostapi.models import HostFacts, VmSpec, VmState, VmStatus

log = logging.getLogger(__name__)

PANIC_MARKERS = ("Kernel panic", "NEXUS-INIT-ERROR")
MONITOR_INTERVAL_S = 0.5


class RuntimeProblem(Exception):
    """Base of runtime errors that map to an HTTP problem (``status``, ``type``)."""

    status = 500
    type = "agent-error"


class VmNotFound(RuntimeProblem):
    """No VM with this id on this host."""

    status = 404
    type = "vm-not-found"


class VmConflict(RuntimeProblem):
    """The operation is not allowed in the VM's current state."""

    status = 409
    type = "vm-state-conflict"


class VmInvalid(RuntimeProblem):
    """The VM spec cannot be satisfied on this host (missing image file, ...)."""

    status = 422
    type = "vm-spec-invalid"


class ImageUnavailable(RuntimeProblem):
    """The image could not be fetched from the manager (unreachable, refused) or the
    download failed verification (sha256 mismatch)."""

    status = 502
    type = "image-unavailable"


# --- guest readiness (pluggable) ---------------------------------------------------------

ReadinessProbe = Callable[[Path, float], Awaitable[bool]]
"""``await probe(vm_dir, timeout_s)`` -> True once the guest is ready, False on timeout."""


# --- one VM ------------------------------------------------------------------------------


class ManagedVm:
    """Runtime bookkeeping for one VM (in memory; mirrored to ``state.json``)."""

    def __init__(self, vm_dir: Path, spec: VmSpec) -> None:
        self.dir = vm_dir
        self.spec = spec
        self.state: VmState = "stopped"
        self.error: str | None = None
        self.console_tail: str | None = None
        self.ready_at: datetime | None = None
        self.handle: VmmHandle | None = None
        self.lock = asyncio.Lock()
        self.monitor: asyncio.Task[None] | None = None
        self.readiness: asyncio.Task[None] | None = None

    def status(self) -> VmStatus:
        """The wire status."""
        return VmStatus(
            id=self.spec.id,
            state=self.state,
            pid=self.handle.pid
            if self.handle and self.state not in ("stopped", "failed")
            else None,
            guest_ready=self.ready_at is not None and self.state in ("running", "paused"),
            ready_at=self.ready_at,
            error=self.error,
            console_tail=self.console_tail if self.state == "failed" else None,
        )

    def save(self) -> None:
        """Persist state.json."""
        write_json_atomic(
            self.dir / "state.json",
            {
                "state": self.state,
                "error": self.error,
                "console_tail": self.console_tail,
                "ready_at": self.ready_at.isoformat() if self.ready_at else None,
            },
            mode=0o644,
        )

    def load_state(self) -> dict[str, Any]:
        """Read state.json ({} if missing)."""
        try:
            data: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def set(self, state: VmState, error: str | None = None, tail: str | None = None) -> None:
        """Transition and persist."""
        self.state = state
        self.error = error
        self.console_tail = tail
        if state in ("stopped", "failed", "starting"):
            self.ready_at = None
        self.save()


# --- the runtime -------------------------------------------------------------------------


class AgentRuntime:
    """Owns every VM on this host. All public methods are safe to call concurrently."""

    def __init__(
        self,
        settings: Settings,
        driver: VmmDriver | None = None,
        readiness: ReadinessProbe | None = None,
    ) -> None:
        self.settings = settings
        self.driver = driver or select_driver(settings)
        # one shared guest-agent connection per VM (guest.sock accepts one client)
        self.guests = GuestConnections(
            lambda i: self.vms[i].state if i in self.vms else None,
            channel=self.driver.capabilities.guest_channel,
        )
        self.readiness = readiness or self.guests.readiness
        self.vms_dir = Path(settings.state_dir) / "vms"
        self.vms: dict[str, ManagedVm] = {}
        self._started = False
        self.netwire = NetWire(settings)  # NICs, port forwards, volume disks
        self.images = ImageCache(settings)  # source_dir, or files fetched from the manager

    # --- lifecycle of the runtime itself ----------------------------------------------

    async def startup(self) -> None:
        """Create the state dir and re-adopt VMMs that survived an agent restart."""
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.vms_dir, 0o700)
        for d in sorted(self.vms_dir.iterdir()):
            if not (d / "spec.json").is_file():
                continue
            try:
                spec = VmSpec.model_validate_json((d / "spec.json").read_text())
            except ValueError:
                log.warning("ignoring VM dir with an unreadable spec: %s", d)
                continue
            vm = ManagedVm(d, spec)
            saved = vm.load_state()
            self.vms[spec.id] = vm
            handle = await self.driver.adopt(d)
            if handle is not None:
                vm.handle = handle
                vm.state = "paused" if await self.driver.status(handle) == "paused" else "running"
                ready = saved.get("ready_at")
                vm.ready_at = datetime.fromisoformat(ready) if ready else None
                vm.save()
                self._watch(vm, readiness=vm.ready_at is None)
                log.info("re-adopted VM %s (pid %s)", spec.id, handle.pid)
            else:
                prev = saved.get("state", "stopped")
                if prev == "failed":
                    vm.set("failed", saved.get("error"), saved.get("console_tail"))
                elif prev in ("running", "paused", "starting", "stopping"):
                    self._mark_dead(vm, "VMM exited while the agent was not running")
                else:
                    vm.set("stopped")
                self.driver.cleanup(d)
        self._started = True

    async def shutdown(self) -> None:
        """Stop watching VMs. VMM processes keep running (they are re-adopted later)."""
        for vm in self.vms.values():
            for task in (vm.monitor, vm.readiness):
                if task is not None:
                    task.cancel()
        for vm in self.vms.values():
            for task in (vm.monitor, vm.readiness):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            vm.monitor = vm.readiness = None
        await self.guests.close_all()

    # --- queries ----------------------------------------------------------------------

    def get(self, vm_id: str) -> ManagedVm:
        """The managed VM, or :class:`VmNotFound`."""
        vm = self.vms.get(vm_id)
        if vm is None:
            raise VmNotFound(f"no VM {vm_id!r} on this host")
        return vm

    def status(self, vm_id: str) -> VmStatus:
        """One VM's status."""
        return self._with_guest(self.get(vm_id).status())

    def list(self) -> list[VmStatus]:
        """All VMs' status, sorted by id."""
        return [self._with_guest(self.vms[k].status()) for k in sorted(self.vms)]

    def _with_guest(self, st: VmStatus) -> VmStatus:
        """Add why the guest channel was dropped (flood, protocol violation), if it was."""
        st.guest_channel_error = self.guests.violation(st.id)
        return st

    def console(self, vm_id: str, tail: int = 100) -> str:
        """Last ``tail`` lines of the serial console."""
        return console_tail(self.get(vm_id).dir, tail)

    def facts(self) -> HostFacts:
        """Host capacity and driver facts, plus live load, memory, disk, uptime and the
        resident memory of this host's running VMM processes (:mod:`nexus.agent.hostfacts`)."""
        pids = [
            vm.handle.pid
            for vm in list(self.vms.values())
            if vm.handle is not None and vm.state not in ("stopped", "failed")
        ]
        return hostfacts.collect(
            self.settings,
            self.driver.capabilities,
            vm_count=len(self.vms),
            vmm_pids=pids,
            state_dir=self.vms_dir,
            subnets=self.netwire.host_subnets(),
        )

    # --- commands ---------------------------------------------------------------------

    async def put_vm(self, spec: VmSpec) -> VmStatus:
        """Create or update a VM: state dir, spec.json and (once) its private root disk."""
        vm = self.vms.get(spec.id)
        vm_dir = self.vms_dir / spec.id
        if vm is None:
            vm = ManagedVm(vm_dir, spec)
            self.vms[spec.id] = vm
        async with vm.lock:
            try:  # the image's files on this host (fetched into the cache if need be)
                image_dir = await self.images.ensure(spec.image, self._kernel_name())
            except ImageMissing as exc:
                raise VmInvalid(str(exc)) from exc
            except ImageFetchError as exc:
                raise ImageUnavailable(str(exc)) from exc
            try:  # read-only data disks (container images): rootfs.ext4 only
                for ref in spec.image_disks:
                    await self.images.ensure(ref, "")
            except ImageMissing as exc:
                raise VmInvalid(str(exc)) from exc
            except ImageFetchError as exc:
                raise ImageUnavailable(str(exc)) from exc
            vm_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(vm_dir, 0o700)
            vm.spec = spec
            write_json_atomic(vm_dir / "spec.json", spec.model_dump(mode="json"), mode=0o600)
            if not (vm_dir / ROOT_DISK).exists():
                src = self._image_file(spec, "rootfs.ext4", image_dir)
                self._check_manifest(spec, image_dir)
                try:
                    result = await asyncio.to_thread(
                        new_root_disk,
                        src,
                        vm_dir / ROOT_DISK,
                        size_mib=spec.disk_size_mib,
                        qcow2=self.driver.capabilities.qcow2,
                    )
                except DiskError as exc:
                    raise VmInvalid(str(exc)) from exc
                log.info("VM %s root disk made by %s", spec.id, result.method)
            if not (vm_dir / "state.json").exists():
                vm.set("stopped")
        return vm.status()

    async def start_vm(self, vm_id: str) -> VmStatus:
        """Start the VMM (idempotent). Returns once the VMM runs; failures -> ``failed``."""
        vm = self.get(vm_id)
        async with vm.lock:
            if vm.state in ("running", "paused", "starting"):
                return vm.status()
            if vm.state == "stopping":
                raise VmConflict(f"VM {vm_id} is stopping")
            vm.set("starting")
            try:
                owner = self.driver.vmm_owner(vm.dir)  # taps belong to the VMM's own uid
                await self.netwire.prepare(vm_id, vm.spec.nics, owner)
                machine = self._machine_spec(vm)
                vm.handle = await self.driver.start(machine, vm.dir)
            except (VmmError, VmInvalid, DiskError, OSError) as exc:
                tail = console_tail(vm.dir, 40)
                msg = str(exc)
                if tail and tail not in msg:
                    msg += f"\n--- console tail ---\n{tail}"
                vm.set("failed", msg, tail)
                await self.netwire.release(vm_id, vm.spec.nics)
                return vm.status()
            vm.set("running")
            self._watch(vm, readiness=True)
        return vm.status()

    async def stop_vm(
        self, vm_id: str, *, force: bool = False, timeout: float | None = None
    ) -> VmStatus:
        """Graceful (ACPI) stop with fallback to kill; ``force`` kills at once. Idempotent."""
        vm = self.get(vm_id)
        async with vm.lock:
            await self._stop_locked(vm, force=force, timeout=timeout)
        return vm.status()

    async def _stop_locked(self, vm: ManagedVm, *, force: bool, timeout: float | None) -> None:
        if vm.state in ("stopped", "failed") and (
            vm.handle is None or not self.driver.is_alive(vm.handle)
        ):
            return
        self._unwatch(vm)
        vm.set("stopping")
        if vm.handle is not None:
            await self.driver.stop(
                vm.handle, graceful=not force, timeout=timeout or self.settings.stop_timeout_s
            )
        self.driver.cleanup(vm.dir)
        await self.netwire.release(vm.spec.id, vm.spec.nics)
        vm.handle = None
        vm.set("stopped")

    async def reboot_vm(self, vm_id: str) -> VmStatus:
        """Reboot: in place if the driver can, else graceful stop + start."""
        vm = self.get(vm_id)
        if vm.state not in ("running", "paused"):
            raise VmConflict(f"VM {vm_id} is {vm.state}, not running")
        if self.driver.capabilities.reboot and vm.handle is not None:
            async with vm.lock:
                await self.driver.reboot(vm.handle)
                vm.ready_at = None
                vm.save()
            return vm.status()
        await self.stop_vm(vm_id)
        return await self.start_vm(vm_id)

    async def pause_vm(self, vm_id: str) -> VmStatus:
        """Freeze the vCPUs (idempotent on a paused VM)."""
        vm = self.get(vm_id)
        async with vm.lock:
            if vm.state == "paused":
                return vm.status()
            if vm.state != "running" or vm.handle is None:
                raise VmConflict(f"VM {vm_id} is {vm.state}, not running")
            try:
                await self.driver.pause(vm.handle)
            except UnsupportedOperation as exc:
                raise VmConflict(str(exc)) from exc
            vm.set("paused")
        return vm.status()

    async def resume_vm(self, vm_id: str) -> VmStatus:
        """Unfreeze a paused VM (idempotent on a running VM)."""
        vm = self.get(vm_id)
        async with vm.lock:
            if vm.state == "running":
                return vm.status()
            if vm.state != "paused" or vm.handle is None:
                raise VmConflict(f"VM {vm_id} is {vm.state}, not paused")
            await self.driver.resume(vm.handle)
            ready = vm.ready_at
            vm.set("running")
            vm.ready_at = ready
            vm.save()
        return vm.status()

    async def delete_vm(self, vm_id: str) -> None:
        """Kill the VMM and remove everything of the VM (disk, sockets, state dir)."""
        vm = self.vms.get(vm_id)
        vm_dir = self.vms_dir / vm_id
        if vm is None:
            if vm_dir.exists():
                handle = VmmHandle.load(vm_dir)
                if handle is not None:
                    await self.driver.kill(handle)
                self.driver.cleanup(vm_dir)  # sockets, and the VMM's cgroup
                with contextlib.suppress(OSError, ValueError):
                    old = VmSpec.model_validate_json((vm_dir / "spec.json").read_text())
                    await self.netwire.forget(vm_id, old.nics)
                shutil.rmtree(vm_dir, ignore_errors=True)
                return
            raise VmNotFound(f"no VM {vm_id!r} on this host")
        async with vm.lock:
            self._unwatch(vm)
            if vm.handle is not None:
                await self.driver.kill(vm.handle)
            self.driver.cleanup(vm.dir)
            await self.netwire.forget(vm_id, vm.spec.nics)
            await asyncio.to_thread(shutil.rmtree, vm.dir, True)
            self.vms.pop(vm_id, None)

    # --- internals --------------------------------------------------------------------

    def _kernel_name(self) -> str:
        return "vmlinux" if self.driver.capabilities.kernel_format == "vmlinux" else "vmlinuz"

    def _image_dir(self, spec: VmSpec) -> Path:
        """The image's local directory (source_dir or the cache; see storage.imagecache)."""
        try:
            return self.images.local_dir(spec.image, self._kernel_name())
        except ImageFetchError as exc:
            raise VmInvalid(str(exc)) from exc

    def _image_file(self, spec: VmSpec, name: str, image_dir: Path | None = None) -> Path:
        path = (image_dir or self._image_dir(spec)) / name
        if not path.is_file():
            raise VmInvalid(f"image {spec.image.id}: {path} does not exist")
        return path

    def _check_manifest(self, spec: VmSpec, image_dir: Path) -> None:
        manifest = image_dir / "manifest.json"
        if not manifest.exists():
            return
        try:
            data = json.loads(manifest.read_text())
        except ValueError:
            return
        for key in ("rootfs_sha256", "kernel_sha256"):
            want = getattr(spec.image, key)
            if data.get(key) and want and data[key] != want:
                raise VmInvalid(
                    f"image {spec.image.id}: {key} mismatch (spec {want[:12]}, "
                    f"files {str(data[key])[:12]})"
                )

    def _machine_spec(self, vm: ManagedVm) -> MachineSpec:
        spec = vm.spec
        image_dir = self._image_dir(spec)
        kernel = self._image_file(spec, self._kernel_name(), image_dir)
        initrd = image_dir / "initrd.img"
        nics = tuple(
            NicSpec(n.id or f"eth{i}", n.tap, n.mac or "") for i, n in enumerate(spec.nics) if n.tap
        )
        hostname = guest_hostname(spec)
        paths, readonly = self.netwire.volume_disks(spec.volumes)
        # volumes are raw by contract: the guest writes their every byte, header included
        volumes = tuple(DiskSpec(p, "raw", readonly=p in readonly) for p in paths)
        for ref in spec.image_disks:  # raw by contract, never written
            try:
                disk = self.images.local_dir(ref, "") / "rootfs.ext4"
            except ImageFetchError as exc:
                raise VmInvalid(str(exc)) from exc
            volumes += (DiskSpec(disk, "raw", readonly=True),)
        root = vm.dir / ROOT_DISK
        args = f"nexus.hostname={hostname} {spec.kernel_args}".strip()
        return MachineSpec(
            vm_id=spec.id,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            kernel=kernel,
            initrd=initrd if initrd.is_file() else None,
            root_disk=read_record(root).spec(root),  # the format recorded at creation
            kernel_args=args,
            nics=nics,
            extra_disks=volumes,
        )

    def _mark_dead(self, vm: ManagedVm, reason: str) -> None:
        tail = console_tail(vm.dir, 40)
        panicked = any(m in tail for m in PANIC_MARKERS)
        powered_off = "reboot: Power down" in tail or "NEXUS-GUEST-POWEROFF" in tail
        if panicked or (vm.ready_at is None and not powered_off):
            vm.set("failed", f"{reason}\n--- console tail ---\n{tail}", tail)
        else:
            vm.set("stopped")
        vm.handle = None

    def _watch(self, vm: ManagedVm, *, readiness: bool) -> None:
        self._unwatch(vm)
        vm.monitor = asyncio.create_task(self._monitor(vm), name=f"monitor-{vm.spec.id}")
        self.guests.attach(vm.spec.id, vm.dir)
        if readiness:
            vm.readiness = asyncio.create_task(self._await_ready(vm), name=f"ready-{vm.spec.id}")

    def _unwatch(self, vm: ManagedVm) -> None:
        current = asyncio.current_task()
        for task in (vm.monitor, vm.readiness):
            if task is not None and task is not current:
                task.cancel()
        vm.monitor = vm.readiness = None

    async def _monitor(self, vm: ManagedVm) -> None:
        """Notice a VMM that exits by itself (guest poweroff, crash) and bound its log."""
        cap = self.settings.console_log_max_bytes
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            handle = vm.handle
            if handle is None:
                return
            with contextlib.suppress(OSError):
                cap_console(vm.dir, cap)
            if self.driver.is_alive(handle):
                continue
            if vm.lock.locked():  # a command (stop/delete) is handling it
                continue
            async with vm.lock:
                if vm.handle is handle and vm.state in ("running", "paused", "starting"):
                    if vm.readiness is not None:
                        vm.readiness.cancel()
                        vm.readiness = None
                    self._mark_dead(vm, "VMM exited unexpectedly")
                    self.driver.cleanup(vm.dir)
                    await self.netwire.release(vm.spec.id, vm.spec.nics)
                    vm.monitor = None
                    return

    async def _await_ready(self, vm: ManagedVm) -> None:
        handle = vm.handle
        ok = await self.readiness(vm.dir, self.settings.guest_ready_timeout_s)
        if ok and vm.handle is handle and vm.state in ("running", "paused"):
            vm.ready_at = datetime.now(UTC)
            vm.save()


async def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()
