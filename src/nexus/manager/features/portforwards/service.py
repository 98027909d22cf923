"""Port forwards: publish a guest port on the VM's host (nftables DNAT via the agent).

The host port is unique per host and protocol (database constraint) and is picked from
``port_forward_range`` when omitted. Non-admins may only use ports of that range (a
tenant must never publish on 22, 53 or 5432 of a host); the agent enforces its own range
(``agent_port_forward_range``) and refuses a port a host service listens on, so a
forward can never shadow a host service. The rule is added on the host inside the
request's transaction: if the agent refuses, nothing is stored. Forwards go with their VM.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nexus.core.errors import Conflict, Forbidden, NotFound
from nexus.core.ids import new_id
from nexus.hostapi.agent_client import AgentError
from nexus.hostapi.problems import agent_problem
from nexus.manager.features.audit import service as audit
from nexus.manager.features.hosts import service as hosts
from nexus.manager.features.hosts.models import Host
from nexus.manager.features.networks.models import VmNic
from nexus.manager.features.portforwards.models import PortForward
from nexus.manager.features.portforwards.schemas import PortForwardCreate
from nexus.manager.features.vms.models import Vm
from nexus.manager.platform.appstate import ManagerState
from nexus.manager.platform.rbac import Principal, denial, ensure_can_modify


def snapshot(pf: PortForward) -> dict[str, Any]:
    """Audit view of a forward."""
    return {
        "vm_id": pf.vm_id,
        "host_id": pf.host_id,
        "host_port": pf.host_port,
        "guest_ip": pf.guest_ip,
        "guest_port": pf.guest_port,
        "protocol": pf.protocol,
    }


def port_range(spec: str) -> range:
    """``"20000-29999"`` -> range(20000, 30000)."""
    lo, _, hi = spec.partition("-")
    return range(int(lo), int(hi) + 1)


async def list_port_forwards(s: AsyncSession, vm: Vm) -> list[PortForward]:
    """A VM's forwards by protocol and host port."""
    q = select(PortForward).where(PortForward.vm_id == vm.id)
    return list(
        (await s.execute(q.order_by(PortForward.protocol, PortForward.host_port))).scalars()
    )


#: How many ports an automatic pick tries when the host reports listeners on them.
PICK_ATTEMPTS = 20


async def _free_ports(s: AsyncSession, state: ManagerState, host_id: str, proto: str) -> list[int]:
    used = set(
        (
            await s.execute(
                select(PortForward.host_port).where(
                    PortForward.host_id == host_id, PortForward.protocol == proto
                )
            )
        ).scalars()
    )
    protected = {state.settings.port, state.settings.agent_port}
    free: list[int] = []
    for port in port_range(state.settings.port_forward_range):
        if port not in used and port not in protected:
            free.append(port)
            if len(free) == PICK_ATTEMPTS:
                break
    if not free:
        raise Conflict(f"no free host port left in {state.settings.port_forward_range}")
    return free


async def create_port_forward(
    *,
    db_session: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Vm,
    body: PortForwardCreate,
) -> PortForward:
    """Publish ``guest_port`` of the VM's first NIC; 409 if the host port is taken."""
    ensure_can_modify(principal, vm, "vm", "vm.port_forward.create")
    if vm.host_id is None:
        raise Conflict(f"vm '{vm.name}' has no host yet")
    nic = (
        await db_session.execute(
            select(VmNic).where(VmNic.vm_id == vm.id).order_by(VmNic.nic_index).limit(1)
        )
    ).scalar_one_or_none()
    if nic is None:
        raise Conflict(f"vm '{vm.name}' has no network interface")
    host = await db_session.get(Host, vm.host_id)
    if host is None:
        raise NotFound(f"host '{vm.host_id}' not found")
    allowed = port_range(state.settings.port_forward_range)
    if body.host_port is not None and body.host_port not in allowed and not principal.is_admin:
        raise Forbidden(
            f"host port {body.host_port} is outside {state.settings.port_forward_range}, "
            "the only ports non-admins may publish (omit host_port to get one)",
            audit=denial("vm.port_forward.create", "port_forward", vm.id),
        )
    if body.host_port is not None:
        candidates = [body.host_port]
    else:
        candidates = await _free_ports(db_session, state, host.id, body.protocol)
    reserved = (state.settings.port, state.settings.agent_port)
    if body.protocol == "tcp" and candidates[0] in reserved:
        raise Conflict(f"host port {candidates[0]}/tcp is reserved for Nexus")
    pf: PortForward | None = None
    last: Conflict | None = None
    for port in candidates:
        try:
            pf = await _publish(db_session, state, principal, vm, host, nic, port, body)
            break
        except Conflict as exc:
            if body.host_port is not None:
                raise
            last = exc  # a host listener on an auto-picked port: try the next one
    if pf is None:
        raise last or Conflict("no free host port")
    audit.record(
        db_session,
        actor=principal,
        action="vm.port_forward.create",
        resource_type="port_forward",
        resource_id=pf.id,
        after=snapshot(pf),
    )
    return pf


async def _publish(
    s: AsyncSession,
    state: ManagerState,
    principal: Principal,
    vm: Vm,
    host: Host,
    nic: VmNic,
    port: int,
    body: PortForwardCreate,
) -> PortForward:
    """Store the forward and add it on the host, in a savepoint (undone if either fails)."""
    pf = PortForward(
        id=new_id("pf"),
        vm_id=vm.id,
        host_id=host.id,
        host_port=port,
        guest_ip=nic.ip,
        guest_port=body.guest_port,
        protocol=body.protocol,
        created_by_user_id=principal.user_id,
    )
    async with s.begin_nested():
        s.add(pf)
        try:
            await s.flush()
        except IntegrityError as exc:
            raise Conflict(f"host port {port}/{body.protocol} is already forwarded") from exc
        try:
            await hosts.agent_client(state, host).add_port_forward(
                vm.id, port, nic.ip, body.guest_port, body.protocol
            )
        except AgentError as exc:
            raise agent_problem(exc, f"host {host.name}") from exc
    return pf


async def delete_port_forward(
    *, db_session: AsyncSession, state: ManagerState, principal: Principal, vm: Vm, pf_id: str
) -> None:
    """Remove a forward from its host, then from the database."""
    ensure_can_modify(principal, vm, "vm", "vm.port_forward.delete")
    pf = await db_session.get(PortForward, pf_id)
    if pf is None or pf.vm_id != vm.id:
        raise NotFound(f"port forward '{pf_id}' not found")
    host = await db_session.get(Host, pf.host_id)
    if host is not None:
        try:
            await hosts.agent_client(state, host).remove_port_forward(
                vm.id, pf.host_port, pf.protocol
            )
        except AgentError as exc:
            raise agent_problem(exc, f"host {host.name}") from exc
    audit.record(
        db_session,
        actor=principal,
        action="vm.port_forward.delete",
        resource_type="port_forward",
        resource_id=pf.id,
        before=snapshot(pf),
    )
    await db_session.delete(pf)
