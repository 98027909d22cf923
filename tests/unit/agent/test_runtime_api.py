"""Runtime state machine, re-adoption, HTTP API and AgentClient — with a fake VMM process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from nexus.agent.api.app import create_app
from nexus.agent.runtime import AgentRuntime, VmInvalid, wait_for
from nexus.agent.vmm.base import process_alive
from nexus.core.settings import Settings
from nexus.hostapi.agent_client import AgentClient, AgentConflict, AgentNotFound, AgentUnauthorized
from nexus.hostapi.models import NicConfig

from .conftest import SleepDriver, make_spec

TOKEN = "agent-secret"


def client_for(rt: AgentRuntime, token: str = TOKEN) -> AgentClient:
    app = create_app(rt, TOKEN)
    return AgentClient("http://agent", token, transport=httpx.ASGITransport(app=app))


async def test_lifecycle_through_client(runtime: AgentRuntime, image_dir: Path) -> None:
    async with client_for(runtime) as agent:
        info = await agent.info()
        assert info.driver == "sleep" and info.vcpus >= 1 and info.memory_mib > 0
        st = await agent.put_vm(make_spec(image_dir))
        assert st.state == "stopped" and st.pid is None
        assert (await agent.put_vm(make_spec(image_dir))).state == "stopped"  # idempotent
        vm_dir = runtime.vms_dir / "vm-1"
        assert stat.S_IMODE(vm_dir.stat().st_mode) == 0o700
        assert (vm_dir / "disk.img").stat().st_size == 8 * 1024 * 1024
        st = await agent.start_vm("vm-1")
        assert st.state == "running" and st.pid
        assert (await agent.start_vm("vm-1")).pid == st.pid  # idempotent
        assert await wait_for(lambda: runtime.status("vm-1").guest_ready, 5)
        assert (await agent.get_vm("vm-1")).ready_at is not None
        (sample,) = await agent.all_vm_metrics()  # the sampler's one call per host
        assert sample.vm_id == "vm-1" and sample.state == "running" and sample.host is not None
        assert "NEXUS-GUEST-READY" in await agent.console("vm-1", tail=5)
        assert (await agent.pause_vm("vm-1")).state == "paused"
        assert (await agent.pause_vm("vm-1")).state == "paused"
        assert (await agent.resume_vm("vm-1")).state == "running"
        st2 = await agent.reboot_vm("vm-1")
        assert st2.state == "running" and st2.pid != st.pid
        assert not process_alive(st.pid, 0) or True
        st3 = await agent.stop_vm("vm-1", timeout_s=3)
        assert st3.state == "stopped" and st3.pid is None
        assert (await agent.stop_vm("vm-1")).state == "stopped"  # idempotent
        assert await agent.all_vm_metrics() == []
        with pytest.raises(AgentConflict):
            await agent.pause_vm("vm-1")
        assert [v.id for v in await agent.list_vms()] == ["vm-1"]
        await agent.delete_vm("vm-1")
        assert not vm_dir.exists()
        with pytest.raises(AgentNotFound):
            await agent.get_vm("vm-1")


async def test_auth_and_problem_json(runtime: AgentRuntime, image_dir: Path) -> None:
    app = create_app(runtime, TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://a") as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            r = await http.get("/v1/vms", headers=headers)
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"].endswith("/unauthorized")
        ok = {"Authorization": f"Bearer {TOKEN}"}
        r = await http.get("/v1/vms/nope", headers=ok)
        assert r.status_code == 404 and r.json()["type"].endswith("/vm-not-found")
        r = await http.put("/v1/vms/x", headers=ok, json={"id": "x"})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        body = make_spec(image_dir, "other").model_dump(mode="json")
        r = await http.put("/v1/vms/x", headers=ok, json=body)
        assert r.status_code == 422 and "does not match" in r.json()["detail"]
        assert (await http.get("/openapi.json")).status_code in (401, 404)
    with pytest.raises(AgentUnauthorized):
        async with client_for(runtime, token="bad") as agent:
            await agent.list_vms()


async def test_missing_image_is_422(runtime: AgentRuntime, tmp_path: Path) -> None:
    with pytest.raises(VmInvalid):
        await runtime.put_vm(make_spec(tmp_path / "missing"))


async def test_manifest_mismatch_rejected(runtime: AgentRuntime, image_dir: Path) -> None:
    (image_dir / "manifest.json").write_text('{"rootfs_sha256": "' + "0" * 64 + '"}')
    with pytest.raises(VmInvalid, match="mismatch"):
        await runtime.put_vm(make_spec(image_dir))


async def test_readoption_after_agent_restart(settings: Settings, image_dir: Path) -> None:
    rt1 = AgentRuntime(settings, driver=SleepDriver())
    await rt1.startup()
    await rt1.put_vm(make_spec(image_dir))
    st = await rt1.start_vm("vm-1")
    assert await wait_for(lambda: rt1.status("vm-1").guest_ready, 5)
    await rt1.shutdown()  # agent goes away; the VMM must survive
    assert process_alive(st.pid or 0, rt1.vms["vm-1"].handle.start_time)  # type: ignore[union-attr]

    rt2 = AgentRuntime(settings, driver=SleepDriver())
    await rt2.startup()
    try:
        st2 = rt2.status("vm-1")
        assert st2.state == "running" and st2.pid == st.pid and st2.guest_ready
        await rt2.pause_vm("vm-1")
        await rt2.shutdown()
        rt3 = AgentRuntime(settings, driver=SleepDriver())
        await rt3.startup()
        assert rt3.status("vm-1").state == "paused"  # paused state is read back from the VMM
        await rt3.delete_vm("vm-1")
        await rt3.shutdown()
    finally:
        await rt2.shutdown()
    assert not process_alive(st.pid or 0, 0)


async def test_vm_that_died_while_agent_was_away(settings: Settings, image_dir: Path) -> None:
    rt1 = AgentRuntime(settings, driver=SleepDriver())
    await rt1.startup()
    await rt1.put_vm(make_spec(image_dir))
    await rt1.start_vm("vm-1")
    await rt1.shutdown()
    handle = rt1.vms["vm-1"].handle
    assert handle is not None
    os.kill(handle.pid, 9)
    assert await wait_for(lambda: not process_alive(handle.pid, handle.start_time), 5)
    rt2 = AgentRuntime(settings, driver=SleepDriver())
    await rt2.startup()
    st = rt2.status("vm-1")
    assert st.state in ("stopped", "failed") and st.pid is None
    await rt2.delete_vm("vm-1")
    await rt2.shutdown()


async def test_pid_reuse_guard_on_adopt(settings: Settings, image_dir: Path) -> None:
    rt1 = AgentRuntime(settings, driver=SleepDriver())
    await rt1.startup()
    await rt1.put_vm(make_spec(image_dir))
    await rt1.start_vm("vm-1")
    await rt1.shutdown()
    vm_json = rt1.vms["vm-1"].dir / "vmm.json"
    import json

    data = json.loads(vm_json.read_text())
    data["start_time"] += 12345  # same pid, different process start: must not adopt
    vm_json.write_text(json.dumps(data))
    rt2 = AgentRuntime(settings, driver=SleepDriver())
    await rt2.startup()
    assert rt2.status("vm-1").state != "running"
    os.kill(data["pid"], 9)
    await rt2.delete_vm("vm-1")
    await rt2.shutdown()


async def test_guest_exit_is_noticed(settings: Settings, image_dir: Path) -> None:
    drv = SleepDriver("echo Kernel panic - not syncing: test; exit 1")
    rt = AgentRuntime(settings, driver=drv)
    await rt.startup()
    await rt.put_vm(make_spec(image_dir))
    await rt.start_vm("vm-1")
    assert await wait_for(lambda: rt.status("vm-1").state == "failed", 5)
    st = rt.status("vm-1")
    assert st.console_tail and "Kernel panic" in st.console_tail
    assert st.error and "Kernel panic" in st.error
    # a failed VM can be started again
    drv.script = "echo NEXUS-GUEST-READY; exec sleep 600"
    assert (await rt.start_vm("vm-1")).state == "running"
    await rt.delete_vm("vm-1")
    await rt.shutdown()


async def test_machine_spec_from_vmspec(runtime: AgentRuntime, image_dir: Path) -> None:
    spec = make_spec(image_dir, vcpus=2, memory_mib=300, kernel_args="nexus.counter=1")
    spec.nics.append(NicConfig(id="eth0", tap="nxt0", mac="52:54:00:12:34:56"))
    await runtime.put_vm(spec)
    await runtime.start_vm("vm-1")
    m = runtime.driver.started[-1]  # type: ignore[attr-defined]
    assert (m.vcpus, m.memory_mib) == (2, 300)
    assert m.kernel == image_dir / "vmlinuz" and m.initrd == image_dir / "initrd.img"
    assert m.root_disk is not None and m.root_disk.path == runtime.vms_dir / "vm-1" / "disk.img"
    assert "nexus.counter=1" in m.kernel_args and "nexus.hostname=vm-1" in m.kernel_args
    assert m.nics[0].tap == "nxt0"


def test_guest_identity_of_a_spec(image_dir: Path) -> None:
    """What a guest restored from another VM's memory is told to become."""
    from nexus.hostapi.guestboot import guest_identity

    spec = make_spec(image_dir, vm_id="vm_twin").model_copy(update={"name": "twin_of web!"})
    spec = spec.model_copy(
        update=dict(
            kernel_args="nexus.machine_id=" + "ab" * 16 + " ip=10.77.0.9::10.77.0.1:255.255.255.0",
            nics=[
            NicConfig(id="net0", mac="52:54:00:00:00:09", ip="10.77.0.9", prefix=24,
                      gateway="10.77.0.1", tap="nxt0"),
            NicConfig(id="net1", mac="52:54:00:00:01:09", ip="10.88.0.4", prefix=16,
                      gateway="10.88.0.1", tap="nxt1"),
            ],
        )
    )  # fmt: skip
    ident = guest_identity(spec)
    assert ident["hostname"] == "twinofweb" and ident["machine_id"] == "ab" * 16
    assert ident["nics"] == [
        {"dev": "eth0", "mac": "52:54:00:00:00:09", "addr": "10.77.0.9",
         "netmask": "255.255.255.0", "gateway": "10.77.0.1"},
        {"dev": "eth1", "mac": "52:54:00:00:01:09", "addr": "10.88.0.4",
         "netmask": "255.255.0.0", "gateway": ""},  # one default route, like a cold boot
    ]  # fmt: skip
