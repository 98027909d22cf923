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

from nexus.agent.api.app import create_app
from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.hostapi.agent_client import AgentClient, AgentError
from nexus.images.build import BuiltImage

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

    pre = last_count(vm_dir)
    info = await agent.snapshot_vm("vm-src", "snap-1")
    assert info.kind == "full" and {"memory", "disk.img"} <= set(info.files)
    saved = last_count(vm_dir)
    manifest = json.loads(
        (runtime.settings.state_dir / "snapshots/snap-1/manifest.json").read_text()
    )
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
    assert pre <= first <= saved + 2, (pre, saved, first, before)
    assert "NEXUS-GUEST-BOOTED" not in (vm_dir / "console.log").read_text(errors="replace")

    # restore as a new VM: runs alongside the source
    new_spec = spec_for(test_image, "vm-new", kernel_args="nexus.counter=1")
    res2 = await agent.restore_as_new("snap-1", new_spec)
    assert res2.status.state == "running"
    new_dir = runtime.vms_dir / "vm-new"
    assert await wait_for(lambda: last_count(new_dir) > 0, 15)
    assert pre <= first_count(new_dir) <= saved + 2
    assert await wait_for(lambda: last_count(vm_dir) >= first + 2, 15)
    assert runtime.status("vm-src").state == "running"
    # the busybox image has no guest agent: no 3 s wait for one after the restore
    assert res2.reseed is not None and "no guest agent" in res2.reseed.get("skipped", "")
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


# --- the whole stack: manager API -> agent -> QEMU ----------------------------------------


@pytest.fixture
async def stack(tmp_path: Path, test_image: BuiltImage) -> Any:
    """The manager app (in process, real SQLite) + a real agent runtime on QEMU, wired by an
    ASGI agent client. Guests print a counter (``nexus.counter=1`` added to every boot)."""
    import shutil
    import tempfile

    from nexus.agent.api.app import create_app as create_agent_app
    from nexus.agent.vmm.qemu import QemuDriver
    from nexus.core.ids import new_id
    from nexus.core.settings import Settings
    from nexus.core.timeutil import utcnow
    from nexus.manager.app import create_app as create_manager_app
    from nexus.manager.features.hosts.models import Host
    from nexus.manager.features.hosts.service import agent_client_key
    from nexus.manager.features.images.models import Image
    from nexus.manager.features.users.models import User

    from .conftest import CACHE_DIR

    short = Path(tempfile.mkdtemp(prefix="nxs", dir="/tmp"))
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'nexus.db'}",
        state_dir=short / "s",  # unix socket paths must stay under 108 bytes
        cache_dir=CACHE_DIR,
        embedded_agent=False,
        bootstrap_admin_password="admin-pass-123",
        log_level="warning",
        rate_limit_create="1000/minute",
        rate_limit_auth="1000/minute",
        host_heartbeat_timeout_s=3600,
        stop_timeout_s=15,
        guest_ready_timeout_s=60,
    )
    app = create_manager_app(settings)
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    rt = AgentRuntime(settings, driver=QemuDriver())
    await rt.startup()
    orig = rt._machine_spec

    def with_counter(vm: Any) -> Any:
        import dataclasses

        m = orig(vm)
        return dataclasses.replace(m, kernel_args=f"{m.kernel_args} nexus.counter=1")

    rt._machine_spec = with_counter  # type: ignore[method-assign]
    agent = AgentClient(
        "http://agent", "tok", transport=httpx.ASGITransport(app=create_agent_app(rt, "tok"))
    )
    state = app.state.nexus
    from sqlalchemy import select

    m = test_image.manifest
    async with state.db.session() as s:
        admin_id = (await s.execute(select(User.id).where(User.username == "admin"))).scalar_one()
        host = Host(id=new_id("host"), name="h1", agent_url="http://agent", agent_token="tok",
                    host_token_hash="x" * 64, last_heartbeat_at=utcnow(), driver="qemu",
                    accel="tcg", vcpus=8, memory_mib=8192, disk_free_mib=100_000,
                    created_by_user_id=admin_id)  # fmt: skip
        img = Image(id=new_id("img"), name="test", source="build:test", public=True,
                    kernel_sha256=str(m["kernel_sha256"]), initrd_sha256=str(m["initrd_sha256"]),
                    rootfs_sha256=str(m["rootfs_sha256"]), path=str(test_image.dir),
                    rootfs_size_mib=test_image.rootfs.stat().st_size // (1 << 20),
                    created_by_user_id=admin_id)  # fmt: skip
        s.add_all([host, img])
    state.extras.setdefault("agent_clients", {})[agent_client_key(host)] = agent
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://nexus")
    r = await client.post(
        "/v1/auth/login", json={"username": "admin", "password": "admin-pass-123"}
    )
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    try:
        yield client, rt
    finally:
        await client.aclose()
        for vm_id in list(rt.vms):
            await rt.delete_vm(vm_id)
        await rt.shutdown()
        await ctx.__aexit__(None, None, None)
        shutil.rmtree(short, ignore_errors=True)


