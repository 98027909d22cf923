"""AgentRuntime.facts(): capacity plus the live fields sent with every heartbeat."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.agent import hostfacts
from nexus.agent.hostfacts import proc_rss
from nexus.agent.runtime import AgentRuntime
from nexus.hostapi.models import HostFacts

from .conftest import make_spec

MIB = 1024 * 1024


async def test_facts_fill_live_fields(runtime: AgentRuntime, image_dir: Path) -> None:
    idle = runtime.facts()
    assert idle.load_avg is not None and len(idle.load_avg) == 3
    assert all(x >= 0 for x in idle.load_avg)
    assert idle.mem_available_mib is not None and 0 < idle.mem_available_mib <= idle.memory_mib
    assert idle.disk_total_mib is not None and idle.disk_total_mib >= idle.disk_free_mib > 0
    assert idle.uptime_s is not None and idle.uptime_s > 0
    assert idle.vmm_rss_mib == 0  # no VMM runs

    await runtime.put_vm(make_spec(image_dir, "vm-a"))
    await runtime.put_vm(make_spec(image_dir, "vm-b"))
    await runtime.start_vm("vm-a")
    await runtime.start_vm("vm-b")
    pids = [runtime.vms[v].handle.pid for v in ("vm-a", "vm-b")]  # type: ignore[union-attr]

    def total(ps: list[int]) -> int:
        sizes = [proc_rss(pid) for pid in ps]
        assert all(r is not None and r > 0 for r in sizes)
        return sum(r or 0 for r in sizes) // MIB

    # a VMM that just started may still be growing: the facts lie between two readings
    low, busy, high = total(pids), runtime.facts(), total(pids)
    assert busy.vmm_rss_mib is not None and min(low, high) - 1 <= busy.vmm_rss_mib
    assert busy.vmm_rss_mib <= max(low, high) + 1
    assert busy.vm_count == 2

    await runtime.stop_vm("vm-b", force=True)
    low, after, high = total(pids[:1]), runtime.facts(), total(pids[:1])
    assert after.vmm_rss_mib is not None and min(low, high) - 1 <= after.vmm_rss_mib
    assert after.vmm_rss_mib <= max(low, high) + 1


async def test_vmm_rss_sums_running_vmms_only(
    runtime: AgentRuntime, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact sum with a fixed RSS per process (the real sleep VMMs are ~1 MiB each)."""
    seen: list[int] = []

    def fake_rss(pid: int) -> int:
        seen.append(pid)
        return 300 * MIB

    monkeypatch.setattr(hostfacts, "proc_rss", fake_rss)
    for vm_id in ("vm-a", "vm-b", "vm-c"):
        await runtime.put_vm(make_spec(image_dir, vm_id))
    await runtime.start_vm("vm-a")
    await runtime.start_vm("vm-b")  # vm-c stays stopped: not counted
    assert runtime.facts().vmm_rss_mib == 600
    await runtime.stop_vm("vm-a", force=True)
    seen.clear()
    assert runtime.facts().vmm_rss_mib == 300
    assert seen == [runtime.vms["vm-b"].handle.pid]  # type: ignore[union-attr]


def test_facts_of_older_agents_still_validate() -> None:
    old = {
        "hostname": "h",
        "driver": "qemu",
        "accel": "tcg",
        "vcpus": 2,
        "memory_mib": 2048,
        "disk_free_mib": 100,
        "version": "0.0.1",
    }
    facts = HostFacts.model_validate(old)
    assert facts.load_avg is None and facts.vmm_rss_mib is None and facts.uptime_s is None
