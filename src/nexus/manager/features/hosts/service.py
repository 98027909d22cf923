"""Hosts: join tokens, registration, heartbeats, image files for agents, health, drain,
delete, agent clients."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from nexus.core import sealing
from nexus.core.db import Base
from nexus.core.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    Unauthorized,
    ValidationFailed,
)
from nexus.core.files import sha256_file
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.security import hash_secret, new_secret, secrets_equal
from nexus.core.timeutil import utcnow
from nexus.hostapi.agent_client import AgentClient, AgentPool
from nexus.hostapi.models import Heartbeat, RegisterRequest, RegisterResponse
from nexus.manager.features.audit import service as audit
from nexus.manager.features.containers.models import ContainerImage
from nexus.manager.features.hosts.models import Host, JoinToken
from nexus.manager.features.hosts.schemas import (
    HostMetrics,
    HostRead,
    HostStatus,
    HostSummary,
    JoinTokenCreated,
)
from nexus.manager.features.images.models import Image
from nexus.manager.features.vms.models import Vm
from nexus.manager.features.vms.states import VM_STATES
from nexus.manager.platform import metrics
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal, ensure_role

log = get_logger(__name__)

#: A host offers this many vCPUs to VMs per physical vCPU (placement and host metrics).
VCPU_OVERCOMMIT = 4
IMAGE_FILES = ("vmlinuz", "vmlinux", "initrd.img", "rootfs.ext4", "manifest.json")
"""The files of an image directory an agent may fetch (a fixed list: no path tricks)."""


def is_healthy(host: Host, timeout_s: int) -> bool:
    """A host is healthy when its last heartbeat is younger than ``timeout_s``."""
    if host.last_heartbeat_at is None:
        return False
    return utcnow() - host.last_heartbeat_at < timedelta(seconds=timeout_s)


def host_status(host: Host, timeout_s: int) -> HostStatus:
    """healthy | unhealthy | draining."""
    if not is_healthy(host, timeout_s):
        return "unhealthy"
    return "draining" if host.drained else "healthy"


async def allocations(
    s: AsyncSession, owner_id: str | None = None, host_ids: list[str] | None = None
) -> dict[str, tuple[int, int, int]]:
    """Per host: (vm count, vcpus, memory MiB) allocated to VMs placed there (only
    ``owner_id``'s VMs, only the hosts ``host_ids``, when given)."""
    q = select(Vm.host_id, func.count(), func.sum(Vm.vcpus), func.sum(Vm.memory_mib)).group_by(
        Vm.host_id
    )
    if host_ids is not None:
        q = q.where(Vm.host_id.in_(host_ids))
    if owner_id is not None:
        q = q.where(Vm.created_by_user_id == owner_id)
    return {
        h: (int(n), int(c or 0), int(m or 0))
        for h, n, c, m in (await s.execute(q)).all()
        if h is not None
    }


def to_read(host: Host, timeout_s: int, alloc: tuple[int, int, int] | None) -> HostRead:
    """The API view of a host."""
    n, c, m = alloc or (0, 0, 0)
    return HostRead.model_validate(
        {
            **{k: getattr(host, k) for k in HostRead.model_fields if hasattr(host, k)},
            "status": host_status(host, timeout_s),
            "vm_count": n,
            "allocated_vcpus": c,
            "allocated_memory_mib": m,
        }
    )


def to_view(
    principal: Principal, host: Host, timeout_s: int, alloc: tuple[int, int, int] | None
) -> HostRead | HostSummary:
    """What ``principal`` may see of a host: admins the full :class:`HostRead`; everyone
    else a :class:`HostSummary` (no ``agent_url``, no VM counts of other tenants)."""
    if principal.is_admin:
        return to_read(host, timeout_s, alloc)
    return HostSummary.model_validate(
        {
            **{k: getattr(host, k) for k in HostSummary.model_fields if hasattr(host, k)},
            "status": host_status(host, timeout_s),
        }
    )


async def list_host_views(
    *,
    db_session: AsyncSession,
    principal: Principal,
    timeout_s: int,
    limit: int = 100,
    after: str | None = None,
    status: HostStatus | None = None,
    name: str | None = None,
    driver: str | None = None,
) -> tuple[list[HostRead | HostSummary], str | None]:
    """A page of hosts by name, as ``principal`` may see them (:func:`to_view`), filtered
    in SQL, and the name of its last host when more follow (the next page's key). Cheap at
    any fleet size: one page of rows (without their facts), allocations of that page only."""
    q = (
        select(Host)
        .options(defer(Host.facts), defer(Host.vm_states))
        .order_by(Host.name)
        .limit(limit + 1)
    )
    if after is not None:
        q = q.where(Host.name > after)
    if name:
        q = q.where(Host.name.contains(name, autoescape=True))
    if driver:
        q = q.where(Host.driver == driver)
    if status is not None:
        fresh = Host.last_heartbeat_at > utcnow() - timedelta(seconds=timeout_s)
        if status == "unhealthy":
            q = q.where((Host.last_heartbeat_at.is_(None)) | ~fresh)
        else:
            q = q.where(fresh, Host.drained.is_(status == "draining"))
    rows = list((await db_session.execute(q)).scalars().all())
    more = len(rows) > limit
    rows = rows[:limit]
    alloc: dict[str, tuple[int, int, int]] = {}
    if principal.is_admin and rows:
        alloc = await allocations(db_session, host_ids=[h.id for h in rows])
    views = [to_view(principal, h, timeout_s, alloc.get(h.id)) for h in rows]
    return views, (rows[-1].name if more else None)


async def get_host_view(
    *, db_session: AsyncSession, principal: Principal, host_id: str, timeout_s: int
) -> HostRead | HostSummary:
    """One host, as ``principal`` may see it (:func:`to_view`)."""
    host = await get_host(db_session=db_session, principal=principal, host_id=host_id)
    alloc = await allocations(db_session, host_ids=[host.id])
    return to_view(principal, host, timeout_s, alloc.get(host.id))


async def create_join_token(
    *, db_session: AsyncSession, principal: Principal, expires_in_s: int
) -> JoinTokenCreated:
    """Mint a single-use join token (admin)."""
    ensure_role(principal, "host.join_token.create", "host", "admin")
    secret = "nxj_" + new_secret(32)
    tok = JoinToken(
        id=new_id("jt"),
        token_hash=hash_secret(secret),
        expires_at=utcnow() + timedelta(seconds=expires_in_s),
        created_by_user_id=principal.user_id,
    )
    db_session.add(tok)
    audit.record(
        db_session,
        actor=principal,
        action="host.join_token.create",
        resource_type="join_token",
        resource_id=tok.id,
        after={"expires_at": tok.expires_at.isoformat()},
    )
    return JoinTokenCreated(id=tok.id, token=secret, expires_at=tok.expires_at)


async def mint_system_join_token(db_session: AsyncSession, owner_id: str) -> str:
    """A join token for the embedded agent (all-in-one), owned by the bootstrap admin; the
    only kind of join token whose agent may register a loopback ``agent_url``."""
    secret = "nxj_" + new_secret(32)
    db_session.add(
        JoinToken(
            id=new_id("jt"),
            token_hash=hash_secret(secret),
            expires_at=utcnow() + timedelta(hours=1),
            created_by_user_id=owner_id,
            allow_loopback=True,
        )
    )
    return secret


async def check_agent_url(url: str, *, allow_loopback: bool) -> None:
    """Refuse an ``agent_url`` the manager must never call (422): not http(s), no host, or a
    host that is (or resolves to) a link-local (cloud metadata at 169.254.169.254),
    multicast, unspecified or — unless ``allow_loopback`` — loopback address. A name that
    does not resolve from the manager is accepted (it may resolve later, e.g. via a VPN)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed(f"agent_url: not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise ValidationFailed(f"agent_url must be http:// or https://, not '{parts.scheme}:'")
    host = parts.hostname
    if not host:
        raise ValidationFailed("agent_url has no host name or address")
    try:
        addrs = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port or None), 5.0
            )
        except (OSError, TimeoutError):
            infos = []
        addrs = [ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos]
    for addr in addrs:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        bad = (
            "link-local"
            if addr.is_link_local
            else "multicast"
            if addr.is_multicast
            else "unspecified"
            if addr.is_unspecified
            else "loopback"
            if addr.is_loopback and not allow_loopback
            else None
        )
        if bad:
            via = "" if str(addr) == host else f" ('{host}' resolves to {addr})"
            raise ValidationFailed(
                f"agent_url points at a {bad} address{via}; register the agent with an "
                "address the manager reaches it on (agent_host / NEXUS_AGENT_HOST)"
            )


async def _may_replace(
    db_session: AsyncSession, state: ManagerState, host: Host, bearer: str | None
) -> tuple[bool, str]:
    """Whether ``bearer`` may re-register the existing ``host``: its own current host token
    or an admin's token. Returns (allowed, why not)."""
    if bearer is None:
        return False, (
            f"host '{host.name}' is already registered; to re-register it present its current "
            "host token (Authorization: Bearer <host token>) or an admin's token, or delete "
            "the host first"
        )
    if secrets_equal(host.host_token_hash, hash_secret(bearer)):
        return True, ""
    from nexus.manager.features.auth import service as auth_service

    try:
        principal = await auth_service.authenticate(
            db_session=db_session,
            keys=state.signing_keys(),
            bearer=bearer,
            token_max_days=state.settings.api_token_max_lifetime_days,
        )
    except Problem:
        principal = None
    if principal is not None and principal.is_admin:
        return True, ""
    return False, (
        f"host '{host.name}' is already registered and this credential is neither its host "
        "token nor an admin's"
    )


async def register(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    body: RegisterRequest,
    bearer: str | None = None,
) -> RegisterResponse:
    """An agent trades a join token for its host credentials.

    Re-registering an existing host (same name) keeps its id but needs that host's current
    host token or an admin's token as well (a join token alone must not take over a host and
    its VMs). ``agent_url`` is checked before the join token is spent."""

    def deny(detail: str, resource_id: str | None = None) -> None:
        audit.record(
            db_session,
            actor=None,
            action="host.register",
            resource_type="host",
            resource_id=resource_id,
            outcome="denied",
            detail=detail,
        )

    q = select(JoinToken).where(JoinToken.token_hash == hash_secret(body.join_token))
    tok = (await db_session.execute(q)).scalar_one_or_none()
    if tok is None or tok.used_at is not None or tok.expires_at < utcnow():
        deny(f"invalid, used or expired join token for host '{body.name}'")
        await db_session.commit()
        raise Unauthorized("invalid, used or expired join token")
    await check_agent_url(
        body.agent_url, allow_loopback=tok.allow_loopback or state.settings.allow_loopback_agents
    )
    host = (
        await db_session.execute(select(Host).where(Host.name == body.name))
    ).scalar_one_or_none()
    if host is not None:
        allowed, why = await _may_replace(db_session, state, host, bearer)
        if not allowed:
            deny(why, host.id)
            await db_session.commit()
            raise (Conflict if bearer is None else Forbidden)(why)
    host_token, agent_token = new_secret(32), new_secret(32)
    if host is None:
        host = Host(id=new_id("host"), name=body.name, created_by_user_id=tok.created_by_user_id)
        db_session.add(host)
    host.agent_url = body.agent_url
    host.agent_token = agent_token
    host.agent_cert_sha256 = body.agent_cert_sha256
    host.host_token_hash = hash_secret(host_token)
    forget_known_host(state, host.id)  # the old host token stops working here at once
    _apply_facts(host, body.facts.model_dump())
    host.last_heartbeat_at = utcnow()
    tok.used_at = utcnow()
    tok.used_by_host_id = host.id
    audit.record(
        db_session,
        actor=None,
        action="host.register",
        resource_type="host",
        resource_id=host.id,
        after={
            "name": host.name,
            "agent_url": host.agent_url,
            "driver": host.driver,
            "agent_cert_sha256": host.agent_cert_sha256,
        },
    )
    return RegisterResponse(host_id=host.id, host_token=host_token, agent_token=agent_token)


def _apply_facts(host: Host, facts: dict[str, Any]) -> None:
    host.facts = facts
    host.driver = facts.get("driver", "")
    host.accel = facts.get("accel", "")
    host.accel_warning = facts.get("accel_warning")
    host.vcpus = int(facts.get("vcpus", 0))
    host.memory_mib = int(facts.get("memory_mib", 0))
    host.disk_free_mib = int(facts.get("disk_free_mib", 0))
    host.version = facts.get("version", "")


async def authenticate_host(*, db_session: AsyncSession, host_id: str, bearer: str | None) -> Host:
    """The host whose own host token is ``bearer``, else 401 (user tokens, other hosts' ids)."""
    host = await db_session.get(Host, host_id)
    if (
        host is None
        or bearer is None
        or not secrets_equal(host.host_token_hash, hash_secret(bearer))
    ):
        raise Unauthorized("invalid host credential")
    return host


#: Host facts that change on every heartbeat (live load and usage): stored in the next
#: batched write, not by the heartbeat's own request.
LIVE_FACTS = frozenset(
    {"load_avg", "uptime_s", "mem_available_mib", "disk_free_mib", "vmm_rss_mib"}
)
HEARTBEAT_FLUSH_S = 1.0
"""How often a replica writes the heartbeats it batched (one transaction for all hosts)."""


def _steady(facts: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (facts or {}).items() if k not in LIVE_FACTS}


async def heartbeat(
    *,
    db_session: AsyncSession,
    host_id: str,
    bearer: str | None,
    body: Heartbeat,
    state: ManagerState | None = None,
) -> None:
    """Record an agent's heartbeat (authenticated by its host token; not audited: routine).

    Cheap at a thousand hosts: when only the live facts (load, memory and disk use, uptime)
    and the time changed, nothing is written now — the heartbeat joins the replica's batch,
    written every :data:`HEARTBEAT_FLUSH_S` in one transaction. A change that matters (the
    VMs' states, capacity, driver, version, the set of facts) is written at once."""
    facts = body.facts.model_dump()
    vm_states = [v.model_dump(mode="json") for v in body.vms]
    batch: dict[str, dict[str, Any]] | None = (
        state.extras.get("heartbeat_batch") if state is not None else None
    )
    known: dict[str, _KnownHost] | None = (
        state.extras.setdefault("heartbeat_known", {}) if state is not None else None
    )
    k = known.get(host_id) if known is not None else None
    steady, keys = _steady(facts), frozenset(facts)
    if (
        k is not None
        and batch is not None
        and bearer is not None
        and time.monotonic() - k.at < KNOWN_HOST_TTL_S
        and secrets_equal(k.token_hash, hash_secret(bearer))
        and k.vm_states == vm_states
        and k.steady == steady
        and k.keys == keys
    ):
        # the common case at a thousand hosts: nothing but live facts changed since this
        # replica last read the row; no database round trip at all
        _queue(batch, host_id, facts)
        return
    host = await authenticate_host(db_session=db_session, host_id=host_id, bearer=bearer)
    if known is not None:
        known[host_id] = _KnownHost(host.host_token_hash, vm_states, steady, keys, time.monotonic())
    same = (
        batch is not None
        and host.vm_states == vm_states
        and _steady(host.facts) == steady
        and set(host.facts or {}) == keys
    )
    if same and batch is not None:
        _queue(batch, host.id, facts)
        return
    if batch is not None:
        batch.pop(host.id, None)
    _apply_facts(host, facts)
    if host.vm_states != vm_states:
        host.vm_states = vm_states
    host.last_heartbeat_at = utcnow()


KNOWN_HOST_TTL_S = 35.0
"""How long a replica trusts what it last read of a host (its host token's hash, VM states
and steady facts) to take that host's heartbeats without reading the row — longer than a few
heartbeat intervals (10 s by default), or every heartbeat would read it: a deleted host or a
replaced host token stops being accepted for heartbeats within this long on every replica (at
once on the replica that made the change); every other host route reads the row."""


@dataclass(frozen=True)
class _KnownHost:
    token_hash: str
    vm_states: list[Any]
    steady: dict[str, Any]
    keys: frozenset[str]
    at: float


def _queue(batch: dict[str, dict[str, Any]], host_id: str, facts: dict[str, Any]) -> None:
    batch[host_id] = {
        "id": host_id,
        "facts": facts,
        "disk_free_mib": int(facts.get("disk_free_mib", 0)),
        "last_heartbeat_at": utcnow(),
    }


def forget_known_host(state: ManagerState | None, host_id: str) -> None:
    """Drop what this replica remembers of a host (its token changed, or it was deleted)."""
    if state is not None:
        state.extras.get("heartbeat_known", {}).pop(host_id, None)


async def flush_heartbeats(state: ManagerState) -> int:
    """Write the batched heartbeats (one UPDATE per host, one transaction); returns how
    many."""
    batch: dict[str, dict[str, Any]] = state.extras.setdefault("heartbeat_batch", {})
    if not batch:
        return 0
    rows = list(batch.values())
    batch.clear()
    async with state.db.session() as s:
        await s.execute(update(Host), rows)
    metrics.HEARTBEATS_BATCHED.inc(len(rows))
    return len(rows)


async def run_heartbeat_flusher(state: ManagerState) -> None:
    """Every :data:`HEARTBEAT_FLUSH_S`: :func:`flush_heartbeats` (in every replica: each
    writes the heartbeats it received)."""
    state.extras.setdefault("heartbeat_batch", {})
    try:
        while True:
            await asyncio.sleep(HEARTBEAT_FLUSH_S)
            try:
                await flush_heartbeats(state)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hosts.heartbeat_flush_failed")
    finally:
        state.extras.pop("heartbeat_batch", None)


async def _file_sha256(state: ManagerState, path: Path) -> str:
    """SHA-256 of an image file the catalogue row has no hash for (``vmlinux``, manifest),
    computed once per file version (size, mtime, inode) and remembered."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    known: dict[tuple[str, int, int, int], str] = state.extras.setdefault("image_file_sha256", {})
    sha = known.get(key)
    if sha is None:
        sha = await asyncio.to_thread(sha256_file, path)
        known[key] = sha
    return sha


async def image_file(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    host_id: str,
    bearer: str | None,
    image_id: str,
    name: str,
) -> tuple[Path, str]:
    """An image file for a host's agent to download: its path and SHA-256.

    Authenticated by the host's own token (any registered host may fetch any image: it is
    the manager that decides which VMs a host runs). Not audited (routine machine traffic,
    like heartbeats) but logged."""
    host = await authenticate_host(db_session=db_session, host_id=host_id, bearer=bearer)
    if image_id.startswith("cimg-") and name == "rootfs.ext4":
        # a container image's read-only disk (VmSpec.image_disks): cimg-<sha256 prefix>
        cimg = (
            await db_session.execute(
                select(ContainerImage)
                .where(ContainerImage.rootfs_sha256.startswith(image_id[5:], autoescape=True))
                .limit(1)
            )
        ).scalar()
        if cimg is None or len(image_id) != 29 or not (path := Path(cimg.path) / name).is_file():
            raise NotFound(f"container image disk '{image_id}' not found")
        log.info("image file download", host_id=host.id, image_id=image_id, file=name)
        return path, cimg.rootfs_sha256
    img = await db_session.get(Image, image_id)
    if img is None:
        raise NotFound(f"image '{image_id}' not found")
    if name not in IMAGE_FILES or not (path := Path(img.path) / name).is_file():
        raise NotFound(f"image '{image_id}' has no file '{name[:64]}'")
    known = {
        "vmlinuz": img.kernel_sha256,
        "initrd.img": img.initrd_sha256,
        "rootfs.ext4": img.rootfs_sha256,
    }
    sha = known.get(name) or await _file_sha256(state, path)
    log.info(
        "image file download",
        host_id=host.id,
        host=host.name,
        image_id=img.id,
        file=name,
        size=path.stat().st_size,
    )
    return path, sha


async def get_host(*, db_session: AsyncSession, principal: Principal, host_id: str) -> Host:
    """A host (every authenticated user may read host facts)."""
    host = await db_session.get(Host, host_id)
    if host is None:
        raise NotFound(f"host '{host_id}' not found")
    return host


async def host_metrics(
    *, db_session: AsyncSession, principal: Principal, host_id: str, timeout_s: int
) -> HostMetrics:
    """A host's latest live facts and its VMs by state (every authenticated user; the VM
    counts and allocation of a non-admin are their own VMs only)."""
    host = await get_host(db_session=db_session, principal=principal, host_id=host_id)
    # Other tenants' VMs are not a non-admin's business: they count their own only.
    owner = None if principal.is_admin else principal.user_id
    counts = dict.fromkeys(VM_STATES, 0)
    q = select(Vm.state, func.count()).where(Vm.host_id == host.id).group_by(Vm.state)
    if owner is not None:
        q = q.where(Vm.created_by_user_id == owner)
    for vm_state, n in (await db_session.execute(q)).all():
        counts[vm_state] = int(n)
    n, vcpus, mem = (await allocations(db_session, owner, [host.id])).get(host.id, (0, 0, 0))
    facts = host.facts or {}
    return HostMetrics(
        host_id=host.id,
        name=host.name,
        status=host_status(host, timeout_s),
        sampled_at=host.last_heartbeat_at,
        vcpus=host.vcpus,
        memory_mib=host.memory_mib,
        mem_available_mib=facts.get("mem_available_mib"),
        disk_free_mib=host.disk_free_mib,
        disk_total_mib=facts.get("disk_total_mib"),
        load_avg=facts.get("load_avg"),
        uptime_s=facts.get("uptime_s"),
        vmm_rss_mib=facts.get("vmm_rss_mib"),
        vm_count=n,
        vm_counts=counts,
        allocated_vcpus=vcpus,
        allocated_memory_mib=mem,
        vcpu_overcommit=VCPU_OVERCOMMIT,
        vcpu_limit=host.vcpus * VCPU_OVERCOMMIT,
    )


async def list_hosts(*, db_session: AsyncSession, principal: Principal) -> list[Host]:
    """All hosts, by name."""
    return list((await db_session.execute(select(Host).order_by(Host.name))).scalars().all())


async def set_drained(
    *, db_session: AsyncSession, principal: Principal, host_id: str, drained: bool
) -> Host:
    """Drain (no new VMs are placed) or undrain a host (admin)."""
    action = "host.drain" if drained else "host.undrain"
    ensure_role(principal, action, "host", "admin")
    host = await get_host(db_session=db_session, principal=principal, host_id=host_id)
    before = {"drained": host.drained}
    host.drained = drained
    audit.record(
        db_session,
        actor=principal,
        action=action,
        resource_type="host",
        resource_id=host.id,
        before=before,
        after={"drained": drained},
    )
    return host


async def delete_host(
    *,
    db_session: AsyncSession,
    principal: Principal,
    host_id: str,
    state: ManagerState | None = None,
) -> None:
    """Forget a host (admin); refused while VMs are placed on it."""
    ensure_role(principal, "host.delete", "host", "admin")
    host = await get_host(db_session=db_session, principal=principal, host_id=host_id)
    n = (await allocations(db_session, host_ids=[host.id])).get(host.id, (0, 0, 0))[0]
    if n:
        raise Conflict(f"host '{host.name}' still has {n} VM(s); delete or move them first")
    await db_session.delete(host)
    forget_known_host(state, host_id)
    if state is not None:
        state.extras.get("heartbeat_batch", {}).pop(host_id, None)
    audit.record(
        db_session,
        actor=principal,
        action="host.delete",
        resource_type="host",
        resource_id=host_id,
        before={"name": host.name},
    )


def agent_client_key(host: Host) -> str:
    """The key of ``host``'s client in the cache of :func:`agent_client`: a new token, URL or
    certificate pin means a new client."""
    return f"{host.id}:{host.agent_token[:8]}:{host.agent_url}:{host.agent_cert_sha256}"


def agent_pool(state: ManagerState) -> AgentPool:
    """The manager's one bounded connection pool to every agent (see :class:`AgentPool`)."""
    pool: AgentPool | None = state.extras.get("agent_pool")
    if pool is None:
        st = state.settings
        pool = state.extras["agent_pool"] = AgentPool(
            max_connections=st.agent_pool_connections,
            per_host=st.agent_max_concurrency,
            connect_timeout_s=st.agent_connect_timeout_s,
        )
    return pool