async def test_api_snapshot_restore_from_snapshot_clone_templates(stack: Any) -> None:
    """Through the API: snapshot a running VM, restore (counter continues), a new VM from the
    snapshot runs alongside, a clone is independent, a template instantiates twice."""
    client, rt = stack
    t0 = time.monotonic()
    r = await client.post(
        "/v1/vms?wait=true", json={"name": "src", "image": "test", "memory_mib": 128}
    )
    cold_boot_ms = int((time.monotonic() - t0) * 1000)
    assert r.status_code == 200, r.text
    src = r.json()
    assert src["state"] == "running"
    src_dir = rt.vms_dir / src["id"]
    assert await wait_for(lambda: last_count(src_dir) >= 3, 20)

    # snapshot (operation with progress and timings)
    pre = last_count(src_dir)  # the snapshot instant lies between pre and saved
    t0 = time.monotonic()
    r = await client.post(f"/v1/vms/{src['id']}/snapshots?wait=true", json={"name": "s1"})
    api_snapshot_ms = int((time.monotonic() - t0) * 1000)
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["state"] == "ready" and snap["kind"] == "full", snap
    assert set(snap["files"]) >= {"memory", "disk.img", "snapshot.json"}
    assert all(len(f["sha256"]) == 64 for f in snap["files"].values())
    saved = last_count(src_dir)
    r = await client.get("/v1/snapshots", params={"vm_id": src["id"]})
    assert [s["id"] for s in r.json()["items"]] == [snap["id"]]
    assert await wait_for(lambda: last_count(src_dir) >= saved + 4, 20)

    # restore in place: counter continues from the snapshot, not from zero
    t0 = time.monotonic()
    r = await client.post(f"/v1/snapshots/{snap['id']}/restore?wait=true")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "running"
    assert await wait_for(lambda: last_count(src_dir) > 0, 15, interval=0.01)
    restore_responsive_ms = int((time.monotonic() - t0) * 1000)
    assert pre <= first_count(src_dir) <= saved + 2, (pre, saved, first_count(src_dir))

    # a new VM from the snapshot runs alongside the source
    r = await client.post(
        "/v1/vms?wait=true", json={"name": "from-snap", "from_snapshot": snap["id"]}
    )
    assert r.status_code == 200, r.text
    twin = r.json()
    assert twin["state"] == "running" and twin["cloned_from_id"] == src["id"]
    twin_dir = rt.vms_dir / twin["id"]
    assert await wait_for(lambda: last_count(twin_dir) > 0, 15)
    assert pre <= first_count(twin_dir) <= saved + 2, (pre, saved, first_count(twin_dir))
    before = last_count(src_dir)
    assert await wait_for(lambda: last_count(src_dir) >= before + 2, 10)  # both run
    assert await wait_for(lambda: last_count(twin_dir) >= first_count(twin_dir) + 2, 10)
    ops = (await client.get("/v1/operations", params={"limit": 20})).json()
    ops = ops["items"] if isinstance(ops, dict) else ops
    made = next(o for o in ops if o["resource_id"] == twin["id"])
    assert made["result"]["identity"]["hostname"] == "from-snap"
    assert made["result"]["identity"]["machine_id"]

    # clone: copy-on-write disk, lineage, independent of its source
    r = await client.post(f"/v1/vms/{src['id']}/clone?wait=true", json={"name": "cl"})
    assert r.status_code == 200, r.text
    clone = r.json()
    assert clone["cloned_from_id"] == src["id"] and clone["state"] == "running"
    clone_disk = rt.vms_dir / clone["id"] / "disk.img"
    src_disk = src_dir / "disk.img"
    assert clone_disk.stat().st_ino != src_disk.stat().st_ino
    ops = (await client.get("/v1/operations", params={"limit": 20})).json()
    ops = ops["items"] if isinstance(ops, dict) else ops
    cop = next(o for o in ops if o["resource_id"] == clone["id"])
    assert cop["result"]["disk_method"] in ("reflink", "sparse-copy")
    # a change to the clone's disk does not appear in the source's
    with open(src_disk, "rb") as fh:
        fh.seek(src_disk.stat().st_size - 4096)
        src_tail = fh.read(4096)
    with open(clone_disk, "r+b") as fh:
        fh.seek(clone_disk.stat().st_size - 4096)
        fh.write(b"clone-only" * 400)
    with open(src_disk, "rb") as fh:
        fh.seek(src_disk.stat().st_size - 4096)
        assert fh.read(4096) == src_tail
    # deleting the source leaves the clone (and the snapshot's twin) running
    r = await client.delete(f"/v1/vms/{src['id']}?wait=true")
    assert r.status_code == 200, r.text
    assert not src_dir.exists() and clone_disk.exists()
    assert (await client.get(f"/v1/vms/{clone['id']}")).json()["state"] == "running"
    # restoring into the deleted VM is refused with a hint; the snapshot survives
    r = await client.post(f"/v1/snapshots/{snap['id']}/restore")
    assert r.status_code == 409 and "from_snapshot" in r.json()["detail"]

    # templates: instantiate twice -> two independent VMs
    r = await client.post(
        "/v1/templates",
        json={"name": "small", "spec": {"vcpus": 1, "memory_mib": 128, "image": "test",
                                        "labels": {"tier": "t"}}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    tpl = r.json()
    made_vms = []
    for name in ("t1", "t2"):
        r = await client.post(
            f"/v1/templates/{tpl['id']}/instantiate?wait=true", json={"name": name}
        )
        assert r.status_code == 200, r.text
        made_vms.append(r.json())
    assert made_vms[0]["id"] != made_vms[1]["id"]
    for v in made_vms:
        assert v["state"] == "running" and v["labels"]["tier"] == "t"
        assert v["labels"]["nexus.template"] == "small"
    d0, d1 = (rt.vms_dir / v["id"] / "disk.img" for v in made_vms)
    assert d0.stat().st_ino != d1.stat().st_ino

    r = await client.delete(f"/v1/snapshots/{snap['id']}")
    assert r.status_code == 204
    assert not (rt.settings.state_dir / "snapshots" / snap["id"]).exists()
    record_timings(
        api_cold_boot_to_ready_ms=cold_boot_ms,
        api_snapshot_ms=api_snapshot_ms,
        api_snapshot_agent_ms=snap["timings"]["snapshot_ms"],
        api_snapshot_downtime_ms=snap["timings"]["downtime_ms"],
        api_restore_to_responsive_ms=restore_responsive_ms,
        snapshot_disk_method=snap["timings"]["disk_method"],
    )
