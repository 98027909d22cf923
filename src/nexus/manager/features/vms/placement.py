"""Where a VM runs: the one place that picks a host (quotas and placement policies plug in
here)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Conflict
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.vms import ceilings
from nexus.manager.platform.appstate import ManagerState

__all__ = ["place"]


async def place(
    s: AsyncSession,
    state: ManagerState,
    vcpus: int,
    memory_mib: int,
    disk_mib: int | None = None,
) -> Host:
    """Pick the healthy, undrained host with the most free memory that fits the VM; with
    ``disk_mib``, the host must also have that much free disk beyond its reserve (507 when
    memory and vCPUs would fit somewhere but the disk fits nowhere)."""
    alloc = await hosts.allocations(s)
    best: tuple[int, Host] | None = None
    short_of_disk: list[Host] = []
    for host in (await s.execute(select(Host).order_by(Host.name))).scalars().all():
        if host.drained or not hosts.is_healthy(host, state.settings.host_heartbeat_timeout_s):
            continue
        _, used_cpu, used_mem = alloc.get(host.id, (0, 0, 0))
        free_mem = host.memory_mib - used_mem
        if free_mem < memory_mib or used_cpu + vcpus > host.vcpus * hosts.VCPU_OVERCOMMIT:
            continue
        if disk_mib is not None and disk_mib > ceilings.disk_room_mib(state.settings, host):
            short_of_disk.append(host)
            continue
        if best is None or free_mem > best[0]:
            best = (free_mem, host)
    if best is None and short_of_disk and disk_mib is not None:
        roomiest = max(short_of_disk, key=lambda h: h.disk_free_mib)
        ceilings.ensure_disk_room(state.settings, roomiest, disk_mib, "the VM's root disk")
    if best is None:
        raise Conflict(
            f"no healthy host has room for {vcpus} vCPU / {memory_mib} MiB (see GET /v1/hosts)"
        )
    return best[1]
