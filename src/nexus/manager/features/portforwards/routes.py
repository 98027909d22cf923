"""/v1/vms/{vm_id}/port-forwards: published guest ports."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from nexus.core.paging import CURSOR_DOC, CURSOR_MAX_LEN, LIMIT_DOC, page_of
from nexus.manager.features.portforwards import service
from nexus.manager.features.portforwards.schemas import (
    PortForwardCreate,
    PortForwardPage,
    PortForwardRead,
)
from nexus.manager.features.vms import service as vms
from nexus.manager.platform.deps import CreateLimit, CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/v1/vms/{vm_id}/port-forwards", tags=["port-forwards"])


@router.post(
    "",
    response_model=PortForwardRead,
    status_code=201,
    dependencies=[CreateLimit],
    responses={
        403: {
            "description": "A non-admin asked for a host port outside `port_forward_range`, "
            "or may not modify the VM"
        },
        409: {
            "description": "The host port is already forwarded, reserved for Nexus, or a "
            "service on the host listens on it (the host's sockets are checked)"
        },
        422: {"description": "The host refuses ports outside its `agent_port_forward_range`"},
    },
)
async def create_port_forward(
    vm_id: str, body: PortForwardCreate, db: DbSession, state: State, principal: CurrentPrincipal
) -> PortForwardRead:
    """Publish `guest_port` of the VM's first NIC on `host_port` of every address of its host
    (nftables DNAT; reachable from outside and from other guests; the host's own
    connections are redirected only if the admin enabled `port_forward_host_local`).
    Without `host_port` one is picked from the `port_forward_range` setting (the only range
    non-admins may use). Never a port a host service listens on. Forwards are removed with
    the VM."""
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    pf = await service.create_port_forward(
        db_session=db, state=state, principal=principal, vm=vm, body=body
    )
    return PortForwardRead.model_validate(pf)


@router.get("", response_model=PortForwardPage)
async def list_port_forwards(
    vm_id: str,
    db: DbSession,
    principal: CurrentPrincipal,
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_DOC),
    cursor: str | None = Query(None, max_length=CURSOR_MAX_LEN, description=CURSOR_DOC),
) -> PortForwardPage:
    """The VM's published ports."""
    vm = await vms.get_vm(db_session=db, principal=principal, vm_id=vm_id)
    rows, nxt = page_of(await service.list_port_forwards(db, vm), cursor, limit)
    return PortForwardPage(items=[PortForwardRead.model_validate(p) for p in rows], next_cursor=nxt)


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
