"""The agent's /metrics (scrape token or allowlist, series read from the runtime) and its
/health/live and /health/ready (each readiness check failing and passing)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nexus.agent import metrics as agent_metrics
from nexus.agent import observability
from nexus.agent.api.app import create_app
from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.hostapi.agent_client import AgentClient

from .conftest import make_spec

TOKEN = "agent-secret"
SCRAPE = "scrape-token-0123456789"


def _http(rt: AgentRuntime, peer: str = "10.1.2.3") -> httpx.AsyncClient:
    app = create_app(rt, TOKEN)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 4000)), base_url="http://agent"
    )


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def test_metrics_access(runtime: AgentRuntime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"metrics_scrape_token": SCRAPE})
    async with _http(runtime) as http:
        r = await http.get("/metrics")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert "metrics_scrape_allow" in r.json()["detail"]
        # the agent token is not a scrape token, and the scrape token opens nothing else
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 401
        r = await http.get("/v1/vms", headers={"Authorization": f"Bearer {SCRAPE}"})
        assert r.status_code == 401
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    async with _http(runtime, peer="127.0.0.1") as http:
        assert (await http.get("/metrics")).status_code == 200  # loopback: the default allowlist


async def test_metrics_series_from_the_runtime(runtime: AgentRuntime, image_dir: Path) -> None:
    app = create_app(runtime, TOKEN)
    agent = AgentClient("http://agent", TOKEN, transport=httpx.ASGITransport(app=app))
    async with agent, _http(runtime, peer="127.0.0.1") as http:
        await agent.put_vm(make_spec(image_dir, "vm-obs1"))
        st = await agent.start_vm("vm-obs1")
        assert st.state == "running"
        assert await wait_for(lambda: runtime.status("vm-obs1").guest_ready, 5)
        before = _samples((await http.get("/metrics")).text)
        errors_before = before["nexus_agent_guest_channel_errors_total"][0][1]
        runtime.guests._record("vm-obs1", "flooded its channel")  # what a violation calls
        s = _samples((await http.get("/metrics")).text)
        assert s["nexus_agent_vmm_processes"] == [({}, 1.0)]
        assert ({"state": "running"}, 1.0) in s["nexus_agent_vms"]
        rss = dict((lab["vm"], v) for lab, v in s["nexus_agent_vmm_rss_bytes"])
        assert rss["vm-obs1"] > 0
        assert "vm-obs1" in {lab["vm"] for lab, _ in s["nexus_agent_vmm_cpu_seconds_total"]}
        assert s["nexus_agent_disks"] == [({}, 1.0)]
        assert s["nexus_agent_taps"] == [({}, 0.0)]
        assert s["nexus_agent_guest_channels_disconnected"] == [({}, 1.0)]
        assert s["nexus_agent_guest_channel_errors_total"][0][1] == errors_before + 1
        assert s["nexus_agent_state_dir_free_bytes"][0][1] > 0
        routes = {lab["route"] for lab, _ in s["nexus_agent_http_requests_total"]}
        assert "/v1/vms/{vm_id}/start" in routes
        assert not any("vm-obs1" in r for r in routes), routes
        await agent.delete_vm("vm-obs1")
        s = _samples((await http.get("/metrics")).text)
        assert s["nexus_agent_vmm_processes"] == [({}, 0.0)]
        assert "nexus_agent_vmm_rss_bytes" not in s


async def test_health_live_and_ready(runtime: AgentRuntime, tmp_path: Path) -> None:
    runtime.settings = runtime.settings.model_copy(update={"qemu_bin": "true"})
    observability._vmm_cache.clear()
    agent_metrics.heartbeat_state["last_ok"] = 0.0
    async with _http(runtime) as http:
        assert (await http.get("/health/live")).json() == {"status": "ok"}
        r = await http.get("/health/ready")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["manager"]["ok"] is False and "no heartbeat" in checks["manager"]["detail"]
        assert checks["vmm"]["ok"] and checks["state_dir"]["ok"] and checks["network"]["ok"]
        agent_metrics.heartbeat_ok(0.01)
        r = await http.get("/health/ready")
        assert r.status_code == 200, r.json()
        assert r.json()["status"] == "ok"
        # a heartbeat too old
        agent_metrics.heartbeat_state["last_ok"] = (
            time.time() - 10 * runtime.settings.heartbeat_interval_s
        )
        r = await http.get("/health/ready")
        assert r.status_code == 503 and "ago" in r.json()["checks"]["manager"]["detail"]
        agent_metrics.heartbeat_ok(0.01)
        # the VMM binary is missing
        runtime.settings = runtime.settings.model_copy(update={"qemu_bin": "/nonexistent/qemu"})
        r = await http.get("/health/ready")
        assert r.status_code == 503 and "not found" in r.json()["checks"]["vmm"]["detail"]
        runtime.settings = runtime.settings.model_copy(update={"qemu_bin": "true"})
        # the state dir is not writable (a file stands where the directory should be)
        real = runtime.vms_dir
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("x")
        runtime.vms_dir = blocker
        try:
            r = await http.get("/health/ready")
            assert r.status_code == 503 and not r.json()["checks"]["state_dir"]["ok"]
        finally:
            runtime.vms_dir = real
        assert (await http.get("/health/ready")).status_code == 200


async def test_ready_checks_the_bridges_of_running_vms(
    runtime: AgentRuntime, image_dir: Path
) -> None:
    from nexus.hostapi.models import NetworkRef, NicConfig

    spec = make_spec(image_dir, "vm-net1")
    net = NetworkRef(id="net_nosuchbridge1", cidr="10.99.0.0/24")
    spec.nics = [NicConfig(id="net0", network=net)]
    from nexus.agent.runtime import ManagedVm

    managed = ManagedVm(runtime.vms_dir / "vm-net1", spec)
    managed.state = "running"
    runtime.vms["vm-net1"] = managed
    try:
        ok, detail = observability._network_check(runtime)
        assert not ok and "bridge of 1 network" in detail
        assert "net_nosuchbridge1" not in detail  # /health is unauthenticated
    finally:
        del runtime.vms["vm-net1"]
    assert observability._network_check(runtime) == (True, "no networks in use")
