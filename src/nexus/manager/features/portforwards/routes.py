"""/v1/vms/{vm_id}/port-forwards: published guest ports."""

from __future__ import annotations

from fastapi import APIRouter, Response

from nexus.manager.deps import CreateLimit, CurrentPrincipal, DbSession, State
from nexus.manager.features.portforwards import service
from nexus.manager.features.portforwards.schemas import PortForwardCreate, PortForwardRead
from nexus.manager.features.vms import service as vms

router = APIRouter(prefix="/v1/vms/{vm_id}/port-forwards", tags=["port-forwards"])


@router.post("", response_model=PortForwardRead, status_code=201, dependencies=[CreateLimit])
async def create_port_forward(
    vm_id: str, body: PortForwardCreate, db: DbSession, state: State, principal: CurrentPrincipal
) -> PortForwardRead:
    """Publish `guest_port` of the VM's first NIC on `host_port` of every address of its host
    (nftables DNAT; reachable from outside, from the host itself and from other guests).
    Without `host_port` one is picked from the `port_forward_range` setting. 409 when the
    host port is taken or reserved. Forwards are removed with the VM."""
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    pf = await service.create_port_forward(
        db_session=db, state=state, principal=principal, vm=vm, body=body
    )
    return PortForwardRead.model_validate(pf)


@router.get("", response_model=list[PortForwardRead])
async def list_port_forwards(
    vm_id: str, db: DbSession, principal: CurrentPrincipal
) -> list[PortForwardRead]:
    """The VM's published ports."""
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    return [PortForwardRead.model_validate(p) for p in await service.list_port_forwards(db, vm)]


@router.delete("/{pf_id}", status_code=204)
async def delete_port_forward(
    vm_id: str, pf_id: str, db: DbSession, state: State, principal: CurrentPrincipal
) -> Response:
    """Unpublish a port."""
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    await service.delete_port_forward(
        db_session=db, state=state, principal=principal, vm=vm, pf_id=pf_id
    )
    return Response(status_code=204)
