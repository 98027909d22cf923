"""Admin-set ceilings: how big one VM, root disk, volume or exec may be, how many execs one
user may run at once, and how much free disk a host keeps.

Why: every tenant is hostile (docs/security.md). Without ceilings one request could ask for a
256 GiB / 32 vCPU VM, fifty 1 TiB sparse volumes, or an exec that streams 64 MiB twice for a
day, and share the host with everyone else on those terms. The schemas keep absolute bounds;
these checks apply the operator's settings (``max_vm_*``, ``max_volume_mib``,
``max_exec_*``, ``disk_reserve_mib``) and say in the problem's ``detail`` which limit was
hit, so a client can fix its request. Sizes over a ceiling are 422, too many concurrent
execs 429, and a host without the free disk 507.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nexus.core.errors import PROBLEM_CONTENT_TYPE, Problem, RateLimited, ValidationFailed
from nexus.core.settings import Settings
from nexus.manager.features.hosts.models import Host
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal

EXEC_SLOTS = "exec_slots"


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI ``responses=`` entry for a problem+json error."""
    return {"description": description, "content": {PROBLEM_CONTENT_TYPE: {}}}


class InsufficientStorage(Problem):
    """No host (or not the volume's host) has the free disk the request needs."""

    status, slug, title = 507, "insufficient-storage", "Insufficient storage"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _over(what: str, asked: float, limit: float, unit: str, setting: str) -> ValidationFailed:
    detail = (
        f"{what} {_num(asked)} {unit} is over this installation's limit of {_num(limit)} {unit} "
        f"(setting {setting}; ask an administrator)"
    )
    # ``errors`` in the same shape as request-validation 422s, so clients handle both alike
    error = {"loc": ["body", what], "msg": detail, "type": "ceiling"}
    return ValidationFailed(detail, extra={"limit": limit, "setting": setting, "errors": [error]})


def check_vm_size(
    settings: Settings,
    *,
    vcpus: int | None = None,
    memory_mib: int | None = None,
    disk_mib: int | None = None,
) -> None:
    """Refuse (422) a VM over the vCPU, memory or root-disk ceiling."""
    if vcpus is not None and vcpus > settings.max_vm_vcpus:
        raise _over("vcpus", vcpus, settings.max_vm_vcpus, "vCPUs", "max_vm_vcpus")
    if memory_mib is not None and memory_mib > settings.max_vm_memory_mib:
        raise _over(
            "memory_mib", memory_mib, settings.max_vm_memory_mib, "MiB", "max_vm_memory_mib"
        )
    if disk_mib is not None and disk_mib > settings.max_vm_disk_mib:
        raise _over("disk_size_mib", disk_mib, settings.max_vm_disk_mib, "MiB", "max_vm_disk_mib")


def check_volume_size(settings: Settings, size_mib: int) -> None:
    """Refuse (422) a volume over the size ceiling."""
    if size_mib > settings.max_volume_mib:
        raise _over("size_mib", size_mib, settings.max_volume_mib, "MiB", "max_volume_mib")


def check_exec(settings: Settings, *, timeout_s: float, max_output_bytes: int) -> None:
    """Refuse (422) an exec whose timeout or output cap is over the ceiling."""
    if timeout_s > settings.max_exec_timeout_s:
        raise _over("timeout_s", timeout_s, settings.max_exec_timeout_s, "s", "max_exec_timeout_s")
    if max_output_bytes > settings.max_exec_output_bytes:
        raise _over(
            "max_output_bytes",
            max_output_bytes,
            settings.max_exec_output_bytes,
            "bytes",
            "max_exec_output_bytes",
        )


def disk_room_mib(settings: Settings, host: Host) -> int:
    """Free disk on ``host`` (its last heartbeat) that new disks may use: minus the reserve."""
    return host.disk_free_mib - settings.disk_reserve_mib


def ensure_disk_room(settings: Settings, host: Host, need_mib: int, what: str) -> None:
    """Refuse (507) ``what`` when ``host`` has not ``need_mib`` MiB free beyond its reserve."""
    room = disk_room_mib(settings, host)
    if need_mib > room:
        raise InsufficientStorage(
            f"host {host.name} has {max(room, 0)} MiB of free disk for new disks "
            f"({host.disk_free_mib} MiB free, {settings.disk_reserve_mib} MiB kept in reserve); "
            f"{what} needs {need_mib} MiB",
            extra={"needed_mib": need_mib, "available_mib": max(room, 0)},
        )


@contextmanager
def exec_slot(state: ManagerState, principal: Principal) -> Iterator[None]:
    """Hold one of the caller's concurrent-exec slots for the duration of the block; 429 when
    they already run ``max_concurrent_execs_per_user``. Counted per manager replica (in
    memory): with several replicas a user may run that many on each."""
    slots: dict[str, int] = state.extras.setdefault(EXEC_SLOTS, {})
    key = principal.user_id or "anonymous"
    limit = state.settings.max_concurrent_execs_per_user
    if slots.get(key, 0) >= limit:
        raise RateLimited(
            f"you already have {limit} execs running (setting max_concurrent_execs_per_user); "
            "wait for one to finish",
            headers={"Retry-After": "1"},
            extra={"limit": limit, "setting": "max_concurrent_execs_per_user"},
        )
    slots[key] = slots.get(key, 0) + 1
    try:
        yield
    finally:
        slots[key] -= 1
        if slots[key] <= 0:
            del slots[key]
