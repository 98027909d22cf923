"""Fixtures for fast agent tests: a fake VMM driver that runs a real detached process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from nexus.agent.runtime import AgentRuntime
from nexus.agent.vmm.base import (
    CONSOLE_LOG,
    DriverCapabilities,
    MachineSpec,
    VmmDriver,
    VmmHandle,
    rotate_console,
    spawn_detached,
    wait_exit,
)
from nexus.core.settings import Settings
from nexus.hostapi.models import ImageRef, VmSpec


class SleepDriver(VmmDriver):
    """A 'VMM' that is a detached shell printing the ready marker; SIGSTOP/SIGCONT pause."""

    name = "sleep"

    def __init__(self, script: str | None = None) -> None:
        self.script = script or "echo NEXUS-GUEST-BOOTED; echo NEXUS-GUEST-READY; exec sleep 600"
        self.started: list[MachineSpec] = []

    @property
    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities(name=self.name, accel="tcg", accel_warning="fake")

    async def start(self, spec: MachineSpec, vm_dir: Path) -> VmmHandle:
        existing = VmmHandle.load(vm_dir)
        if existing and self.is_alive(existing):
            return existing
        rotate_console(vm_dir)
        self.started.append(spec)
        pid, st = spawn_detached(["sh", "-c", self.script], vm_dir, log_name=CONSOLE_LOG)
        h = VmmHandle(spec.vm_id, self.name, pid, st, vm_dir, ["sh"])
        h.save()
        return h

    async def stop(self, handle: VmmHandle, *, graceful: bool = True, timeout: float = 20) -> None:
        if not self.is_alive(handle):
            return
        if graceful:
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGCONT)
                os.kill(handle.pid, signal.SIGTERM)
            if await wait_exit(handle, timeout):
                return
        await self.kill(handle)

    async def pause(self, handle: VmmHandle) -> None:
        os.kill(handle.pid, signal.SIGSTOP)
        # SIGSTOP lands asynchronously: return once the process is stopped, like QMP `stop`
        for _ in range(200):
            if await self.status(handle) != "running":
                return
            await asyncio.sleep(0.01)

    async def resume(self, handle: VmmHandle) -> None:
        os.kill(handle.pid, signal.SIGCONT)

    async def status(self, handle: VmmHandle) -> Literal["running", "paused", "stopped"]:
        if not self.is_alive(handle):
            return "stopped"
        state = Path(f"/proc/{handle.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return "paused" if state == "T" else "running"


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A fake image directory (files are placeholders; the fake driver ignores them)."""
    d = tmp_path / "image"
    d.mkdir()
    (d / "vmlinuz").write_bytes(b"kernel")
    (d / "initrd.img").write_bytes(b"initrd")
    with open(d / "rootfs.ext4", "wb") as fh:
        fh.write(b"root" * 1024)
        fh.truncate(8 * 1024 * 1024)
    return d


def make_spec(image_dir: Path, vm_id: str = "vm-1", **kw: object) -> VmSpec:
    """A VmSpec for ``image_dir``."""
    image = ImageRef(
        id="img-1", kernel_sha256="k" * 64, rootfs_sha256="r" * 64, source_dir=str(image_dir)
    )
    return VmSpec(id=vm_id, name=vm_id, image=image, **kw)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings rooted in tmp_path."""
    return Settings(
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        stop_timeout_s=5,
        guest_ready_timeout_s=5,
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[AgentRuntime]:
    """A started runtime on the fake driver; every VM is deleted afterwards."""
    rt = AgentRuntime(settings, driver=SleepDriver())
    await rt.startup()
    yield rt
    for vm_id in list(rt.vms):
        await rt.delete_vm(vm_id)
    await rt.shutdown()
