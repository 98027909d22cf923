"""The agent's metrics (``GET /metrics``) and health (``GET /health/live``, ``/health/ready``).

Neither needs the agent token: ``/health/*`` answers anyone (it tells only ok/failed per
check), ``/metrics`` the scrape token or an allowlisted address (``metrics_scrape_token``,
``metrics_scrape_allow``, as on the manager).

Series (registry :data:`REGISTRY`, apart from the manager's even in all-in-one mode):
HTTP requests by route template; VMs by state; VMM processes, each one's RSS and CPU time
(label ``vm``: bounded by the VMs of this host); taps; disks; guest-channel errors;
heartbeats (latency, failures, time of the last success); the state dir's free space.

Readiness checks: the VMM binary runs (``--version``, cached a minute), the bridges and the
nftables table of the networks running VMs use exist, the state dir is writable, and the
manager accepted a heartbeat within three heartbeat intervals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nexus.agent import hostfacts
from nexus.agent.api.problems import problem
from nexus.agent.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    REGISTRY,
    heartbeat_state,
)
from nexus.agent.net.names import bridge_name
from nexus.agent.runtime import AgentRuntime
from nexus.core import promhttp
from nexus.core.scrape import scrape_allowed


class HttpMetrics(promhttp.HttpMetricsMiddleware):
    """Request metrics of the agent API."""

    def __init__(self, app: Any) -> None:
        super().__init__(app, requests=HTTP_REQUESTS, duration=HTTP_DURATION)


class RuntimeCollector(Collector):
    """Reads the runtime at scrape time: VMs, VMM processes, taps, disks, free space."""

    def __init__(self) -> None:
        self.runtime: AgentRuntime | None = None

    def collect(self) -> Iterable[Any]:
        rt = self.runtime
        if rt is None:
            return []
        return list(self._families(rt))

    def _families(self, rt: AgentRuntime) -> Iterator[Any]:
        states = GaugeMetricFamily("nexus_agent_vms", "VMs on this host by state", labels=["state"])
        counts: dict[str, int] = dict.fromkeys(
            ("stopped", "starting", "running", "paused", "stopping", "failed"), 0
        )
        rss = GaugeMetricFamily(
            "nexus_agent_vmm_rss_bytes", "Resident memory of each VMM process", labels=["vm"]
        )
        cpu = CounterMetricFamily(
            "nexus_agent_vmm_cpu_seconds", "CPU time of each VMM process", labels=["vm"]
        )
        procs = taps = disks = 0
        for vm_id, vm in list(rt.vms.items()):
            counts[vm.state] = counts.get(vm.state, 0) + 1
            disks += 1 + len(vm.spec.volumes)
            alive = vm.handle is not None and vm.state not in ("stopped", "failed")
            if not alive or vm.handle is None:
                continue
            procs += 1
            taps += sum(1 for nic in vm.spec.nics if nic.tap)
            r = hostfacts.proc_rss(vm.handle.pid)
            c = hostfacts.proc_cpu_s(vm.handle.pid)
            if r is not None:
                rss.add_metric([vm_id], r)
            if c is not None:
                cpu.add_metric([vm_id], c)
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "nexus_agent_vmm_processes", "VMM processes this agent runs", value=procs
        )
        yield rss
        yield cpu
        yield GaugeMetricFamily("nexus_agent_taps", "Tap devices of running VMs", value=taps)
        yield GaugeMetricFamily(
            "nexus_agent_disks",
            "Disks (root disks and attached volumes) of this host's VMs",
            value=disks,
        )
        yield GaugeMetricFamily(
            "nexus_agent_guest_channels_disconnected",
            "Guests whose channel is cut off right now (flood or protocol violation)",
            value=len(rt.guests.violations),
        )
        try:
            st = os.statvfs(rt.vms_dir)
            free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        except OSError:
            free = total = 0
        yield GaugeMetricFamily(
            "nexus_agent_state_dir_free_bytes", "Free space of the state dir", value=free
        )
        yield GaugeMetricFamily(
            "nexus_agent_state_dir_size_bytes", "Size of the state dir's file system", value=total
        )
        yield GaugeMetricFamily(
            "nexus_agent_last_heartbeat_timestamp_seconds",
            "When the manager last accepted a heartbeat (Unix time; 0: never)",
            value=heartbeat_state["last_ok"],
        )
        cert = GaugeMetricFamily(
            "nexus_agent_tls_cert_expiry_timestamp_seconds",
            "When the agent API's TLS certificate expires (Unix time; no sample without TLS)",
        )
        expiry = _cert_expiry(rt.settings.tls_cert_file)
        if expiry is not None:
            cert.add_metric([], expiry)
        yield cert


_cert_cache: dict[tuple[str, int], float] = {}


def _cert_expiry(path: str) -> float | None:
    if not path:
        return None
    try:
        p = Path(path)
        key = (str(p), p.stat().st_mtime_ns)
        if key not in _cert_cache:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(p.read_bytes())
            _cert_cache.clear()
            _cert_cache[key] = cert.not_valid_after_utc.timestamp()
        return _cert_cache[key]
    except (OSError, ValueError):
        return 0.0


log = logging.getLogger(__name__)
COLLECTOR = RuntimeCollector()
REGISTRY.register(COLLECTOR)


# --- health ---------------------------------------------------------------------------------

_vmm_cache: dict[str, tuple[float, bool, str]] = {}


def _vmm_check(binary: str) -> tuple[bool, str]:
    cached = _vmm_cache.get(binary)
    if cached is not None and time.monotonic() - cached[0] < 60:
        return cached[1], cached[2]
    path = shutil.which(binary)
    if path is None:
        result = (False, f"{Path(binary).name} not found")
    else:
        try:
            proc = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            # no version string: /health is unauthenticated, it says only what works
            result = (
                (True, f"{Path(path).name} runs")
                if proc.returncode == 0
                else (False, f"{Path(path).name} --version exited {proc.returncode}")
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            result = (False, f"{path}: {type(exc).__name__}")
    _vmm_cache[binary] = (time.monotonic(), *result)
    return result


def _vmm_binary(rt: AgentRuntime) -> str:
    if rt.driver.capabilities.name == "firecracker":
        return rt.settings.jailer_bin or rt.settings.firecracker_bin
    return rt.settings.qemu_bin


def _network_check(rt: AgentRuntime) -> tuple[bool, str]:
    nets = {
        nic.network.id
        for vm in list(rt.vms.values())
        if vm.state in ("running", "paused", "starting")
        for nic in vm.spec.nics
        if nic.network is not None
    }
    if not nets:
        return True, "no networks in use"
    missing = [n for n in sorted(nets) if not Path(f"/sys/class/net/{bridge_name(n)}").exists()]
    if missing:  # counts only: /health is unauthenticated and network ids are tenants'
        log.warning("health: bridges missing for networks %s", ", ".join(missing))
        return False, f"the bridge of {len(missing)} network(s) in use is missing"
    try:
        proc = subprocess.run(
            ["nft", "list", "table", "inet", "nexus"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nft: {type(exc).__name__}"
    if proc.returncode != 0:
        return False, "nftables table inet nexus is missing"
    return True, f"{len(nets)} network(s): bridges and nftables table present"


def _state_dir_check(rt: AgentRuntime) -> tuple[bool, str]:
    probe = rt.vms_dir / f".health-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        log.warning("health: %s is not writable: %s", rt.vms_dir, exc)
        return False, f"the state dir is not writable ({exc.strerror or type(exc).__name__})"
    return True, "writable"


def _manager_check(rt: AgentRuntime) -> tuple[bool, str]:
    last = heartbeat_state["last_ok"]
    if not last:
        return False, "no heartbeat accepted by the manager yet"
    age = time.time() - last
    limit = 3 * rt.settings.heartbeat_interval_s
    if age > limit:
        return False, f"last heartbeat accepted {age:.0f} s ago (more than {limit:.0f} s)"
    return True, f"last heartbeat accepted {age:.1f} s ago"


async def readiness(rt: AgentRuntime) -> dict[str, tuple[bool, str]]:
    """Every readiness check: name -> (ok, detail)."""
    binary = _vmm_binary(rt)
    vmm, net, state_dir = await asyncio.gather(
        asyncio.to_thread(_vmm_check, binary),
        asyncio.to_thread(_network_check, rt),
        asyncio.to_thread(_state_dir_check, rt),
    )
    return {"vmm": vmm, "network": net, "state_dir": state_dir, "manager": _manager_check(rt)}


def router(runtime: AgentRuntime) -> APIRouter:
    """``/metrics`` and ``/health/*`` of the agent (no agent token)."""
    r = APIRouter()
    COLLECTOR.runtime = runtime

    @r.get("/health/live")
    async def live() -> dict[str, str]:
        """The agent process answers."""
        return {"status": "ok"}

    @r.get("/health/ready")
    async def ready() -> JSONResponse:
        """503 until every check passes; each check says what it found."""
        checks = await readiness(runtime)
        ok = all(good for good, _ in checks.values())
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": {k: {"ok": good, "detail": d} for k, (good, d) in checks.items()},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @r.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this agent (scrape token or allowlisted address)."""
        s = runtime.settings
        peer = request.client.host if request.client else None
        if not s.metrics_enabled:
            return problem(
                401, "scrape-denied", "Scrape not allowed", "metrics are disabled", request
            )
        if not scrape_allowed(s, peer, request.headers.get("authorization")):
            return problem(
                401,
                "scrape-denied",
                "Scrape not allowed",
                f"{peer or 'this address'} may not scrape /metrics: present the scrape token "
                "or add the address to metrics_scrape_allow",
                request,
            )
        data = await asyncio.to_thread(generate_latest, REGISTRY)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return r
