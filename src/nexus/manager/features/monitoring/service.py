"""``/metrics``: who may scrape, and the gauges read from the database at scrape time.

Counters and histograms are counted where things happen (:mod:`nexus.manager.platform.metrics`);
the gauges here describe the shared database (VMs by state, hosts by health, users, tokens,
heartbeat age, operation backlog, host capacity), so every replica reports the same values.
"""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nexus import __version__
from nexus.core.errors import Problem
from nexus.core.scrape import scrape_allowed
from nexus.core.timeutil import utcnow
from nexus.manager.features.auth.models import ApiToken
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.operations.models import Operation
from nexus.manager.features.users.models import User
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.states import VM_STATES
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.metrics import LAST_BACKUP, REGISTRY

__all__ = ["CONTENT_TYPE_LATEST", "ScrapeDenied", "ensure_scrape_allowed", "render"]

_R = REGISTRY
VMS = Gauge("nexus_vms", "VMs by state", ["state"], registry=_R)
HOSTS = Gauge(
    "nexus_hosts", "Hosts by health (healthy, unhealthy, drained)", ["health"], registry=_R
)
USERS = Gauge("nexus_users", "User accounts, by whether they are enabled", ["enabled"], registry=_R)
TOKENS = Gauge("nexus_api_tokens", "API tokens that are neither revoked nor expired", registry=_R)
OPS = Gauge(
    "nexus_operations_in_progress", "Operations pending or running", ["status"], registry=_R
)
OLDEST_OP = Gauge(
    "nexus_operation_oldest_pending_age_seconds",
    "Age of the oldest operation still pending (0: none)",
    registry=_R,
)
HB_AGE = Gauge(
    "nexus_host_heartbeat_age_seconds",
    "Seconds since each host's last heartbeat",
    ["host"],
    registry=_R,
)
HOST_UP = Gauge("nexus_host_up", "1 when the host's heartbeat is recent", ["host"], registry=_R)
HOST_MEM = Gauge(
    "nexus_host_memory_mib", "Memory a host offers to VMs (MiB)", ["host"], registry=_R
)
HOST_MEM_ALLOC = Gauge(
    "nexus_host_memory_allocated_mib",
    "Memory of the VMs placed on a host (MiB)",
    ["host"],
    registry=_R,
)
HOST_VCPUS = Gauge("nexus_host_vcpus", "vCPUs a host has", ["host"], registry=_R)
HOST_VCPUS_ALLOC = Gauge(
    "nexus_host_vcpus_allocated", "vCPUs of the VMs placed on a host", ["host"], registry=_R
)
HOST_DISK_FREE = Gauge(
    "nexus_host_disk_free_mib", "Free disk in a host's state dir (MiB)", ["host"], registry=_R
)
HOST_DISK_TOTAL = Gauge(
    "nexus_host_disk_total_mib",
    "Size of a host's state dir file system (MiB)",
    ["host"],
    registry=_R,
)
HOST_VMS = Gauge("nexus_host_vms", "VMs placed on a host", ["host"], registry=_R)
CERT_EXPIRY = Gauge(
    "nexus_tls_cert_expiry_timestamp_seconds",
    "When the manager's TLS certificate (tls_cert_file) expires (Unix time)",
    registry=_R,
)
INFO = Gauge("nexus_build_info", "The manager's version", ["version"], registry=_R)
INFO.labels(__version__).set(1)
SCRAPE_ERRORS = Gauge(
    "nexus_metrics_collect_errors",
    "1 when the last scrape could not read the database (the gauges are stale)",
    registry=_R,
)
_HOST_GAUGES = (
    HB_AGE,
    HOST_UP,
    HOST_MEM,
    HOST_MEM_ALLOC,
    HOST_VCPUS,
    HOST_VCPUS_ALLOC,
    HOST_DISK_FREE,
    HOST_DISK_TOTAL,
    HOST_VMS,
)


class ScrapeDenied(Problem):
    """The scraper presented no valid scrape token and is not on the allowlist."""

    status, slug, title = 401, "scrape-denied", "Scrape not allowed"


