"""Networks: CRUD, each user's ``default`` network, CIDRs from the admin's pool, IPAM (one
NIC row per address) and the NIC part of a VM's agent spec. Ownership, RBAC and audit for
every path.

Tenants never share an L2 segment unless they choose to: a VM created without networks
joins its owner's own ``default`` network, made from ``network_pool`` on first use (there
is no shared bridge every tenant's VMs land on). A CIDR may overlap neither another
network (of any user: all bridges of a host share its routing table) nor an address or
route of any host (``HostFacts.subnets``); the 409 names only the caller's own networks.

IPAM lives in the database: ``vm_nics`` has unique ``(network_id, ip)`` and ``mac``, so an
address is never handed out twice, survives restarts, and is released with the VM (cascade).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.db import flush_unique
from nexus.core.errors import BadRequest, Conflict, NotFound
from nexus.core.ids import new_id
from nexus.core.logging import get_logger
from nexus.core.settings import Settings
from nexus.hostapi.agent_client import AgentError, AgentNotFound
from nexus.hostapi.mac import generate_mac
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.networks.models import DEFAULT_NETWORK, Network, VmNic
from nexus.manager.features.networks.schemas import NetworkCreate, NetworkUpdate
from nexus.manager.features.quotas import service as quotas
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import (
    Principal,
    ensure_can_create,
    ensure_can_modify,
    ensure_visible,
)

log = get_logger(__name__)
MAX_NICS = 8

#: The pool settings of this manager process, recorded by the start-up hook
#: :func:`ensure_default`: IPAM is reached from features that carry no state (snapshot
#: identities), and every path must allocate from the same admin-set pool.
_pool: dict[str, Any] = {
    "network_pool": Settings.model_fields["network_pool"].default,
    "network_prefix": Settings.model_fields["network_prefix"].default,
}


def snapshot(net: Network) -> dict[str, Any]:
    """Audit view of a network."""
    return {
        "name": net.name,
        "cidr": net.cidr,
        "nat": net.nat,
        "isolated": net.isolated,
        "shared": net.shared,
    }


# --- reads --------------------------------------------------------------------------------


async def get_network(
    *, db_session: AsyncSession, principal: Principal, network_id: str
) -> Network:
    """A network the caller may see (404 otherwise)."""
    net = await db_session.get(Network, network_id)
    return ensure_visible(principal, net, "network", network_id)


async def list_networks(*, db_session: AsyncSession, principal: Principal) -> list[Network]:
    """Networks the caller may see (own + shared; admin: all), by name."""
    q = select(Network)
    if not principal.is_admin:
        q = q.where(or_(Network.created_by_user_id == principal.user_id, Network.shared.is_(True)))
    return list((await db_session.execute(q.order_by(Network.name, Network.id))).scalars())


async def resolve(*, db_session: AsyncSession, principal: Principal, ref: str) -> Network:
    """A visible network by id, or by name (the caller's own first, then shared ones).

    ``default`` is always the caller's own default network, created on first use: never
    a network of another user (nor an old shared one), so tenants do not share a bridge.
    """
    net = await db_session.get(Network, ref)
    if net is not None:
        return ensure_visible(principal, net, "network", ref)
    rows = (await db_session.execute(select(Network).where(Network.name == ref))).scalars().all()
    own = [n for n in rows if n.created_by_user_id == principal.user_id]
    if ref == DEFAULT_NETWORK:
        return own[0] if own else await _user_default(db_session, principal)
    shared = [n for n in rows if n.shared]
    for pick in (own, shared, rows if principal.is_admin else []):
        if pick:
            return pick[0]
    raise NotFound(f"network '{ref}' not found")


async def _user_default(s: AsyncSession, principal: Principal) -> Network:
    """The caller's ``default`` network, made now from the pool (NAT on, not shared)."""
    ensure_can_create(principal, "network.create", "network")
    net = Network(
        id=new_id("net"),
        name=DEFAULT_NETWORK,
        description="your network for VMs created without one",
        cidr=await _allocate_cidr(s),
        nat=True,
        isolated=False,
        shared=False,
        created_by_user_id=principal.user_id,
    )
    try:
        async with s.begin_nested():
            s.add(net)
    except IntegrityError:
        # A concurrent request made it (same owner and name) or took the CIDR: re-read.
        existing = (
            await s.execute(
                select(Network).where(
                    Network.name == DEFAULT_NETWORK,
                    Network.created_by_user_id == principal.user_id,
                )
            )
        ).scalar_one_or_none()
        if existing is None:
            raise Conflict("could not create your default network; try again") from None
        return existing
    audit.record(
        s,
        actor=principal,
        action="network.create",
        resource_type="network",
        resource_id=net.id,
        after=snapshot(net),
    )
    log.info("network.user_default_created", user_id=principal.user_id, cidr=net.cidr)
    return net


# --- CRUD ---------------------------------------------------------------------------------


async def _taken_ranges(s: AsyncSession) -> list[tuple[ipaddress.IPv4Network, Network | Host]]:
    """Every range a new network must not overlap: all networks (of every user) and the
    IPv4 subnets, routes and gateways every host reports in its facts."""
    out: list[tuple[ipaddress.IPv4Network, Network | Host]] = [
        (ipaddress.IPv4Network(n.cidr), n) for n in (await s.execute(select(Network))).scalars()
    ]
    for host in (await s.execute(select(Host))).scalars():
        for cidr in (host.facts or {}).get("subnets") or []:
            try:
                net = ipaddress.ip_network(str(cidr), strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                out.append((net, host))
    return out


async def _check_overlap(s: AsyncSession, principal: Principal, cidr: str) -> None:
    """409 if ``cidr`` overlaps a taken range. The detail names a network only when it is
    the caller's own (or the caller is an admin): it must not disclose other tenants'
    networks, nor a host's addresses to non-admins."""
    new = ipaddress.IPv4Network(cidr)
    for rng, what in await _taken_ranges(s):
        if not rng.overlaps(new):
            continue
        if isinstance(what, Host):
            if principal.is_admin:
                raise Conflict(f"{cidr} overlaps {rng}, an address or route of host {what.name}")
            raise Conflict(f"{cidr} overlaps an address range a Nexus host uses; pick another")
        if principal.is_admin or what.created_by_user_id == principal.user_id:
            raise Conflict(f"{cidr} overlaps network '{what.name}' ({what.cidr})")
        raise Conflict(f"{cidr} overlaps a network of another user; pick another range")


async def _allocate_cidr(s: AsyncSession) -> str:
    """The first ``network_prefix`` subnet of ``network_pool`` that overlaps nothing taken."""
    pool = ipaddress.IPv4Network(_pool["network_pool"], strict=False)
    prefix = max(int(_pool["network_prefix"]), pool.prefixlen)
    taken = [rng for rng, _ in await _taken_ranges(s)]
    for cand in pool.subnets(new_prefix=prefix):
        if not any(cand.overlaps(t) for t in taken):
            return str(cand)
    raise Conflict(f"the network pool {pool} has no free /{prefix} left; ask an admin")


async def create_network(
    *, db_session: AsyncSession, settings: Settings, principal: Principal, body: NetworkCreate
) -> Network:
    """Create a network (realised on a host when its first VM starts there); counts against
    the ``networks`` quota."""
    ensure_can_create(principal, "network.create", "network")
    await quotas.check(
        db_session,
        settings,
        principal,
        action="network.create",
        resource_type="network",
        add={"networks": 1},
    )
    if body.cidr is None:
        cidr = await _allocate_cidr(db_session)
    else:
        cidr = body.cidr
        await _check_overlap(db_session, principal, cidr)
    net = Network(
        id=new_id("net"),
        name=body.name,
        description=body.description,
        cidr=cidr,
        nat=body.nat,
        isolated=body.isolated,
        shared=False,
        created_by_user_id=principal.user_id,
    )
    db_session.add(net)
    await flush_unique(db_session, f"you already have a network named '{body.name}'")
    audit.record(
        db_session,
        actor=principal,
        action="network.create",
        resource_type="network",
        resource_id=net.id,
        after=snapshot(net),
    )
    return net


async def _hosts_of(s: AsyncSession, network_id: str) -> list[Host]:
    # DISTINCT on ids only: PostgreSQL cannot compare the JSON columns of a whole Host row.
    ids = (
        select(Vm.host_id)
        .join(VmNic, VmNic.vm_id == Vm.id)
        .where(VmNic.network_id == network_id, Vm.host_id.is_not(None))
        .distinct()
    )
    return list((await s.execute(select(Host).where(Host.id.in_(ids)))).scalars())


async def update_network(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    network_id: str,
    body: NetworkUpdate,
) -> Network:
    """Rename/describe; a nat/isolated change is applied on every host using the network
    (the database change is rolled back if a host refuses)."""
    net = await get_network(db_session=db_session, principal=principal, network_id=network_id)
    ensure_can_modify(principal, net, "network", "network.update")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if net.name == DEFAULT_NETWORK and net.shared and changes.get("name", net.name) != net.name:
        raise Conflict("the default network cannot be renamed")
    before = snapshot(net)
    for k, v in changes.items():
        setattr(net, k, v)
    await flush_unique(db_session, f"you already have a network named '{body.name}'")
    if ("nat" in changes or "isolated" in changes) and before != snapshot(net):
        for host in await _hosts_of(db_session, net.id):
            try:
                await hosts.agent_client(state, host).update_network(
                    net.id, net.cidr, net.nat, net.isolated
                )
            except AgentError as exc:
                raise agent_problem(exc, f"host {host.name}") from exc
    audit.record(
        db_session,
        actor=principal,
        action="network.update",
        resource_type="network",
        resource_id=net.id,
        before=before,
        after=snapshot(net),
    )
    return net


async def delete_network(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, network_id: str
) -> None:
    """Delete a network no VM is attached to (409 otherwise); removes it from every host."""
    net = await get_network(db_session=db_session, principal=principal, network_id=network_id)
    ensure_can_modify(principal, net, "network", "network.delete")
    if net.shared and net.name == DEFAULT_NETWORK:
        raise Conflict("the default network cannot be deleted")
    used = (
        await db_session.execute(
            select(func.count()).select_from(VmNic).where(VmNic.network_id == net.id)
        )
    ).scalar_one()
    if used:
        raise Conflict(f"network '{net.name}' still has {used} VM NIC(s) attached")
    for host in (await db_session.execute(select(Host))).scalars():
        if not hosts.is_healthy(host, state.settings.host_heartbeat_timeout_s):
            continue
        try:
            await hosts.agent_client(state, host).delete_network(net.id)
        except AgentNotFound:
            pass
        except AgentError as exc:
            if exc.status == 409:
                raise Conflict(f"host {host.name}: {exc.detail}") from exc
            log.warning("network.delete_on_host_failed", host=host.name, error=exc.detail)
    audit.record(
        db_session,
        actor=principal,
        action="network.delete",
        resource_type="network",
        resource_id=net.id,
        before=snapshot(net),
    )
    await db_session.delete(net)


async def ensure_default(state: ManagerState) -> None:
    """Start-up hook: record the admin's network pool for IPAM (and check it).

    There is no shared ``default`` network any more: each user's is made on first use
    (:func:`resolve`). One left by an older version keeps its VMs but gets no new ones.
    """
    pool = ipaddress.ip_network(state.settings.network_pool, strict=False)
    if not isinstance(pool, ipaddress.IPv4Network) or not pool.is_private:
        raise ValueError(f"network_pool {pool} must be a private IPv4 range")
    if state.settings.network_prefix < pool.prefixlen:
        raise ValueError(
            f"network_prefix /{state.settings.network_prefix} is larger than the pool {pool}"
        )
    _pool.update(
        network_pool=str(pool),
        network_prefix=state.settings.network_prefix,
    )


# --- IPAM ---------------------------------------------------------------------------------


async def _free_ip(s: AsyncSession, net: Network) -> str:
    cidr = ipaddress.IPv4Network(net.cidr)
    used = set(
        (await s.execute(select(VmNic.ip).where(VmNic.network_id == net.id))).scalars().all()
    )
    used.add(net.gateway)
    for addr in cidr.hosts():
        if str(addr) not in used:
            return str(addr)
    raise Conflict(f"network '{net.name}' ({net.cidr}) has no free address")


async def allocate_nics(
    db_session: AsyncSession, principal: Principal, vm: Vm, refs: list[str]
) -> list[VmNic]:
    """Give a new VM one NIC per network in ``refs`` (address + stable unique MAC)."""
    if len(refs) > MAX_NICS:
        raise BadRequest(f"at most {MAX_NICS} networks per VM")
    nets = [await resolve(db_session=db_session, principal=principal, ref=r) for r in refs]
    if len({n.id for n in nets}) != len(nets):
        raise BadRequest("a VM can join each network only once")
    nics = []
    for index, net in enumerate(nets):
        taken: set[str] = set()
        for _attempt in range(20):
            nic = VmNic(
                id=new_id("nic"),
                vm_id=vm.id,
                network_id=net.id,
                nic_index=index,
                mac=generate_mac(vm.id, index, taken=taken),
                ip=await _free_ip(db_session, net),
                created_by_user_id=vm.created_by_user_id,
            )
            try:
                async with db_session.begin_nested():
                    db_session.add(nic)
            except IntegrityError:
                taken.add(nic.mac)  # a concurrent create took the address or the MAC
                continue
            nics.append(nic)
            break
        else:
            raise Conflict(f"could not allocate an address on network '{net.name}'")
    return nics