def agent_client(state: ManagerState, host: Host) -> AgentClient:
    """A (cached) client for the host's agent API, over the shared :func:`agent_pool`; an
    https agent's certificate is pinned to the fingerprint it registered with
    (``agent_cert_sha256``)."""
    clients: dict[str, AgentClient] = state.extras.setdefault("agent_clients", {})
    key = agent_client_key(host)
    client = clients.get(key)
    if client is None:
        histogram = metrics.AGENT_REQUEST_DURATION
        name = host.name

        def observe(outcome: str, seconds: float) -> None:
            histogram.labels(name, outcome).observe(seconds)

        # a re-registered host (new token, URL or pin) replaces its old client
        stale = [k for k in clients if k.startswith(f"{host.id}:")]
        for k in stale:
            del clients[k]
        client = agent_pool(state).client(
            host.agent_url,
            host.agent_token,
            cert_sha256=host.agent_cert_sha256,
            observe=observe,
            host_id=host.id,
        )
        clients[key] = client
    return client


async def close_agent_pool(state: ManagerState) -> None:
    """Shutdown: close the agent connection pool."""
    pool: AgentPool | None = state.extras.pop("agent_pool", None)
    state.extras.pop("agent_clients", None)
    if pool is not None:
        await pool.aclose()


async def start(state: ManagerState) -> None:
    """Start-up hook (first of all): load the sealing key (``sealing_key`` setting or
    ``<state_dir>/sealing-keys.json``), then seal what older versions stored in clear."""
    sealing.configure_from(state.settings.state_dir, state.settings.sealing_key)
    n = await seal_host_tokens(state)
    if n:
        log.info("hosts.tokens_sealed", count=n)
    state.extras["heartbeat_batch"] = {}
    state.spawn(run_heartbeat_flusher(state), name="heartbeat-flush")