def ensure_scrape_allowed(state: ManagerState, peer: str | None, authorization: str | None) -> None:
    """Raise :class:`ScrapeDenied` unless ``metrics_scrape_token`` or
    ``metrics_scrape_allow`` lets this caller read the metrics."""
    s = state.settings
    if not s.metrics_enabled:
        raise ScrapeDenied("metrics are disabled on this manager (metrics_enabled = false)")
    if not scrape_allowed(s, peer, authorization):
        raise ScrapeDenied(
            f"{peer or 'this address'} may not scrape /metrics: present the scrape token "
            "(Authorization: Bearer <metrics_scrape_token>) or add the address to "
            "metrics_scrape_allow",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


def _age(ts: datetime | None, now: datetime) -> float:
    return (now - ts).total_seconds() if ts is not None else float("inf")


async def _collect(s: AsyncSession, state: ManagerState) -> None:
    now = utcnow()
    by_state = dict((await s.execute(select(Vm.state, func.count()).group_by(Vm.state))).all())
    for st in VM_STATES:
        VMS.labels(st).set(int(by_state.get(st, 0)))
    users = dict(
        (await s.execute(select(User.disabled, func.count()).group_by(User.disabled))).all()
    )
    USERS.labels("true").set(int(users.get(False, 0)))
    USERS.labels("false").set(int(users.get(True, 0)))
    TOKENS.set(
        int(
            (
                await s.execute(
                    select(func.count())
                    .select_from(ApiToken)
                    .where(ApiToken.revoked_at.is_(None))
                    .where((ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now))
                )
            ).scalar_one()
        )
    )
    ops = dict(
        (
            await s.execute(
                select(Operation.status, func.count())
                .where(Operation.status.in_(("pending", "running")))
                .group_by(Operation.status)
            )
        ).all()
    )
    for st in ("pending", "running"):
        OPS.labels(st).set(int(ops.get(st, 0)))
    oldest = (
        await s.execute(select(func.min(Operation.created_at)).where(Operation.status == "pending"))
    ).scalar_one()
    OLDEST_OP.set(_age(oldest, now) if oldest is not None else 0.0)
    alloc = await hosts.allocations(s)
    timeout = state.settings.host_heartbeat_timeout_s
    health = {"healthy": 0, "unhealthy": 0, "drained": 0}
    seen: set[str] = set()
    for host in (await s.execute(select(Host))).scalars():
        seen.add(host.name)
        healthy = hosts.is_healthy(host, timeout)
        health["drained" if host.drained else "healthy" if healthy else "unhealthy"] += 1
        n, c, m = alloc.get(host.id, (0, 0, 0))
        facts = host.facts or {}
        HB_AGE.labels(host.name).set(_age(host.last_heartbeat_at, now))
        HOST_UP.labels(host.name).set(1 if healthy else 0)
        HOST_MEM.labels(host.name).set(host.memory_mib)
        HOST_MEM_ALLOC.labels(host.name).set(m)
        HOST_VCPUS.labels(host.name).set(host.vcpus)
        HOST_VCPUS_ALLOC.labels(host.name).set(c)
        HOST_DISK_FREE.labels(host.name).set(host.disk_free_mib)
        HOST_DISK_TOTAL.labels(host.name).set(int(facts.get("disk_total_mib") or 0))
        HOST_VMS.labels(host.name).set(n)
    for name, count in health.items():
        HOSTS.labels(name).set(count)
    # hosts that were deleted stop being reported
    for gauge in _HOST_GAUGES:
        for labels in list(gauge._metrics):
            if labels[0] not in seen:
                gauge.remove(*labels)


def _cert_expiry(state: ManagerState) -> None:
    path = state.settings.tls_cert_file
    if not path:
        return
    cache = state.extras.setdefault("tls_cert_expiry", {})
    try:
        from pathlib import Path

        from cryptography import x509

        p = Path(path)
        key = (str(p), p.stat().st_mtime_ns)
        if key not in cache:
            cert = x509.load_pem_x509_certificate(p.read_bytes())
            cache.clear()
            cache[key] = cert.not_valid_after_utc.timestamp()
        CERT_EXPIRY.set(cache[key])
    except (OSError, ValueError):
        CERT_EXPIRY.set(0)


def _last_backup(state: ManagerState) -> None:
    """The newest archive in the backup directory (made by the API or the CLI)."""
    directory = state.settings.resolved_backup_dir()
    try:
        newest = max((p.stat().st_mtime for p in directory.glob("nexus-backup-*.tar")), default=0.0)
    except OSError:
        return
    if newest:
        LAST_BACKUP.set(max(newest, LAST_BACKUP._value.get()))


async def render(state: ManagerState) -> bytes:
    """Refresh the database gauges and render every series in the text format."""
    began = time.perf_counter()
    try:
        async with state.db.session() as s:
            await _collect(s, state)
        SCRAPE_ERRORS.set(0)
    except Exception:  # the counters are still worth serving
        SCRAPE_ERRORS.set(1)
    _cert_expiry(state)
    _last_backup(state)
    state.extras["metrics_collect_s"] = time.perf_counter() - began
    return generate_latest(REGISTRY)
