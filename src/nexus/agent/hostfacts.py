"""What this host offers and how its VMM processes fare: the host facts sent at registration
and with every heartbeat, and the ``/proc`` readings the VM metrics use."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from nexus import __version__
from nexus.agent.vmm.base import DriverCapabilities
from nexus.core.settings import Settings
from nexus.hostapi.models import HostFacts

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """CPU time (user + system, seconds) of process ``pid``, or None when unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:  # fields[0] is field 3 (state): utime = field 14, stime = field 15
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (IndexError, ValueError):
        return None


def proc_rss(pid: int) -> int | None:
    """Resident set size of process ``pid`` in bytes (``VmRSS`` of ``/proc/<pid>/status``),
    or None when it cannot be read (gone, not ours to read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_int(path: Path) -> int | None:
    """The integer in a small text file (sysfs counters), or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def collect(
    settings: Settings,
    caps: DriverCapabilities,
    *,
    vm_count: int,
    vmm_pids: Iterable[int],
    state_dir: Path,
    subnets: list[str] | None,
) -> HostFacts:
    """The host facts: capacity and driver, plus live load, memory, disk (of the file system
    holding ``state_dir``), uptime and the resident memory of ``vmm_pids`` (None where
    unreadable)."""
    mib = 1024 * 1024
    mem_kib = 0
    avail_kib: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
            elif line.startswith("MemAvailable:"):
                avail_kib = int(line.split()[1])
    load: list[float] | None = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    uptime: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    rss = sum(proc_rss(pid) or 0 for pid in vmm_pids)
    st = os.statvfs(state_dir if state_dir.exists() else "/")
    return HostFacts(
        hostname=settings.agent_name or socket.gethostname(),
        driver=caps.name,
        accel=caps.accel,
        accel_warning=caps.accel_warning,
        vcpus=os.cpu_count() or 1,
        memory_mib=mem_kib // 1024,
        disk_free_mib=st.f_bavail * st.f_frsize // mib,
        version=str(__version__),
        vm_count=vm_count,
        load_avg=load,
        mem_available_mib=avail_kib // 1024 if avail_kib is not None else None,
        disk_total_mib=st.f_blocks * st.f_frsize // mib,
        uptime_s=uptime,
        vmm_rss_mib=rss // mib,
        subnets=subnets,
    )
