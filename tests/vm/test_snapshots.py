"""Real guests: snapshots, restores (in place and as a new VM), clones and templates.

Guests boot under QEMU TCG (2-4 s each), so every test boots as few as it can. Timings
(snapshot, restore-to-responsive, cold boot) are printed and written to
``.nexus/snapshot-timings.json``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.agent.app import create_app
from nexus.agent.client import AgentClient, AgentError
from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.agent.storage.imagebuild import BuiltImage

from .conftest import spec_for

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
COUNT = re.compile(rb"NEXUS-COUNT (\d+)")


def last_count(vm_dir: Path) -> int:
    """The last counter value the guest printed on its console (0 if none)."""
    data = (vm_dir / "console.log").read_bytes() if (vm_dir / "console.log").exists() else b""
    found = COUNT.findall(data)
    return int(found[-1]) if found else 0


def first_count(vm_dir: Path) -> int:
    """The first counter value on the console since the VMM (re)started (0 if none)."""
    data = (vm_dir / "console.log").read_bytes() if (vm_dir / "console.log").exists() else b""
    found = COUNT.findall(data)
    return int(found[0]) if found else 0


def record_timings(**values: Any) -> None:
    """Merge ``values`` into .nexus/snapshot-timings.json and print them."""
    path = ROOT / ".nexus" / "snapshot-timings.json"
    path.parent.mkdir(exist_ok=True)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print("\nTIMINGS", json.dumps(values))


async def test_agent_snapshot_restore_counter_continues(
    runtime: AgentRuntime, test_image: BuiltImage
) -> None:
    """Agent level: full snapshot -> counter keeps going -> restore in place continues from the
    saved value (not zero, no new boot); a corrupt snapshot is refused with the VM untouched;
    restore-as-new runs alongside the source."""
    app = create_app(runtime, "tok")
    agent = AgentClient("http://agent", "tok", transport=httpx.ASGITransport(app=app))
    await agent.put_vm(spec_for(test_image, "vm-src", kernel_args="nexus.counter=1"))
    vm_dir = runtime.vms_dir / "vm-src"
    t0 = time.monotonic()
    await agent.start_vm("vm-src")
    assert await wait_for(lambda: runtime.status("vm-src").guest_ready, 60)
    cold_boot_s = time.monotonic() - t0
    assert await wait_for(lambda: last_count(vm_dir) >= 3, 20)

    info = await agent.snapshot_vm("vm-src", "snap-1")
    assert info.kind == "full" and {"memory", "disk.ext4"} <= set(info.files)
    saved = last_count(vm_dir)
    manifest = json.loads((runtime.settings.state_dir / "snapshots/snap-1/manifest.json").read_text())
    assert manifest["files"]["memory"]["sha256"]
    # the source keeps running after the snapshot
    assert await wait_for(lambda: last_count(vm_dir) >= saved + 4, 20)
    assert runtime.status("vm-src").state == "running"

    # a corrupt copy is refused before anything happens to the VM
    import shutil

    snaps = runtime.settings.state_dir / "snapshots"
    shutil.copytree(snaps / "snap-1", snaps / "snap-bad")
    (snaps / "snap-bad" / "manifest.json").write_text(
        (snaps / "snap-bad" / "manifest.json").read_text().replace('"snap-1"', '"snap-bad"')
    )
    with open(snaps / "snap-bad" / "memory", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"garbage!")
    pid = runtime.status("vm-src").pid
    with pytest.raises(AgentError) as exc:
        await agent.restore_vm("vm-src", "snap-bad")
    assert exc.value.status == 422 and "checksum mismatch in memory" in exc.value.detail
    st = runtime.status("vm-src")
    assert st.state == "running" and st.pid == pid

    # restore in place: the counter continues from the saved value, no new boot
    before = last_count(vm_dir)
    assert before > saved + 2
    res = await agent.restore_vm("vm-src", "snap-1")
    assert res.status.state == "running" and res.status.guest_ready
    assert await wait_for(lambda: last_count(vm_dir) > 0, 15)
    first = first_count(vm_dir)
    restore_s = res.restore_ms / 1000
    assert saved <= first <= saved + 3, (saved, first, before)
    assert "NEXUS-GUEST-BOOTED" not in (vm_dir / "console.log").read_text(errors="replace")

    # restore as a new VM: runs alongside the source
    new_spec = spec_for(test_image, "vm-new", kernel_args="nexus.counter=1")
    res2 = await agent.restore_as_new("snap-1", new_spec)
    assert res2.status.state == "running"
    new_dir = runtime.vms_dir / "vm-new"
    assert await wait_for(lambda: last_count(new_dir) > 0, 15)
    assert saved <= first_count(new_dir) <= saved + 3
    assert await wait_for(lambda: last_count(vm_dir) >= first + 2, 15)
    assert runtime.status("vm-src").state == "running"
    assert res2.reseed is not None  # the hook ran (the busybox image has no guest agent)
    record_timings(
        agent_snapshot_ms=info.snapshot_ms,
        agent_snapshot_downtime_ms=info.downtime_ms,
        agent_restore_ms=res.restore_ms,
        agent_restore_as_new_ms=res2.restore_ms,
        agent_cold_boot_to_ready_ms=int(cold_boot_s * 1000),
        snapshot_size_bytes=info.size_bytes,
    )
    assert restore_s < cold_boot_s * 3

    await agent.delete_snapshot("snap-bad")
    await agent.delete_snapshot("snap-1")
    with pytest.raises(AgentError) as exc:
        await agent.restore_vm("vm-src", "snap-1")
    assert exc.value.status == 404
    await agent.aclose()
