"""Firecracker driver: configures and controls Firecracker over its API Unix socket.

.. warning::
   No Firecracker binary exists on the development machine (no hardware KVM there), so this
   driver has **never booted a guest**. It is tested against Firecracker's official API
   contract (``firecracker-api.yaml``, Swagger 2.0): a fake Firecracker validates every
   request's path, method and body against the spec and the exact request sequence.

Start sequence (all ``PUT`` unless noted)::

    firecracker --api-sock <vm_dir>/api.sock --id <vm_id>     (stdout = serial console)
    /machine-config   {vcpu_count, mem_size_mib}
    /boot-source      {kernel_image_path (ELF vmlinux), initrd_path?, boot_args}
    /drives/rootfs    {drive_id, path_on_host, is_root_device: false, is_read_only: false}
    /network-interfaces/{id}  {iface_id, host_dev_name, guest_mac}
    /vsock            {guest_cid: 3, uds_path: <vm_dir>/guest.sock}
    /actions          {action_type: InstanceStart}

Control: ``PATCH /vm {state: Paused|Resumed}``, ``PUT /actions {SendCtrlAltDel}`` for a
graceful stop, ``PUT /snapshot/create`` / ``PUT /snapshot/load``, ``GET /`` for status.
The root disk is attached as a normal drive (``is_root_device: false``) because our
initramfs mounts it itself (``nexus.root=/dev/vda``), exactly as under QEMU.

Jailer: when ``jailer`` is given, the VMM is started as ``jailer --id <vm_id> --exec-file
<firecracker> --uid U --gid G --chroot-base-dir <vm_dir>/jail -- --api-sock api.sock``;
the caller must hard-link kernel, initrd and disk into the chroot. Untested here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import httpx

from nexus.agent.vmm.base import (
    CONSOLE_LOG,
    GUEST_SOCK,
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

API_SOCK = "api.sock"
GUEST_CID = 3
GUEST_VSOCK_PORT = 1024


class FirecrackerDriver(VmmDriver):
    """Drives the ``firecracker`` binary over its REST API (Unix socket)."""

    name = "firecracker"

    def __init__(
        self,
        binary: str = "firecracker",
        jailer: str | None = None,
        jailer_uid: int = 0,
        jailer_gid: int = 0,
    ) -> None:
        self.binary = shutil.which(binary) or binary
        self.jailer = (shutil.which(jailer) or jailer) if jailer else None
        self.jailer_uid = jailer_uid
        self.jailer_gid = jailer_gid
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
        )

    @property
    def capabilities(self) -> DriverCapabilities:
        """See :class:`DriverCapabilities`."""
        return self._caps

    # --- API ---------------------------------------------------------------------------

    def _client(self, vm_dir: Path) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(vm_dir / API_SOCK))
        return httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30.0)

    async def api(
        self, vm_dir: Path, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        """One API call; raises :class:`VmmError` with Firecracker's ``fault_message``."""
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

    # --- lifecycle ---------------------------------------------------------------------

    def build_argv(self, spec: MachineSpec, vm_dir: Path) -> list[str]:
        """The process argv (jailer-wrapped if configured)."""
        if self.jailer:
            return [
                self.jailer, "--id", spec.vm_id, "--exec-file", self.binary,
                "--uid", str(self.jailer_uid), "--gid", str(self.jailer_gid),
                "--chroot-base-dir", str(vm_dir / "jail"),
                "--", "--api-sock", API_SOCK,
            ]  # fmt: skip
        return [self.binary, "--api-sock", str(vm_dir / API_SOCK), "--id", spec.vm_id]

    def boot_args(self, spec: MachineSpec) -> str:
        """Guest kernel command line (serial console, i8042 Ctrl-Alt-Del for stop)."""
        parts = ["console=ttyS0", "reboot=k", "panic=1", "pci=off", "quiet"]
        if spec.root_disk is not None:
            parts.append("nexus.root=/dev/vda")
        if spec.kernel_args:
            parts.append(spec.kernel_args)
        return " ".join(parts)

    async def _spawn(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
        for name in (API_SOCK, GUEST_SOCK):
            with contextlib.suppress(FileNotFoundError):
                (vm_dir / name).unlink()
        rotate_console(vm_dir)
        argv = self.build_argv(spec, vm_dir)
        # Firecracker writes the guest serial console to its stdout.
        pid, start_time = await asyncio.to_thread(
            spawn_detached, argv, vm_dir, log_name=CONSOLE_LOG
        )
        handle = VmmHandle(spec.vm_id, self.name, pid, start_time, vm_dir, argv)
        handle.save()
        deadline = time.monotonic() + 10.0
        while not (vm_dir / API_SOCK).exists():
            if not process_alive(pid, start_time):
                raise VmmError(
                    f"firecracker exited during start of VM {spec.vm_id}:\n"
                    + console_tail(vm_dir, 20)
                )
            if time.monotonic() > deadline:
                await self.kill(handle)
                raise VmmError("firecracker did not create its API socket within 10 s")
            await asyncio.sleep(0.01)
        return handle

    async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
        """Spawn Firecracker, configure the machine through the API, ``InstanceStart``."""
        existing = VmmHandle.load(vm_dir)
        if existing and existing.driver == self.name and self.is_alive(existing):
            return existing
        handle = await self._spawn(spec, vm_dir)
        try:
            machine = {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib}
            await self.api(vm_dir, "PUT", "/machine-config", machine)
            boot: dict[str, Any] = {
                "kernel_image_path": str(spec.kernel),
                "boot_args": self.boot_args(spec),
            }
            if spec.initrd is not None:
                boot["initrd_path"] = str(spec.initrd)
            await self.api(vm_dir, "PUT", "/boot-source", boot)
            disks = ([spec.root_disk] if spec.root_disk else []) + list(spec.extra_disks)
            for i, disk in enumerate(disks):
                drive_id = "rootfs" if i == 0 and spec.root_disk else f"disk{i}"
                await self.api(
                    vm_dir,
                    "PUT",
                    f"/drives/{drive_id}",
                    {
                        "drive_id": drive_id,
                        "path_on_host": str(disk),
                        "is_root_device": False,
                        "is_read_only": disk in spec.readonly_disks,
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
            vsock = {"guest_cid": GUEST_CID, "uds_path": str(vm_dir / GUEST_SOCK)}
            await self.api(vm_dir, "PUT", "/vsock", vsock)
            await self.api(vm_dir, "PUT", "/actions", {"action_type": "InstanceStart"})
        except VmmError:
            await self.kill(handle)
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
        """Pause and ``PUT /snapshot/create`` (Full) into ``dest/{vmstate,memory}``."""
        dest.mkdir(parents=True, exist_ok=True)
        await self.pause(handle)
        await self.api(
            handle.vm_dir,
            "PUT",
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": str(dest / "vmstate"),
                "mem_file_path": str(dest / "memory"),
            },
        )
        meta = {"driver": self.name, "vm_id": handle.vm_id}
        (dest / "snapshot.json").write_text(json.dumps(meta, indent=2))

    async def restore(self, spec: MachineSpec, vm_dir: Path, source: Path) -> VmmHandle:
        """Fresh Firecracker + ``PUT /snapshot/load`` (File backend, resume)."""
        handle = await self._spawn(spec, vm_dir)
        try:
            await self.api(
                vm_dir,
                "PUT",
                "/snapshot/load",
                {
                    "snapshot_path": str(source / "vmstate"),
                    "mem_backend": {"backend_type": "File", "backend_path": str(source / "memory")},
                    "vsock_override": {"uds_path": str(vm_dir / GUEST_SOCK)},
                    "resume_vm": True,
                },
            )
        except VmmError:
            await self.kill(handle)
            raise
        return handle

    def cleanup(self, vm_dir: Path) -> None:
        """Remove the API socket, the vsock UDS and vmm.json."""
        super().cleanup(vm_dir)
        with contextlib.suppress(FileNotFoundError):
            (vm_dir / API_SOCK).unlink()


__all__ = ["API_SOCK", "GUEST_VSOCK_PORT", "FirecrackerDriver", "wait_exit"]
