"""VMM drivers and their selection.

:func:`select_driver` picks the driver for this host: ``firecracker`` when its binary is on
``PATH``, else ``qemu``; ``settings.vmm_driver`` (``auto|qemu|firecracker``) overrides.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from nexus.agent.vmm.base import (
    DriverCapabilities,
    MachineSpec,
    NicSpec,
    UnsupportedOperation,
    VmmDriver,
    VmmError,
    VmmHandle,
)

if TYPE_CHECKING:
    from nexus.core.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "DriverCapabilities",
    "MachineSpec",
    "NicSpec",
    "UnsupportedOperation",
    "VmmDriver",
    "VmmError",
    "VmmHandle",
    "select_driver",
]


def select_driver(settings: Settings) -> VmmDriver:
    """The VMM driver for this host according to ``settings`` (see module docstring).

    Raises :class:`VmmError` when the requested (or any) VMM binary is missing.
    """
    choice = settings.vmm_driver
    fc_bin = getattr(settings, "firecracker_bin", "firecracker") or "firecracker"
    qemu_bin = getattr(settings, "qemu_bin", "qemu-system-x86_64") or "qemu-system-x86_64"
    if choice == "auto":
        choice = "firecracker" if shutil.which(fc_bin) else "qemu"
    if choice == "firecracker":
        from nexus.agent.vmm.firecracker import DEFAULT_JAILER_ID, FirecrackerDriver

        if not shutil.which(fc_bin):
            raise VmmError(f"vmm_driver=firecracker but {fc_bin!r} is not on PATH")
        from nexus.agent.vmm.sandbox import detect_cgroups, parse_uid_range

        jailer = getattr(settings, "jailer_bin", "") or None
        sandboxed = getattr(settings, "vmm_sandbox", True)
        parent = getattr(settings, "vmm_cgroup_parent", "nexus")
        layout = detect_cgroups(parent=parent)
        return FirecrackerDriver(
            fc_bin,
            jailer=jailer,
            jailer_uid=getattr(settings, "jailer_uid", DEFAULT_JAILER_ID),
            jailer_gid=getattr(settings, "jailer_gid", DEFAULT_JAILER_ID),
            uid_range=parse_uid_range(settings.vmm_uid_range) if sandboxed else None,
            cgroup_version=layout.version if layout else 2,
            cgroup_parent=parent,
            memory_overhead_mib=getattr(settings, "vmm_memory_overhead_mib", 192),
            pids_max=getattr(settings, "vmm_pids_max", 256),
        )
    from nexus.agent.vmm.qemu import QemuDriver, QemuSandbox

    if not shutil.which(qemu_bin):
        raise VmmError(f"{qemu_bin!r} is not on PATH (Debian package qemu-system-x86)")
    sandbox = QemuSandbox.from_settings(settings)
    if sandbox is not None and os.geteuid() != 0:
        log.warning("vmm_sandbox needs a root agent: QEMU runs as the agent's own user")
        sandbox = None
    return QemuDriver(qemu_bin, accel=settings.accel, sandbox=sandbox)