async def seal_host_tokens(state: ManagerState) -> int:
    """Seal every secret column value stored in clear (agent tokens from before migration
    0601) and re-seal those sealed with an older key (after a rotation): every
    :class:`~nexus.core.sealing.SealedString` column of every table (host agent tokens,
    webhook secrets). Returns how many values changed. Reads and writes the raw columns,
    bypassing the column type."""
    changed = 0
    async with state.db.session() as s:
        for table, column in sealing.sealed_columns(Base.metadata):
            rows = (await s.execute(text(f"SELECT id, {column} FROM {table}"))).all()
            for row_id, stored in rows:
                if stored and sealing.needs_reseal(stored):
                    await s.execute(
                        text(f"UPDATE {table} SET {column} = :v WHERE id = :i"),
                        {"v": sealing.reseal_value(stored), "i": row_id},
                    )
                    changed += 1
    return changed


async def healthy_host_count(state: ManagerState) -> tuple[bool, str]:
    """Readiness: at least one healthy host (when hosts are expected); two counts, no rows."""
    since = utcnow() - timedelta(seconds=state.settings.host_heartbeat_timeout_s)
    async with state.db.session() as s:
        total = int((await s.execute(select(func.count()).select_from(Host))).scalar() or 0)
        healthy = int(
            (
                await s.execute(
                    select(func.count()).select_from(Host).where(Host.last_heartbeat_at > since)
                )
            ).scalar()
            or 0
        )
    if not total and not state.settings.embedded_agent:
        return True, "no hosts registered yet"
    return bool(healthy), f"{healthy}/{total} healthy"
